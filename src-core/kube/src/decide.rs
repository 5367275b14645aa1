//! Pure decisions about one Service: is it ours, and what does it ask for? No I/O; the
//! Kubernetes types are plain data here.
//!
//! Requested addresses come from `vipvisor.io/addresses`, then MetalLB's
//! `metallb.universe.tf/loadBalancerIPs` / `metallb.io/loadBalancerIPs`, then
//! `spec.loadBalancerIP`; the pool from `vipvisor.io/pool` or MetalLB's `address-pool`; the
//! sharing key from `vipvisor.io/sharing-key` or MetalLB's `allow-shared-ip`. A malformed or
//! unknown annotation becomes a [`Warning`] and is ignored; the Service is served anyway.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;

use vipvisor_l2::wire::Mac;
use vipvisor_model::{AllocRequest, FamilyRequest, Labels, MacMode, PoolName, Port, ServiceKey, SharingKey, Uid};

pub const ANN_ADDRESSES: &str = "vipvisor.io/addresses";
pub const ANN_POOL: &str = "vipvisor.io/pool";
pub const ANN_SHARING: &str = "vipvisor.io/sharing-key";
/// Written by speakers before issue #10 (they report through ServiceL2Status now); known
/// here so one left on a Service is not reported as unknown.
pub const ANN_ANNOUNCING: &str = "vipvisor.io/announcing";
/// Written by the controller on Services whose pool has `mac: virtual`: the virtual MAC of
/// each of their addresses, `IP=MAC[,IP=MAC]`. Speakers announce each listed address with
/// its MAC; an address not listed is announced with the node's MAC.
pub const ANN_VIRTUAL_MACS: &str = "vipvisor.io/virtual-macs";
/// Set by the operator: the virtual MACs to use instead of the derived ones,
/// `IP=MAC[,IP=MAC]` (locally administered unicast MACs).
pub const ANN_VIRTUAL_MAC: &str = "vipvisor.io/virtual-mac";
const METALLB_PREFIXES: [&str; 2] = ["metallb.universe.tf/", "metallb.io/"];

/// Which Services this controller serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassPolicy {
    /// Our `spec.loadBalancerClass`.
    pub class: String,
    /// Also serve LoadBalancer Services without a class (the default, like MetalLB).
    pub serve_unclassed: bool,
}

impl Default for ClassPolicy {
    fn default() -> Self {
        Self { class: "vipvisor.io/lb".into(), serve_unclassed: true }
    }
}

/// A problem with one annotation (or field), reported as a Warning Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub key: String,
    pub value: String,
    pub expected: String,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ignoring {}={:?}: expected {}", self.key, self.value, self.expected)
    }
}

/// What to do with a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not a LoadBalancer, or another class: release whatever we hold for it.
    /// `clear_status`: the Service stopped being a LoadBalancer of ours, so our ingress
    /// addresses in its status must go too.
    Release { service: ServiceKey, uid: Option<Uid>, clear_status: bool },
    /// Serve it. `status_addresses`: what its status already shows (adopted, never renumbered).
    Allocate { request: AllocRequest, status_addresses: Vec<IpAddr>, warnings: Vec<Warning> },
    /// Its name cannot be a key (cannot happen for names the apiserver accepted).
    Invalid(String),
}

/// Parses `IP=MAC[,IP=MAC]` (the virtual-MAC annotations), each pair as
/// [`vipvisor_l2::vmac::parse_pair`] reads it. The error says what was expected.
pub fn parse_vip_macs(v: &str) -> Result<BTreeMap<IpAddr, Mac>, String> {
    let mut out = BTreeMap::new();
    for item in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (ip, mac) = vipvisor_l2::vmac::parse_pair(item).map_err(|why| {
            format!("IP=MAC pairs separated by commas, e.g. 192.0.2.100=42:00:c0:00:02:64 (not {item:?}: {why})")
        })?;
        if out.insert(ip, mac).is_some() {
            return Err(format!("one MAC per address ({ip} is given twice)"));
        }
    }
    Ok(out)
}

