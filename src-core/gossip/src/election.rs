//! Pure owner election: which node announces a VIP.
//!
//! Candidates are the live members that are not excluded, and — in Kubernetes mode — Ready
//! and not labelled `node.kubernetes.io/exclude-from-external-load-balancers`, and under
//! `externalTrafficPolicy: Local` only nodes with a ready local endpoint. They are ranked by
//! a stable hash of (node, VIP) (SHA-256, as MetalLB does), so every speaker computes the same
//! ranking from the same facts and VIPs spread over nodes.
//!
//! Against flapping, a node that (re)joined takes VIPs from settled nodes only once it is
//! settled itself ([`owners`]); settledness is a fact every member shares through gossip.

use std::collections::BTreeMap;
use std::net::IpAddr;

use sha2::{Digest, Sha256};

/// What a speaker knows about one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub name: String,
    /// Alive in the membership protocol.
    pub live: bool,
    /// Kubernetes Ready (true in static mode).
    pub ready: bool,
    /// Excluded by configuration or the exclude-from-external-load-balancers label.
    pub excluded: bool,
}

/// What a speaker knows about one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipFacts {
    pub vip: IpAddr,
    /// `externalTrafficPolicy: Local`: only nodes in `local_endpoints` may own it.
    pub etp_local: bool,
    pub local_endpoints: Vec<String>,
}

fn score(node: &str, vip: &IpAddr) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update(b"#");
    h.update(vip.to_string().as_bytes());
    h.finalize().into()
}

/// Candidates for `vip`, best first. Ties (identical hashes) are broken by name.
pub fn rank<'a>(vip: &VipFacts, nodes: &'a [NodeFacts]) -> Vec<&'a NodeFacts> {
    let mut c: Vec<&NodeFacts> = nodes
        .iter()
        .filter(|n| n.live && n.ready && !n.excluded)
        .filter(|n| !vip.etp_local || vip.local_endpoints.iter().any(|e| e == &n.name))
        .collect();
    c.sort_by_cached_key(|n| (score(&n.name, &vip.vip), n.name.clone()));
    c.dedup_by(|a, b| a.name == b.name);
    c
}

/// The owner with no history: the best-ranked candidate.
pub fn owner(vip: &VipFacts, nodes: &[NodeFacts]) -> Option<String> {
    rank(vip, nodes).first().map(|n| n.name.clone())
}

/// The owner when some candidates are still within their hold time after (re)joining:
/// the best-ranked *settled* candidate, or the best-ranked candidate if none is settled.
/// `settled` must be computed from facts every member shares (e.g. each member's start
/// time), so that every speaker picks the same owner.
pub fn owner_with_hold(vip: &VipFacts, nodes: &[NodeFacts], settled: impl Fn(&NodeFacts) -> bool) -> Option<String> {
    let ranked = rank(vip, nodes);
    ranked.iter().find(|n| settled(n)).or(ranked.first()).map(|n| n.name.clone())
}

