//! What libvirt's standard nwfilters drop, and the parameter changes that let a need
//! through: pure functions over a NIC's filter and the filters' references.
//!
//! - `clean-traffic`, `no-ip-spoofing`, `no-arp-spoofing` and `no-arp-ip-spoofing` drop
//!   IPv4 (ARP replies and gratuitous ARPs included) from addresses not in the `IP`
//!   parameter list: a VIP is granted by adding it to that list.
//! - `clean-traffic` and `no-other-l2-traffic` drop all IPv6, NDP included; `IP` is IPv4
//!   only, so IPv6 needs another filter (the vipvisor filter, when allowed).
//! - `no-mac-spoofing` (in `clean-traffic`) and `no-arp-mac-spoofing` drop frames from any
//!   MAC but the NIC's own: a virtual MAC is blocked.
//! - Without an `IP` list, libvirt learns the first address the guest uses
//!   (`CTRL_IP_LEARNING`) and allows only that one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use vipvisor_provider::{Filter, Finding, Need, Nic, NicRef, Record, Severity};

/// A filter's parameters, in order (`IP` repeats).
pub type Params = Vec<(String, String)>;

/// Filters that drop IPv4 from addresses not in `IP`.
const IP_CHECKS: [&str; 4] = ["clean-traffic", "no-ip-spoofing", "no-arp-spoofing", "no-arp-ip-spoofing"];
/// Filters that drop every IPv6 frame.
const NO_IPV6: [&str; 2] = ["clean-traffic", "no-other-l2-traffic"];
/// Filters that drop frames from other MACs than the NIC's.
const MAC_CHECKS: [&str; 4] = ["clean-traffic", "no-mac-spoofing", "no-arp-spoofing", "no-arp-mac-spoofing"];

/// The filter and every filter it references, transitively (`refs`: each defined filter's
/// references). Unknown names are kept (they may be libvirt's built-ins).
pub fn chain(name: &str, refs: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![name.to_owned()];
    while let Some(n) = todo.pop() {
        if out.insert(n.clone()) {
            todo.extend(refs.get(&n).into_iter().flatten().cloned());
        }
    }
    out
}

fn has(chain: &BTreeSet<String>, any: &[&str]) -> Option<String> {
    any.iter().find(|f| chain.contains(**f)).map(|f| (*f).to_owned())
}

