//! The one ownership loop, shared by static groups and Kubernetes mode: each round it
//! takes the live members and the facts of the mode ([`Facts`]), computes every VIP's
//! owner with [`crate::election::owners`], and hands this node's share to the speaker
//! through an [`OwnerTracker`].

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;
use vipvisor_health::Beat;
use vipvisor_l2::metrics::Metrics;
use vipvisor_l2::wire::Mac;
use vipvisor_l2::{Friends, Owned, Speaker};

use crate::election::{owners, NodeFacts, VipFacts};
use crate::membership::Live;

/// What a mode knows besides membership.
pub trait Facts: Send {
    /// The VIPs to place and the facts about the live `members`, for this round.
    fn round(&mut self, members: &Live) -> (Vec<VipFacts>, Vec<NodeFacts>);
    /// The interface that carries `vip` here (`None`: this node cannot announce it).
    fn place(&mut self, vip: &IpAddr) -> Option<usize>;
    /// What this node owns after the round (Kubernetes mode reports it).
    fn owned(&mut self, _owned: &[Owned]) {}
    /// Completes when the facts changed; `false` when they never will again.
    fn changed(&mut self) -> impl Future<Output = bool> + Send;
}

/// Fixed VIPs on fixed interfaces, every member a candidate: static groups.
#[derive(Debug, Clone)]
pub struct StaticFacts {
    vips: Vec<VipFacts>,
    place: HashMap<IpAddr, usize>,
}

impl StaticFacts {
    pub fn new(placed: &[(IpAddr, usize)]) -> Self {
        StaticFacts {
            vips: placed
                .iter()
                .map(|(vip, _)| VipFacts { vip: *vip, etp_local: false, local_endpoints: vec![] })
                .collect(),
            place: placed.iter().copied().collect(),
        }
    }
}

impl Facts for StaticFacts {
    fn round(&mut self, members: &Live) -> (Vec<VipFacts>, Vec<NodeFacts>) {
        let nodes =
            members.keys().map(|n| NodeFacts { name: n.clone(), live: true, ready: true, excluded: false }).collect();
        (self.vips.clone(), nodes)
    }
    fn place(&mut self, vip: &IpAddr) -> Option<usize> {
        self.place.get(vip).copied()
    }
    async fn changed(&mut self) -> bool {
        std::future::pending::<()>().await;
        false
    }
}

/// The owner of every VIP among the live `members`, settled ones first
/// ([`crate::election::owners`]).
pub fn owners_among<'a>(
    vips: impl IntoIterator<Item = &'a VipFacts>,
    nodes: &[NodeFacts],
    members: &Live,
) -> BTreeMap<IpAddr, Option<String>> {
    owners(vips, nodes, |n| members.get(n).is_some_and(|m| m.settled))
}

/// Runs the ownership loop until membership or the facts end. Each turn beats `beat`.
pub async fn run<F: Facts>(mut live: watch::Receiver<Live>, mut tracker: OwnerTracker, mut facts: F, beat: Beat) {
    let mut facts_open = true;
    loop {
        beat.beat();
        let members = live.borrow_and_update().clone();
        tracker.members(&members);
        let (vips, nodes) = facts.round(&members);
        let chosen = owners_among(&vips, &nodes, &members);
        let owned = tracker.round(&chosen, |vip| facts.place(vip));
        facts.owned(&owned);
        tracker.publish(owned);
        // Membership (settledness included) and the mode's facts move VIPs; the tick only
        // keeps the heartbeat going.
        tokio::select! {
            r = live.changed() => if r.is_err() { return },
            open = facts.changed(), if facts_open => {
                facts_open = open;
                // Let a burst of watch events settle into one recomputation.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tokio::time::sleep(vipvisor_l2::BEAT_EVERY) => {}
        }
    }
}

/// Turns each round's computed owners into what this node announces: remembers the last
/// owner of every VIP (a VIP taken from another member is a takeover, announced without a
/// probe), logs and counts owner changes, passes the members' MACs to the engine as
/// friends, and publishes this node's share when it changes. Shared by static groups and
/// Kubernetes mode.
#[derive(Debug)]
pub struct OwnerTracker {
    me: String,
    previous: HashMap<IpAddr, Option<String>>,
    metrics: Metrics,
    friends: Friends,
    owned: watch::Sender<Vec<Owned>>,
}

impl OwnerTracker {
    /// The tracker, and the receiver to hand to [`Speaker::run_owned`].
    pub fn new<L: vipvisor_l2::sys::Link>(speaker: &Speaker<L>, me: &str) -> (Self, watch::Receiver<Vec<Owned>>) {
        let (tx, rx) = watch::channel(Vec::new());
        let t = OwnerTracker {
            me: me.to_owned(),
            previous: HashMap::new(),
            metrics: speaker.metrics().clone(),
            friends: speaker.friends(),
            owned: tx,
        };
        (t, rx)
    }

    /// The live members changed (or may have): count them, and befriend their MACs.
    pub fn members(&self, members: &Live) {
        self.metrics.set_members(members.len());
        self.friends
            .set(members.iter().filter(|(n, _)| **n != self.me).flat_map(|(_, m)| m.macs.iter().map(|b| Mac(*b))));
    }

    /// Records `chosen` (every VIP's owner this round) and returns the VIPs this node owns,
    /// on the interface `place` gives (a VIP without one is left out).
    pub fn round(
        &mut self,
        chosen: &BTreeMap<IpAddr, Option<String>>,
        mut place: impl FnMut(&IpAddr) -> Option<usize>,
    ) -> Vec<Owned> {
        let mut owned = Vec::new();
        for (vip, owner) in chosen {
            let before = self.previous.insert(*vip, owner.clone()).flatten();
            if before.as_ref() != owner.as_ref() {
                let none = "none";
                info!(%vip, owner = owner.as_deref().unwrap_or(none), previous = before.as_deref().unwrap_or(none), "owner chosen");
                self.metrics.owner_changed(vip, before.as_deref(), owner.as_deref());
            }
            if owner.as_deref() != Some(self.me.as_str()) {
                continue;
            }
            let Some(iface) = place(vip) else { continue };
            let takeover = before.is_some_and(|b| b != self.me);
            owned.push(Owned { vip: *vip, iface, takeover });
        }
        // VIPs that are gone have no owner any more.
        for (vip, owner) in &self.previous {
            if owner.is_some() && !chosen.contains_key(vip) {
                self.metrics.owner_changed(vip, owner.as_deref(), None);
            }
        }
        self.previous.retain(|v, _| chosen.contains_key(v));
        owned
    }

    /// Hands `owned` to the speaker if it differs from what it announces now.
    pub fn publish(&self, owned: Vec<Owned>) {
        self.owned.send_if_modified(|cur| {
            let same = cur.len() == owned.len() && cur.iter().zip(&owned).all(|(a, b)| a.vip == b.vip);
            if !same {
                *cur = owned;
            }
            !same
        });
    }
}