/// The owner of every VIP: the best-ranked settled candidate, or the best-ranked one when
/// none is settled. `settled` must be a fact every member shares (gossip carries it), so
/// that every speaker picks the same owner.
pub fn owners<'a>(
    vips: impl IntoIterator<Item = &'a VipFacts>,
    nodes: &[NodeFacts],
    settled: impl Fn(&str) -> bool,
) -> BTreeMap<IpAddr, Option<String>> {
    vips.into_iter().map(|f| (f.vip, owner_with_hold(f, nodes, |n| settled(&n.name)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn node(name: &str) -> NodeFacts {
        NodeFacts { name: name.into(), live: true, ready: true, excluded: false }
    }
    fn vip(s: &str) -> VipFacts {
        VipFacts { vip: s.parse().unwrap(), etp_local: false, local_endpoints: vec![] }
    }

    #[test]
    fn candidates_are_filtered() {
        let mut nodes = vec![node("a"), node("b"), node("c"), node("d")];
        nodes[1].live = false;
        nodes[2].ready = false;
        nodes[3].excluded = true;
        assert_eq!(owner(&vip("192.0.2.1"), &nodes), Some("a".into()), "only a is live, ready and not excluded");
        let mut local = vip("192.0.2.1");
        local.etp_local = true;
        local.local_endpoints = vec!["c".into()];
        assert_eq!(owner(&local, &nodes), None, "ETP=Local: c has the endpoint but is not ready");
        nodes[2].ready = true;
        assert_eq!(owner(&local, &nodes), Some("c".into()));
    }

    #[test]
    fn vips_spread_over_nodes() {
        let nodes: Vec<NodeFacts> = (0..3).map(|i| node(&format!("n{i}"))).collect();
        let mut count: HashMap<String, usize> = HashMap::new();
        for i in 0..300 {
            *count.entry(owner(&vip(&format!("2001:db8::{i:x}")), &nodes).unwrap()).or_default() += 1;
        }
        assert!(count.values().all(|c| *c > 60), "300 VIPs over 3 nodes should spread: {count:?}");
    }

    #[test]
    fn settled_nodes_are_preferred() {
        let nodes = vec![node("a"), node("b"), node("c")];
        let v = vip("192.0.2.7");
        let best = owner(&v, &nodes).unwrap();
        assert_eq!(owner_with_hold(&v, &nodes, |_| false), Some(best.clone()), "nobody settled: plain ranking");
        let other = owner_with_hold(&v, &nodes, |n| n.name != best).unwrap();
        assert_ne!(other, best, "a node within its hold time does not take the VIP from settled ones");
        assert_eq!(owner_with_hold(&v, &nodes, |_| true), Some(best.clone()));
        let all = owners([&v], &nodes, |n| n != best);
        assert_ne!(all[&v.vip].as_deref(), Some(best.as_str()), "owners() applies the same rule");
    }

    fn facts() -> impl Strategy<Value = (Vec<NodeFacts>, VipFacts)> {
        (
            proptest::collection::vec((0u8..12, any::<bool>(), any::<bool>(), any::<bool>()), 0..10),
            any::<u32>(),
            any::<bool>(),
            proptest::collection::vec(0u8..12, 0..4),
        )
            .prop_map(|(mut ns, ip, etp, eps)| {
                ns.sort_by_key(|n| n.0);
                ns.dedup_by_key(|n| n.0);
                let nodes = ns
                    .into_iter()
                    .map(|(i, live, ready, excluded)| NodeFacts {
                        name: format!("n{i}"),
                        live: live || ready,
                        ready: ready || excluded,
                        excluded: excluded && live,
                    })
                    .collect();
                let v = VipFacts {
                    vip: IpAddr::V4(ip.into()),
                    etp_local: etp,
                    local_endpoints: eps.into_iter().map(|e| format!("n{e}")).collect(),
                };
                (nodes, v)
            })
    }

    proptest! {
        /// Every speaker computes the same owner from the same facts, in any order.
        #[test]
        fn same_facts_same_owner((mut nodes, v) in facts(), seed in any::<u64>()) {
            let a = owner(&v, &nodes);
            let len = nodes.len().max(1);
            nodes.rotate_left((seed as usize) % len);
            nodes.reverse();
            prop_assert_eq!(a, owner(&v, &nodes));
        }

        /// Removing a node that is not the owner never moves the VIP.
        #[test]
        fn removing_a_non_owner_keeps_the_owner((nodes, v) in facts(), pick in any::<usize>()) {
            let Some(o) = owner(&v, &nodes) else { return Ok(()) };
            let others: Vec<&NodeFacts> = nodes.iter().filter(|n| n.name != o).collect();
            if others.is_empty() { return Ok(()) }
            let gone = &others[pick % others.len()].name;
            let rest: Vec<NodeFacts> = nodes.iter().filter(|n| &n.name != gone).cloned().collect();
            prop_assert_eq!(owner(&v, &rest), Some(o));
        }

        /// Under ETP=Local the owner always has a local endpoint.
        #[test]
        fn etp_local_is_respected((nodes, v) in facts()) {
            if let Some(o) = owner(&v, &nodes) {
                prop_assert!(!v.etp_local || v.local_endpoints.contains(&o));
                let n = nodes.iter().find(|n| n.name == o).unwrap();
                prop_assert!(n.live && n.ready && !n.excluded);
            }
        }
    }
}