/// Prints what [`parse_vip_macs`] reads.
pub fn vip_macs_text(m: &BTreeMap<IpAddr, Mac>) -> String {
    m.iter().map(|(ip, mac)| format!("{ip}={mac}")).collect::<Vec<_>>().join(",")
}

/// The `vipvisor.io/virtual-macs` a Service should carry (`None`: none): for a pool that
/// announces with virtual MACs, each address's MAC, the operator's
/// (`vipvisor.io/virtual-mac`) or derived in `group`.
pub fn virtual_macs_note(
    addresses: &[IpAddr],
    mode: MacMode,
    group: u8,
    explicit: &BTreeMap<IpAddr, Mac>,
) -> Option<String> {
    if mode != MacMode::Virtual || addresses.is_empty() {
        return None;
    }
    let m: BTreeMap<IpAddr, Mac> = addresses
        .iter()
        .map(|a| (*a, explicit.get(a).copied().unwrap_or_else(|| vipvisor_l2::vmac::derive(*a, group))))
        .collect();
    Some(vip_macs_text(&m))
}

/// The Service's annotation `key`, if set.
pub fn annotation<'a>(svc: &'a Service, key: &str) -> Option<&'a str> {
    svc.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

fn parse_ips(key: &str, v: &str, warnings: &mut Vec<Warning>) -> Option<Vec<IpAddr>> {
    let parsed: Result<Vec<IpAddr>, _> =
        v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::parse::<IpAddr>).collect();
    match parsed {
        Ok(ips) if !ips.is_empty() && ips.len() <= 2 => Some(ips),
        _ => {
            warnings.push(Warning {
                key: key.into(),
                value: v.into(),
                expected: "one or two IP addresses (one per family), comma-separated".into(),
            });
            None
        }
    }
}

fn ann<'a>(a: &'a BTreeMap<String, String>, vipvisor: &str, metallb_suffix: Option<&str>) -> Option<(String, &'a str)> {
    if let Some(v) = a.get(vipvisor) {
        return Some((vipvisor.to_owned(), v.as_str()));
    }
    let suffix = metallb_suffix?;
    METALLB_PREFIXES.iter().find_map(|p| {
        let k = format!("{p}{suffix}");
        a.get(&k).map(|v| (k, v.as_str()))
    })
}

/// A Service's `namespace/name` key (`None` only for objects without both).
pub fn service_key(svc: &Service) -> Option<ServiceKey> {
    ServiceKey::new(svc.metadata.namespace.as_deref()?, svc.metadata.name.as_deref()?).ok()
}

/// The ingress addresses a Service's status shows.
pub fn status_addresses(svc: &Service) -> Vec<IpAddr> {
    svc.status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .map(|ing| ing.iter().filter_map(|i| i.ip.as_deref()).filter_map(|ip| ip.parse().ok()).collect())
        .unwrap_or_default()
}

/// `status.loadBalancer.ingress` for our addresses. `ipMode: VIP`: traffic to the VIP is
/// delivered to the node as-is (L2 mode), so kube-proxy may short-circuit it in-cluster
/// (Kubernetes >= 1.29 reads it; older servers drop the field).
pub fn ingress(addrs: &[IpAddr]) -> Vec<serde_json::Value> {
    addrs.iter().map(|a| serde_json::json!({"ip": a.to_string(), "ipMode": "VIP"})).collect()
}

/// Decides what `svc` needs. `ns_labels`: the labels of its namespace.
/// A LoadBalancer Service of our class (or without a class, if we serve those).
pub fn is_ours(svc: &Service, policy: &ClassPolicy) -> bool {
    let Some(spec) = svc.spec.as_ref() else { return false };
    spec.type_.as_deref() == Some("LoadBalancer")
        && match spec.load_balancer_class.as_deref() {
            None => policy.serve_unclassed,
            Some(c) => c == policy.class,
        }
}

