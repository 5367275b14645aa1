//! What libvirt's standard nwfilters drop, and the parameter changes that let a need
//! through: pure functions over a NIC's filter and the filters' references.
//!
//! - `clean-traffic`, `no-ip-spoofing`, `no-arp-spoofing` and `no-arp-ip-spoofing` drop
//!   IPv4 (ARP replies and gratuitous ARPs included) from addresses not in the `IP`
//!   parameter list: a VIP is granted by adding it to that list.
//! - `clean-traffic` and `no-other-l2-traffic` drop all IPv6, NDP included; `IP` is IPv4
//!   only, so IPv6 needs another filter (the vipvisor filter, when allowed).
//! - `no-mac-spoofing` (in `clean-traffic`) and `no-arp-mac-spoofing` drop frames from any
//!   MAC but those in the `MAC` parameter (by default the NIC's own): a virtual MAC is
//!   granted by listing it, after the NIC's own.
//! - Without an `IP` list, libvirt learns the first address the guest uses
//!   (`CTRL_IP_LEARNING`) and allows only that one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use vipvisor_provider::{Filter, Finding, Mac, Need, Nic, NicRef, Record, Severity};

/// vipvisor's filter for IPv6 VIPs: `clean-traffic`'s protections, plus IPv6 from the
/// addresses in `IPV6` only (`no-ipv6-spoofing`), NDP included, and any IPv6 towards the
/// guest. Put in place of `clean-traffic` only when the provider file allows it
/// (`ipv6_filter: vipvisor`); the operator's filter comes back on revert.
pub const VIPVISOR_V6: &str = "vipvisor-clean-traffic-v6";