/// What the NIC's filter drops of `need`, and how to fix it. Empty: nothing blocks.
pub fn diagnose(nic_ref: &NicRef, nic: &Nic, need: &Need, refs: &BTreeMap<String, Vec<String>>) -> Vec<Finding> {
    let Some(filter) = &nic.filter else { return Vec::new() };
    let chain = chain(&filter.name, refs);
    let mut out = Vec::new();
    let listed: BTreeSet<&str> = filter.values("IP").collect();
    let setting = |p: &str| {
        format!(
            "filterref {} (chain: {}), parameter {p}",
            filter.name,
            chain.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    let v4: Vec<IpAddr> = need.ips().iter().copied().filter(IpAddr::is_ipv4).collect();
    let v6: Vec<IpAddr> = need.ips().iter().copied().filter(IpAddr::is_ipv6).collect();
    if let (Some(by), false) = (has(&chain, &IP_CHECKS), v4.is_empty()) {
        let missing: Vec<String> =
            v4.iter().map(ToString::to_string).filter(|ip| !listed.contains(ip.as_str())).collect();
        if !missing.is_empty() {
            out.push(Finding {
                severity: Severity::Blocking,
                nic: nic_ref.clone(),
                what: format!("ARP replies and gratuitous ARPs for {} (dropped by {by})", missing.join(", ")),
                setting: setting("IP"),
                current: if listed.is_empty() {
                    "no IP parameter: libvirt learns one address (CTRL_IP_LEARNING) and allows only it".into()
                } else {
                    format!("IP = {}", listed.iter().copied().collect::<Vec<_>>().join(", "))
                },
                fix: format!("add IP={} to the filterref (vipvisor hypervisor apply)", missing.join(", IP=")),
            });
        }
    }
    if let (Some(by), false) = (has(&chain, &NO_IPV6), v6.is_empty()) {
        out.push(Finding {
            severity: Severity::Blocking,
            nic: nic_ref.clone(),
            what: format!(
                "all IPv6, Neighbor Advertisements for {} included (dropped by {by})",
                v6.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
            setting: format!("filterref {}", filter.name),
            current: filter.name.clone(),
            fix: "a filter that allows NDP for the granted addresses: set ipv6_filter: vipvisor for this provider"
                .into(),
        });
    }
    if let Need::VirtualMac { mac, .. } = need {
        if let Some(by) = has(&chain, &MAC_CHECKS) {
            out.push(Finding {
                severity: Severity::Blocking,
                nic: nic_ref.clone(),
                what: format!("frames from the virtual MAC {mac} (dropped by {by})"),
                setting: format!("filterref {}", filter.name),
                current: format!("only the NIC's own MAC {} may send", nic.mac),
                fix: "a filter without MAC spoofing checks for this NIC (the virtual-MAC mode's filter)".into(),
            });
        }
    }
    if listed.is_empty() && has(&chain, &IP_CHECKS).is_some() && v4.is_empty() {
        out.push(Finding {
            severity: Severity::Warning,
            nic: nic_ref.clone(),
            what: "the guest's own address is learned, not listed".into(),
            setting: setting("IP"),
            current: "no IP parameter (CTRL_IP_LEARNING)".into(),
            fix: "list the guest's address as IP= so that no other address is learned first".into(),
        });
    }
    out
}

/// The parameters after granting `need`: every current parameter kept in order, and each
/// IPv4 VIP not listed yet appended as `IP`. Also returns what this call added (to be
/// merged into the NIC's [`Record`]).
pub fn granted(filter: &Filter, need: &Need) -> (Params, Params) {
    let mut params = filter.params.clone();
    let mut added = Vec::new();
    for ip in need.ips().iter().filter(|ip| ip.is_ipv4()) {
        let p = ("IP".to_string(), ip.to_string());
        if !params.contains(&p) {
            params.push(p.clone());
            added.push(p);
        }
    }
    (params, added)
}

/// The parameters after taking back what `record` says vipvisor added for `need` (or
/// every addition, when `need` lists no address). A value the operator listed is never in
/// a record, so it is never removed.
pub fn reverted(filter: &Filter, record: &Record, need: &Need) -> (Params, Record) {
    let ips: BTreeSet<String> = need.ips().iter().map(ToString::to_string).collect();
    let (remove, keep): (Vec<_>, Vec<_>) =
        record.added.iter().cloned().partition(|(_, v)| ips.is_empty() || ips.contains(v));
    let params = filter.params.iter().filter(|p| !remove.contains(p)).cloned().collect();
    (params, Record { added: keep, replaced_filter: record.replaced_filter.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vipvisor_provider::Mac;

    fn nic(filter: Option<Filter>) -> Nic {
        Nic {
            mac: "52:54:00:00:00:21".parse().unwrap(),
            network: Some("lab".into()),
            portgroup: None,
            bridge: None,
            filter,
        }
    }
    fn ct(ips: &[&str]) -> Filter {
        Filter { name: "clean-traffic".into(), params: ips.iter().map(|i| ("IP".to_string(), i.to_string())).collect() }
    }
    fn r() -> NicRef {
        NicRef { vm: "n1".into(), mac: "52:54:00:00:00:21".parse().unwrap() }
    }
    fn announce(ips: &[&str]) -> Need {
        Need::Announce { ips: ips.iter().map(|i| i.parse().unwrap()).collect() }
    }

    #[test]
    fn the_standard_filters_are_diagnosed_with_the_setting_and_the_fix() {
        let none = BTreeMap::new();
        let f = diagnose(&r(), &nic(Some(ct(&["192.0.2.21"]))), &announce(&["192.0.2.100"]), &none);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].severity, Severity::Blocking);
        assert!(f[0].what.contains("192.0.2.100") && f[0].what.contains("clean-traffic"), "{:?}", f[0]);
        assert_eq!(f[0].current, "IP = 192.0.2.21");
        assert!(f[0].fix.contains("IP=192.0.2.100"));
        assert!(
            diagnose(&r(), &nic(Some(ct(&["192.0.2.21", "192.0.2.100"]))), &announce(&["192.0.2.100"]), &none)
                .is_empty(),
            "granted: nothing blocks"
        );
        assert!(
            diagnose(&r(), &nic(None), &announce(&["192.0.2.100", "2001:db8::100"]), &none).is_empty(),
            "no filter: nothing blocks"
        );
        let v6 = diagnose(&r(), &nic(Some(ct(&["192.0.2.21"]))), &announce(&["2001:db8::100"]), &none);
        assert!(v6.iter().any(|f| f.what.contains("all IPv6") && f.fix.contains("ipv6_filter")), "{v6:?}");
        // An operator's own filter that references no-arp-spoofing is seen through.
        let refs = BTreeMap::from([("site-guard".to_string(), vec!["no-arp-spoofing".to_string()])]);
        let own = Filter { name: "site-guard".into(), params: vec![] };
        let f = diagnose(&r(), &nic(Some(own)), &announce(&["192.0.2.100"]), &refs);
        assert!(f[0].what.contains("no-arp-spoofing") && f[0].current.contains("CTRL_IP_LEARNING"), "{f:?}");
        let vmac = Need::VirtualMac { mac: Mac([2, 0, 0x5e, 0, 1, 1]), ips: vec![] };
        let f = diagnose(&r(), &nic(Some(ct(&["192.0.2.21"]))), &vmac, &none);
        assert!(f.iter().any(|f| f.what.contains("02:00:5e:00:01:01")), "{f:?}");
    }

    #[test]
    fn grants_add_only_what_is_missing_and_revert_takes_back_only_that() {
        let operator = ct(&["192.0.2.21", "192.0.2.100"]);
        let (params, added) = granted(&operator, &announce(&["192.0.2.100", "192.0.2.101", "2001:db8::1"]));
        assert_eq!(
            added,
            vec![("IP".to_string(), "192.0.2.101".to_string())],
            "the operator's 192.0.2.100 is not ours"
        );
        assert_eq!(params.len(), 3);
        let now = Filter { name: "clean-traffic".into(), params };
        let (again, none) = granted(&now, &announce(&["192.0.2.100", "192.0.2.101"]));
        assert!(none.is_empty() && again == now.params, "idempotent");
        let rec = Record { added, replaced_filter: None };
        let (back, left) = reverted(&now, &rec, &announce(&["192.0.2.100", "192.0.2.101"]));
        assert_eq!(back, operator.params, "exactly the operator's list again");
        assert!(left.is_empty());
    }
}