pub fn decide(svc: &Service, ns_labels: &Labels, policy: &ClassPolicy) -> Decision {
    let meta = &svc.metadata;
    let (Some(ns), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
        return Decision::Invalid("a Service without namespace or name".into());
    };
    let service = match ServiceKey::new(ns, name) {
        Ok(k) => k,
        Err(e) => return Decision::Invalid(e.to_string()),
    };
    let uid = meta.uid.as_deref().and_then(|u| u.parse::<Uid>().ok());
    let spec = svc.spec.clone().unwrap_or_default();
    let is_lb = spec.type_.as_deref() == Some("LoadBalancer");
    if !is_ours(svc, policy) {
        // A Service of another class keeps whatever status its own controller wrote.
        return Decision::Release { service, uid, clear_status: !is_lb };
    }
    let empty = BTreeMap::new();
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let mut warnings = Vec::new();
    let mut request = AllocRequest::new(service);
    request.uid = uid;

    if let Some((k, v)) = ann(annotations, ANN_ADDRESSES, Some("loadBalancerIPs")) {
        if let Some(ips) = parse_ips(&k, v, &mut warnings) {
            request.addresses = ips;
        }
    } else if let Some(ip) = spec.load_balancer_ip.as_deref().filter(|s| !s.is_empty()) {
        if let Some(ips) = parse_ips("spec.loadBalancerIP", ip, &mut warnings) {
            request.addresses = ips;
        }
    }
    if let Some((k, v)) = ann(annotations, ANN_POOL, Some("address-pool")) {
        match v.parse::<PoolName>() {
            Ok(p) => request.pool = Some(p),
            Err(e) => warnings.push(Warning { key: k, value: v.into(), expected: e.expected }),
        }
    }
    if let Some((k, v)) = ann(annotations, ANN_SHARING, Some("allow-shared-ip")) {
        match v.parse::<SharingKey>() {
            Ok(s) => request.sharing_key = Some(s),
            Err(e) => warnings.push(Warning { key: k, value: v.into(), expected: e.expected }),
        }
    }
    for k in annotations.keys() {
        let known = [ANN_ADDRESSES, ANN_POOL, ANN_SHARING, ANN_ANNOUNCING, ANN_VIRTUAL_MACS, ANN_VIRTUAL_MAC];
        if k.starts_with("vipvisor.io/") && !known.contains(&k.as_str()) {
            warnings.push(Warning {
                key: k.clone(),
                value: annotations[k].clone(),
                expected: format!("a known annotation ({})", known.join(", ")),
            });
        }
    }
    // RequireDualStack: both families; PreferDualStack: both where the pool has both (the
    // cluster assigned both families), else one; otherwise the first family.
    let families = spec.ip_families.clone().unwrap_or_default();
    if request.addresses.is_empty() {
        request.family =
            match (spec.ip_family_policy.as_deref(), families.len() > 1, families.first().map(String::as_str)) {
                (Some("RequireDualStack"), true, _) => Some(FamilyRequest::Dual),
                (Some("PreferDualStack"), true, _) => Some(FamilyRequest::PreferDual),
                (_, _, Some("IPv6")) => Some(FamilyRequest::Ipv6),
                (_, _, Some("IPv4")) => Some(FamilyRequest::Ipv4),
                _ => None,
            };
    }
    request.ports = spec
        .ports
        .unwrap_or_default()
        .iter()
        .filter_map(|p| format!("{}/{}", p.protocol.as_deref().unwrap_or("TCP"), p.port).parse::<Port>().ok())
        .collect();
    request.service_labels = meta.labels.clone().unwrap_or_default();
    request.namespace_labels = ns_labels.clone();
    let status = status_addresses(svc);
    // Adopt what the status shows when nothing else is asked for: never renumber.
    if request.addresses.is_empty() && !status.is_empty() {
        request.addresses = status.clone();
        request.family = None;
    }
    Decision::Allocate { request, status_addresses: status, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }
    fn allocate(d: Decision) -> (AllocRequest, Vec<Warning>) {
        match d {
            Decision::Allocate { request, warnings, .. } => (request, warnings),
            other => panic!("expected Allocate, got {other:?}"),
        }
    }
    fn lb(extra_meta: serde_json::Value, extra_spec: serde_json::Value) -> Service {
        let mut meta = serde_json::json!({"namespace": "default", "name": "web", "uid": "0b4a-11"});
        meta.as_object_mut().unwrap().extend(extra_meta.as_object().unwrap().clone());
        let mut spec = serde_json::json!({"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]});
        spec.as_object_mut().unwrap().extend(extra_spec.as_object().unwrap().clone());
        svc(serde_json::json!({"metadata": meta, "spec": spec}))
    }
    const P: fn() -> ClassPolicy = ClassPolicy::default;

    #[test]
    fn ingress_carries_ip_mode_vip() {
        let v = ingress(&["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()]);
        assert_eq!(
            serde_json::Value::Array(v),
            serde_json::json!([{"ip": "192.0.2.1", "ipMode": "VIP"}, {"ip": "2001:db8::1", "ipMode": "VIP"}])
        );
    }

    #[test]
    fn plain_load_balancer_is_served() {
        let (r, w) = allocate(decide(&lb(serde_json::json!({}), serde_json::json!({})), &Labels::new(), &P()));
        assert!(w.is_empty());
        assert_eq!(r.service.to_string(), "default/web");
        assert_eq!(r.uid.unwrap().as_str(), "0b4a-11");
        assert_eq!(r.ports.iter().map(ToString::to_string).collect::<Vec<_>>(), vec!["tcp/80"]);
        assert!(r.addresses.is_empty() && r.family.is_none(), "no request: the pools decide");
    }

    #[test]
    fn classes_are_filtered() {
        let ours = lb(serde_json::json!({}), serde_json::json!({"loadBalancerClass": "vipvisor.io/lb"}));
        assert!(matches!(decide(&ours, &Labels::new(), &P()), Decision::Allocate { .. }));
        let theirs = lb(serde_json::json!({}), serde_json::json!({"loadBalancerClass": "other.io/lb"}));
        assert!(
            matches!(decide(&theirs, &Labels::new(), &P()), Decision::Release { clear_status: false, .. }),
            "another class is not ours, and its status is not ours to clear"
        );
        let strict = ClassPolicy { serve_unclassed: false, ..P() };
        let unclassed = lb(serde_json::json!({}), serde_json::json!({}));
        assert!(matches!(decide(&unclassed, &Labels::new(), &strict), Decision::Release { .. }));
        let cluster_ip =
            svc(serde_json::json!({"metadata": {"namespace": "a", "name": "b"}, "spec": {"type": "ClusterIP"}}));
        assert!(matches!(decide(&cluster_ip, &Labels::new(), &P()), Decision::Release { clear_status: true, .. }));
    }

    #[test]
    fn metallb_annotations_are_honoured() {
        let s = lb(
            serde_json::json!({"annotations": {
                "metallb.universe.tf/loadBalancerIPs": "192.0.2.10,2001:db8::10",
                "metallb.universe.tf/address-pool": "web",
                "metallb.universe.tf/allow-shared-ip": "dns"
            }}),
            serde_json::json!({}),
        );
        let (r, w) = allocate(decide(&s, &Labels::new(), &P()));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(r.addresses, vec!["192.0.2.10".parse::<IpAddr>().unwrap(), "2001:db8::10".parse().unwrap()]);
        assert_eq!(r.pool.unwrap().as_str(), "web");
        assert_eq!(r.sharing_key.unwrap().as_str(), "dns");
        let s = lb(
            serde_json::json!({"annotations": {"metallb.io/loadBalancerIPs": "198.51.100.7", "metallb.io/address-pool": "lab"}}),
            serde_json::json!({}),
        );
        let (r, _) = allocate(decide(&s, &Labels::new(), &P()));
        assert_eq!(r.addresses, vec!["198.51.100.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(r.pool.unwrap().as_str(), "lab");
        let (r, _) = allocate(decide(
            &lb(serde_json::json!({}), serde_json::json!({"loadBalancerIP": "192.0.2.5"})),
            &Labels::new(),
            &P(),
        ));
        assert_eq!(r.addresses, vec!["192.0.2.5".parse::<IpAddr>().unwrap()], "spec.loadBalancerIP is a request too");
    }

    #[test]
    fn bad_annotations_warn_and_are_ignored() {
        let s = lb(
            serde_json::json!({"annotations": {
                "vipvisor.io/addresses": "192.0.2.999",
                "vipvisor.io/pool": "Bad_Pool",
                "vipvisor.io/adresses": "typo"
            }}),
            serde_json::json!({}),
        );
        let (r, w) = allocate(decide(&s, &Labels::new(), &P()));
        assert!(r.addresses.is_empty() && r.pool.is_none(), "bad values are ignored; the service is still served");
        let keys: Vec<&str> = w.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(keys, vec!["vipvisor.io/addresses", "vipvisor.io/pool", "vipvisor.io/adresses"]);
        assert!(w[0].to_string().contains("192.0.2.999"), "{}", w[0]);
    }

    #[test]
    fn status_is_adopted_and_families_follow_the_spec() {
        let s = svc(serde_json::json!({
            "metadata": {"namespace": "default", "name": "old"},
            "spec": {"type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}
        }));
        match decide(&s, &Labels::new(), &P()) {
            Decision::Allocate { request, status_addresses, .. } => {
                assert_eq!(request.addresses, status_addresses, "an address in the status is kept, never renumbered");
            }
            other => panic!("{other:?}"),
        }
        let dual = lb(
            serde_json::json!({}),
            serde_json::json!({"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}),
        );
        assert_eq!(allocate(decide(&dual, &Labels::new(), &P())).0.family, Some(FamilyRequest::Dual));
        let v6 =
            lb(serde_json::json!({}), serde_json::json!({"ipFamilies": ["IPv6"], "ipFamilyPolicy": "SingleStack"}));
        assert_eq!(allocate(decide(&v6, &Labels::new(), &P())).0.family, Some(FamilyRequest::Ipv6));
        let prefer = lb(
            serde_json::json!({}),
            serde_json::json!({"ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "PreferDualStack"}),
        );
        assert_eq!(
            allocate(decide(&prefer, &Labels::new(), &P())).0.family,
            Some(FamilyRequest::PreferDual),
            "PreferDualStack: dual where the pool has both families"
        );
        let prefer_single =
            lb(serde_json::json!({}), serde_json::json!({"ipFamilies": ["IPv6"], "ipFamilyPolicy": "PreferDualStack"}));
        assert_eq!(
            allocate(decide(&prefer_single, &Labels::new(), &P())).0.family,
            Some(FamilyRequest::Ipv6),
            "a single-stack cluster gave the Service one family"
        );
    }

    #[test]
    fn virtual_mac_notes_derive_or_take_the_operators_mac() {
        let a: Vec<IpAddr> = vec!["192.0.2.100".parse().unwrap(), "2001:db8::100".parse().unwrap()];
        let none = BTreeMap::new();
        assert_eq!(virtual_macs_note(&a, MacMode::Node, 0, &none), None, "node-MAC pools carry no note");
        assert_eq!(
            virtual_macs_note(&a, MacMode::Virtual, 3, &none).as_deref(),
            Some("192.0.2.100=42:03:c0:00:02:64,2001:db8::100=62:03:00:00:01:00")
        );
        let mine = parse_vip_macs("192.0.2.100 = 02:aa:00:00:00:01").unwrap();
        let note = virtual_macs_note(&a, MacMode::Virtual, 3, &mine).unwrap();
        assert_eq!(parse_vip_macs(&note).unwrap()[&a[0]].to_string(), "02:aa:00:00:00:01", "the operator's MAC wins");
        for (bad, needle) in [
            ("192.0.2.100", "IP=MAC pairs"),
            ("192.0.2.100=nope", "not \"192.0.2.100=nope\""),
            ("192.0.2.100=01:00:5e:00:00:01", "multicast"),
            ("192.0.2.100=00:50:56:00:00:01", "vendor"),
            ("192.0.2.100=02:00:00:00:00:01,192.0.2.100=02:00:00:00:00:02", "given twice"),
        ] {
            let e = parse_vip_macs(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