/// The definition of [`VIPVISOR_V6`]. In the root chain, the jump to `no-ipv6-spoofing`
/// (priority -610) must come before the IPv6 accept (-605); clean-traffic's final drop is
/// at 1000.
pub const VIPVISOR_V6_XML: &str = "<filter name='vipvisor-clean-traffic-v6' chain='root'>\
<filterref filter='clean-traffic'/>\
<filterref filter='no-ipv6-spoofing'/>\
<rule action='accept' direction='out' priority='-605'><mac protocolid='ipv6'/></rule>\
<filterref filter='allow-incoming-ipv6'/>\
</filter>";

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
    let v6_listed: BTreeSet<&str> = filter.values("IPV6").collect();
    if chain.contains(VIPVISOR_V6) && !v6.is_empty() {
        let missing: Vec<String> =
            v6.iter().map(ToString::to_string).filter(|ip| !v6_listed.contains(ip.as_str())).collect();
        if !missing.is_empty() {
            out.push(Finding {
                severity: Severity::Blocking,
                nic: nic_ref.clone(),
                what: format!("Neighbor Advertisements for {} (dropped by no-ipv6-spoofing)", missing.join(", ")),
                setting: setting("IPV6"),
                current: format!("IPV6 = {}", v6_listed.iter().copied().collect::<Vec<_>>().join(", ")),
                fix: format!("add IPV6={} to the filterref (vipvisor hypervisor apply)", missing.join(", IPV6=")),
            });
        }
    } else if let (Some(by), false) = (has(&chain, &NO_IPV6), v6.is_empty()) {
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
        let macs: BTreeSet<&str> = filter.values("MAC").collect();
        let shown = mac.to_string();
        let listed = macs.iter().any(|m| m.eq_ignore_ascii_case(&shown));
        if let (Some(by), false) = (has(&chain, &MAC_CHECKS), listed) {
            out.push(Finding {
                severity: Severity::Blocking,
                nic: nic_ref.clone(),
                what: format!("frames from the virtual MAC {mac} (dropped by {by})"),
                setting: setting("MAC"),
                current: if macs.is_empty() {
                    format!("no MAC parameter: only the NIC's own MAC {} may send", nic.mac)
                } else {
                    format!("MAC = {}", macs.iter().copied().collect::<Vec<_>>().join(", "))
                },
                fix: format!(
                    "add MAC={mac} (and the NIC's own MAC={}) to the filterref (vipvisor hypervisor apply --virtual-mac)",
                    nic.mac
                ),
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

/// A NIC's filter after a grant: its name and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub filter: Filter,
    /// What this call added (to merge into the NIC's [`Record`]).
    pub added: Params,
    /// The operator's filter, when this call put vipvisor's in its place.
    pub replaced: Option<Filter>,
}

/// The filter after granting `need`: every current parameter kept in order, each IPv4 VIP
/// not listed yet appended as `IP`, and — when `ipv6` allows it and the filter is
/// `clean-traffic` (which drops all IPv6) — vipvisor's filter in its place with each IPv6
/// VIP as `IPV6`. IPv6 VIPs are left out otherwise (diagnose says why).
///
/// A virtual MAC ([`Need::VirtualMac`]) is granted as `MAC` parameters: libvirt's
/// `no-mac-spoofing` and `no-arp-mac-spoofing` then allow each listed MAC (a rule per
/// value) instead of the NIC's own only, so the NIC's own MAC (`own`) is listed first.
pub fn granted(filter: &Filter, need: &Need, ipv6: bool, own: Mac) -> Granted {
    let mut out = Granted { filter: filter.clone(), added: Vec::new(), replaced: None };
    if let Need::VirtualMac { mac, .. } = need {
        for m in [own, *mac] {
            let p = ("MAC".to_string(), m.to_string());
            // An operator may have written the MAC in capitals.
            if !out.filter.params.iter().any(|(n, v)| n == "MAC" && v.eq_ignore_ascii_case(&p.1)) {
                out.filter.params.push(p.clone());
                out.added.push(p);
            }
        }
    }
    let add = |f: &mut Filter, name: &str, ip: &IpAddr, added: &mut Params| {
        let p = (name.to_string(), ip.to_string());
        if !f.params.contains(&p) {
            f.params.push(p.clone());
            added.push(p);
        }
    };
    for ip in need.ips().iter().filter(|ip| ip.is_ipv4()) {
        add(&mut out.filter, "IP", ip, &mut out.added);
    }
    let v6: Vec<&IpAddr> = need.ips().iter().filter(|ip| ip.is_ipv6()).collect();
    if !v6.is_empty() && ipv6 && (filter.name == "clean-traffic" || filter.name == VIPVISOR_V6) {
        if filter.name == "clean-traffic" {
            out.replaced = Some(filter.clone());
            out.filter.name = VIPVISOR_V6.to_owned();
        }
        for ip in v6 {
            add(&mut out.filter, "IPV6", ip, &mut out.added);
        }
    }
    libvirt_order(&mut out.filter);
    out
}

/// Parameters as libvirt writes them back: grouped by name, names sorted, each name's
/// values in the order given (it keeps them in a hash table of lists and prints it sorted),
/// so that what is written reads back equal.
pub fn libvirt_order(f: &mut Filter) {
    f.params.sort_by(|a, b| a.0.cmp(&b.0));
}

/// The filter after taking back what `record` says vipvisor added for `need` (or every
/// addition, when `need` lists no address): those parameters go, and once no `IPV6`
/// addition is left the operator's filter name comes back. A value the operator listed
/// is never in a record, so it is never removed. Returns the filter and what is left.
/// Settles a record's `uncertain` IPs against the NIC's filter as it is now: those it
/// lists are vipvisor's (the failed call did land), the others were never added. A
/// vipvisor filter without a recorded original replaced `clean-traffic` (the only filter
/// it replaces), whose parameters were the current ones without vipvisor's.
pub fn settled(filter: &Filter, record: &Record) -> Record {
    let mut out = Record { uncertain: Vec::new(), ..record.clone() };
    for ip in &record.uncertain {
        let p = (if ip.is_ipv4() { "IP" } else { "IPV6" }.to_string(), ip.to_string());
        if filter.params.contains(&p) && !out.added.contains(&p) {
            out.added.push(p);
        }
    }
    if filter.name == VIPVISOR_V6 && out.replaced_filter.is_none() && !record.uncertain.is_empty() {
        out.replaced_filter = Some(Filter {
            name: "clean-traffic".into(),
            params: filter.params.iter().filter(|p| !out.added.contains(p)).cloned().collect(),
        });
    }
    out
}

pub fn reverted(filter: &Filter, record: &Record, need: &Need, own: Mac) -> (Filter, Record) {
    let mut values: BTreeSet<String> = need.ips().iter().map(ToString::to_string).collect();
    let everything = matches!(need, Need::Announce { ips } if ips.is_empty());
    if let Need::VirtualMac { mac, .. } = need {
        values.insert(mac.to_string());
    }
    let (mut remove, mut keep): (Vec<_>, Vec<_>) =
        record.added.iter().cloned().partition(|(_, v)| everything || values.contains(v));
    // The NIC's own MAC was listed for the virtual ones: it goes with the last of them, but
    // never while the filter still lists another MAC (whoever put it there: a list without
    // the NIC's own MAC would drop every frame of the VM itself).
    let own_p = ("MAC".to_string(), own.to_string());
    let others_left = filter
        .params
        .iter()
        .any(|(n, v)| n == "MAC" && !v.eq_ignore_ascii_case(&own_p.1) && !remove.contains(&(n.clone(), v.clone())));
    if others_left {
        if let Some(i) = remove.iter().position(|p| *p == own_p) {
            keep.push(remove.remove(i));
        }
    } else if keep.contains(&own_p) {
        keep.retain(|p| *p != own_p);
        remove.push(own_p);
    }
    let mut out = Filter {
        name: filter.name.clone(),
        params: filter.params.iter().filter(|p| !remove.contains(p)).cloned().collect(),
    };
    libvirt_order(&mut out);
    let mut replaced = record.replaced_filter.clone();
    if !keep.iter().any(|(n, _)| n == "IPV6") {
        if let Some(original) = replaced.take() {
            out.name = original.name;
        }
    }
    (
        out,
        Record {
            added: keep,
            replaced_filter: replaced,
            uncertain: Vec::new(),
            virtual_macs: record.virtual_macs.clone(),
        },
    )
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
    fn own() -> Mac {
        "52:54:00:00:00:21".parse().unwrap()
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
    fn a_grant_whose_answer_was_lost_is_settled_by_what_the_nic_has() {
        let operator = ct(&["192.0.2.21"]);
        let ips = ["192.0.2.100".parse().unwrap(), "2001:db8::100".parse().unwrap()];
        let uncertain = Record { uncertain: ips.to_vec(), ..Record::default() };
        // The update landed (the filter has them): they are ours, and so is the swap.
        let landed = granted(&operator, &Need::Announce { ips: ips.to_vec() }, true, own());
        let s = settled(&landed.filter, &uncertain);
        assert_eq!(s.added, landed.added);
        assert_eq!(s.replaced_filter.as_ref(), Some(&operator), "the operator's filter is known again");
        let (back, left) = reverted(&landed.filter, &s, &Need::Announce { ips: vec![] }, own());
        assert_eq!((back, left.is_empty()), (operator.clone(), true));
        // It did not land: nothing is ours.
        let s = settled(&operator, &uncertain);
        assert!(s.is_empty(), "{s:?}");
    }

    #[test]
    fn grants_add_only_what_is_missing_and_revert_takes_back_only_that() {
        let operator = ct(&["192.0.2.21", "192.0.2.100"]);
        let g = granted(&operator, &announce(&["192.0.2.100", "192.0.2.101", "2001:db8::1"]), false, own());
        assert_eq!(
            g.added,
            vec![("IP".to_string(), "192.0.2.101".to_string())],
            "the operator's 192.0.2.100 is not ours; no IPv6 unless allowed"
        );
        assert_eq!((g.filter.params.len(), g.replaced.as_ref()), (3, None));
        let again = granted(&g.filter, &announce(&["192.0.2.100", "192.0.2.101"]), false, own());
        assert!(again.added.is_empty() && again.filter == g.filter, "idempotent");
        let rec = Record { added: g.added, ..Record::default() };
        let (back, left) = reverted(&g.filter, &rec, &announce(&["192.0.2.100", "192.0.2.101"]), own());
        assert_eq!(back, operator, "exactly the operator's filter again");
        assert!(left.is_empty());
    }

    #[test]
    fn ipv6_vips_swap_in_vipvisors_filter_only_when_allowed_and_revert_restores_it() {
        let none = BTreeMap::new();
        let operator = ct(&["192.0.2.21"]);
        let g = granted(&operator, &announce(&["2001:db8::100"]), true, own());
        assert_eq!(g.filter.name, VIPVISOR_V6);
        assert_eq!(
            g.filter.params,
            vec![("IP".to_string(), "192.0.2.21".to_string()), ("IPV6".to_string(), "2001:db8::100".to_string())]
        );
        assert_eq!(g.replaced.as_ref(), Some(&operator));
        let refs = BTreeMap::from([(
            VIPVISOR_V6.to_string(),
            vec!["clean-traffic".to_string(), "no-ipv6-spoofing".to_string()],
        )]);
        assert!(
            diagnose(&r(), &nic(Some(g.filter.clone())), &announce(&["2001:db8::100"]), &refs).is_empty(),
            "granted"
        );
        let f = diagnose(&r(), &nic(Some(g.filter.clone())), &announce(&["2001:db8::101"]), &refs);
        assert!(f[0].what.contains("2001:db8::101") && f[0].fix.contains("IPV6=2001:db8::101"), "{f:?}");
        let rec = Record { added: g.added.clone(), replaced_filter: g.replaced.clone(), ..Record::default() };
        let (back, left) = reverted(&g.filter, &rec, &announce(&[]), own());
        assert_eq!(back, operator, "the operator's clean-traffic comes back");
        assert!(left.is_empty());
        // Not allowed: nothing IPv6 is touched, and diagnose keeps saying why.
        let g = granted(&operator, &announce(&["2001:db8::100"]), false, own());
        assert!(g.added.is_empty() && g.filter == operator);
        assert!(!diagnose(&r(), &nic(Some(operator)), &announce(&["2001:db8::100"]), &none).is_empty());
    }

    #[test]
    fn virtual_macs_are_listed_after_the_nics_own_and_taken_back_with_the_last() {
        let none = BTreeMap::new();
        let operator = ct(&["192.0.2.21"]);
        let vm = |mac: &str, ip: &str| Need::VirtualMac { mac: mac.parse().unwrap(), ips: vec![ip.parse().unwrap()] };
        let (a, b) = (vm("42:00:c0:00:02:64", "192.0.2.100"), vm("42:00:c0:00:02:65", "192.0.2.101"));
        let f = diagnose(&r(), &nic(Some(operator.clone())), &a, &none);
        let blocked: Vec<&Finding> = f.iter().filter(|f| f.what.contains("virtual MAC")).collect();
        assert_eq!(blocked.len(), 1, "{f:?}");
        assert!(blocked[0].what.contains("42:00:c0:00:02:64") && blocked[0].what.contains("clean-traffic"));
        assert!(blocked[0].setting.ends_with("parameter MAC") && blocked[0].current.contains("52:54:00:00:00:21"));
        assert!(blocked[0].fix.contains("MAC=42:00:c0:00:02:64"), "{:?}", blocked[0]);
        let g = granted(&operator, &a, false, own());
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            g.added,
            vec![p("MAC", "52:54:00:00:00:21"), p("MAC", "42:00:c0:00:02:64"), p("IP", "192.0.2.100")],
            "the NIC's own MAC first (a MAC list replaces the default), then the virtual one, then the IP"
        );
        assert!(diagnose(&r(), &nic(Some(g.filter.clone())), &a, &none).is_empty(), "granted: nothing blocks");
        let g2 = granted(&g.filter, &b, false, own());
        assert_eq!(g2.added, vec![p("MAC", "42:00:c0:00:02:65"), p("IP", "192.0.2.101")], "the own MAC once");
        let mut rec = Record { added: g.added.clone(), ..Record::default() };
        rec.added.extend(g2.added.clone());
        let (back, left) = reverted(&g2.filter, &rec, &a, own());
        assert_eq!(
            back.params,
            vec![
                p("IP", "192.0.2.21"),
                p("IP", "192.0.2.101"),
                p("MAC", "52:54:00:00:00:21"),
                p("MAC", "42:00:c0:00:02:65")
            ]
        );
        let (back, left) = reverted(&back, &left, &b, own());
        assert_eq!(back, operator, "with the last virtual MAC the NIC's own goes too: the operator's filter again");
        assert!(left.is_empty(), "{left:?}");
        // The operator listed the NIC's own MAC: it is never taken back.
        let listed = Filter { params: vec![p("IP", "192.0.2.21"), p("MAC", "52:54:00:00:00:21")], ..operator.clone() };
        let g = granted(&listed, &a, false, own());
        assert_eq!(g.added, vec![p("MAC", "42:00:c0:00:02:64"), p("IP", "192.0.2.100")]);
        let (back, _) = reverted(&g.filter, &Record { added: g.added, ..Record::default() }, &a, own());
        assert_eq!(back, listed);
    }

    #[test]
    fn the_nics_own_mac_stays_while_another_mac_is_listed_and_order_is_libvirts() {
        let p = |k: &str, v: &str| (k.to_string(), v.to_string());
        let a =
            Need::VirtualMac { mac: "42:00:c0:00:02:64".parse().unwrap(), ips: vec!["192.0.2.100".parse().unwrap()] };
        let g = granted(&ct(&["192.0.2.21"]), &a, false, own());
        // A second virtual MAC landed but its answer was lost: the record does not know it.
        let mut lost = g.filter.clone();
        lost.params.push(p("MAC", "42:00:c0:00:02:65"));
        let rec = Record { added: g.added.clone(), ..Record::default() };
        let (back, left) = reverted(&lost, &rec, &a, own());
        assert!(
            back.params.contains(&p("MAC", "52:54:00:00:00:21")),
            "the NIC's own MAC stays while another MAC is listed: {back:?}"
        );
        assert!(left.added.contains(&p("MAC", "52:54:00:00:00:21")), "and stays ours to take back later");
        // Parameters come out grouped by name, sorted, as libvirt writes them back.
        let with_mac = Filter { params: vec![p("IP", "192.0.2.21"), p("MAC", "52:54:00:00:00:21")], ..ct(&[]) };
        let g = granted(&with_mac, &announce(&["192.0.2.100"]), false, own());
        assert_eq!(g.filter.params, vec![p("IP", "192.0.2.21"), p("IP", "192.0.2.100"), p("MAC", "52:54:00:00:00:21")]);
        // The operator's capitals are the same MAC.
        let caps = Filter { params: vec![p("MAC", "52:54:00:00:00:21"), p("MAC", "42:00:C0:00:02:64")], ..ct(&[]) };
        assert!(granted(&caps, &a, false, own()).added.iter().all(|(n, _)| n != "MAC"), "nothing to add");
        assert!(
            !diagnose(&r(), &nic(Some(caps)), &a, &BTreeMap::new()).iter().any(|f| f.what.contains("virtual MAC")),
            "listed in capitals: not blocked"
        );
    }
}
