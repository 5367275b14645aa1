//! L2 announcements: the speaker answers ARP and NDP for its VIPs with the interface's own
//! MAC, from user space, without adding the VIPs to any interface.
//!
//! - [`wire`]: frames (smoltcp codecs), classification, builders;
//! - [`engine`]: the pure state machine (probe → burst → owned; answers; conflicts);
//! - [`sys`]: AF_PACKET sockets with a BPF filter, multicast joins (the only `unsafe`);
//! - [`link`]: interface facts; [`metrics`]: Prometheus counters;
//! - this module: the runner that wires them together, and static mode.

pub mod engine;
pub mod link;
pub mod metrics;
pub mod sys;
pub mod wire;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use std::collections::HashMap;

use tokio::sync::{mpsc, watch, Notify};
use tracing::{info, warn};

use engine::{Engine, Event, Iface, Output, Timing};
use link::{LinkError, LinkInfo};
use metrics::Metrics;
use sys::{Link, Multicast, PacketSocket};
use wire::Mac;

/// A VIP this node should announce now, on interface `iface`. `takeover`: another group
/// member owned it before, so it is announced at once without a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub vip: IpAddr,
    pub iface: usize,
    pub takeover: bool,
}

/// Static mode: fixed interfaces and VIPs, no Kubernetes.
#[derive(Debug, Clone)]
pub struct StaticConfig {
    pub interfaces: Vec<String>,
    pub vips: Vec<IpAddr>,
    pub node_name: String,
    pub timing: Timing,
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("VIP {vip} is not in any subnet of {interfaces}; expected an address inside one of: {subnets}")]
    VipNotInSubnet { vip: IpAddr, interfaces: String, subnets: String },
    #[error("VIP {0} is given twice")]
    DuplicateVip(IpAddr),
    #[error("no VIPs given; expected at least one --vip")]
    NoVips,
    #[error("cannot open a raw socket on {iface}: {source}; the speaker needs CAP_NET_RAW (run it as root, or `setcap cap_net_raw+ep` on the binary)")]
    NoCapability { iface: String, source: std::io::Error },
    #[error("cannot open a raw socket on {iface}: {source}")]
    Socket { iface: String, source: std::io::Error },
    #[error("cannot join the solicited-node group of {vip} on {iface}: {source}")]
    Multicast { vip: IpAddr, iface: String, source: std::io::Error },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics { addr: SocketAddr, source: std::io::Error },
    #[error("gossip: {0}")]
    Gossip(String),
    #[error("address conflict: {vip} is already in use by {other} on {iface}; not announcing it (pass --allow-conflicts to announce anyway)")]
    Conflict { vip: IpAddr, iface: String, other: Mac },
}

/// Assigns each VIP to the first interface with a subnet containing it.
pub fn place_vips(links: &[LinkInfo], vips: &[IpAddr]) -> Result<Vec<(IpAddr, usize)>, SpeakerError> {
    if vips.is_empty() {
        return Err(SpeakerError::NoVips);
    }
    let mut out: Vec<(IpAddr, usize)> = Vec::new();
    for vip in vips {
        if out.iter().any(|(v, _)| v == vip) {
            return Err(SpeakerError::DuplicateVip(*vip));
        }
        match links.iter().position(|l| l.subnet_of(vip).is_some()) {
            Some(i) => out.push((*vip, i)),
            None => {
                let subnets: Vec<String> =
                    links.iter().flat_map(|l| l.subnets.iter().map(move |s| format!("{s} ({})", l.name))).collect();
                return Err(SpeakerError::VipNotInSubnet {
                    vip: *vip,
                    interfaces: links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>().join(", "),
                    subnets: if subnets.is_empty() { "(no addresses configured)".into() } else { subnets.join(", ") },
                });
            }
        }
    }
    Ok(out)
}

/// Opens a raw socket and a multicast membership set per interface.
pub fn open_links(links: &[LinkInfo]) -> Result<(Vec<PacketSocket>, Vec<Multicast>), SpeakerError> {
    let mut sockets = Vec::new();
    let mut groups = Vec::new();
    for l in links {
        let sock = PacketSocket::open(l.index).map_err(|source| match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => SpeakerError::NoCapability { iface: l.name.clone(), source },
            _ => SpeakerError::Socket { iface: l.name.clone(), source },
        })?;
        sockets.push(sock);
        groups.push(Multicast::new(l.index).map_err(|source| SpeakerError::Socket { iface: l.name.clone(), source })?);
    }
    Ok((sockets, groups))
}

/// Runs a static speaker until `shutdown` completes (Ok) or a conflict stops it (Err).
pub async fn run_static(
    cfg: StaticConfig,
    group: Option<GroupConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SpeakerError> {
    let links: Vec<LinkInfo> = cfg.interfaces.iter().map(|n| link::lookup(n)).collect::<Result<_, _>>()?;
    let placed = place_vips(&links, &cfg.vips)?;
    let (sockets, mut groups) = open_links(&links)?;
    for (vip, i) in &placed {
        if let IpAddr::V6(v6) = vip {
            groups[*i].join(wire::solicited_node(*v6)).map_err(|source| SpeakerError::Multicast {
                vip: *vip,
                iface: links[*i].name.clone(),
                source,
            })?;
        }
    }
    let metrics = Metrics::new();
    if let Some(addr) = cfg.metrics_addr {
        serve_metrics(addr, metrics.clone()).await?;
    }
    info!(node = %cfg.node_name, interfaces = ?cfg.interfaces, vips = placed.len(), "speaker starting");
    let ifaces = links.iter().map(|l| Iface { name: l.name.clone(), mac: l.mac }).collect();
    let speaker = Speaker::new(ifaces, sockets, cfg.timing, metrics);
    let result = match group {
        None => speaker.run(placed.clone(), shutdown).await,
        Some(g) => run_group(&speaker, &cfg.node_name, &links, &placed, g, shutdown).await,
    };
    for (vip, i) in &placed {
        if let IpAddr::V6(v6) = vip {
            let _ = groups[*i].leave(wire::solicited_node(*v6));
        }
    }
    info!("speaker stopped");
    result
}

/// Group mode: speakers that share the VIP list; each VIP is announced by one owner, chosen
/// by [`crate::election`] over the live members of the gossip group.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Gossip address to bind; default: the first IPv4 (else IPv6) address of the first
    /// interface, on `port`.
    pub bind: Option<IpAddr>,
    pub port: u16,
    pub join: Vec<SocketAddr>,
    pub sealer: crate::membership::Sealer,
    pub timing: crate::membership::GossipTiming,
    /// A (re)joining member takes VIPs from others only after it has been up this long.
    pub hold: std::time::Duration,
    /// How long to wait for the group before deciding ownership alone.
    pub settle: std::time::Duration,
}

#[allow(clippy::too_many_arguments)]
async fn run_group(
    speaker: &Speaker<PacketSocket>,
    me: &str,
    links: &[LinkInfo],
    placed: &[(IpAddr, usize)],
    g: GroupConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SpeakerError> {
    use crate::election::{owners_by_start, NodeFacts, VipFacts};
    let bind_ip = g
        .bind
        .or_else(|| {
            links.first().and_then(|l| l.subnets.iter().find(|n| n.is_ipv4()).or(l.subnets.first()).map(|n| n.ip()))
        })
        .ok_or_else(|| {
            SpeakerError::Gossip(
                "no address to bind gossip to; expected --gossip-bind or an address on the interface".into(),
            )
        })?;
    let bind = SocketAddr::new(bind_ip, g.port);
    let macs: Vec<[u8; 6]> = links.iter().map(|l| l.mac.0).collect();
    let membership = crate::membership::Membership::start(me, macs, bind, g.join.clone(), g.sealer.clone(), g.timing)
        .await
        .map_err(|e| SpeakerError::Gossip(e.to_string()))?;
    let mut live = membership.live();
    info!(%bind, peers = ?g.join, "gossip started");
    // Give the group a moment to answer, so a joining node does not decide alone.
    if !g.join.is_empty() {
        let _ = tokio::time::timeout(g.settle, live.wait_for(|l| l.len() > 1)).await;
    }
    let (mut tracker, owned_rx) = OwnerTracker::new(speaker, me);
    let hold = g.hold;
    // The VIPs are fixed: every member is a candidate for each.
    let vips: Vec<VipFacts> =
        placed.iter().map(|(vip, _)| VipFacts { vip: *vip, etp_local: false, local_endpoints: vec![] }).collect();
    let place: HashMap<IpAddr, usize> = placed.iter().copied().collect();
    let ownership = tokio::spawn(async move {
        loop {
            let members = live.borrow_and_update().clone();
            tracker.members(&members);
            let nodes: Vec<NodeFacts> = members
                .keys()
                .map(|n| NodeFacts { name: n.clone(), live: true, ready: true, excluded: false, candidate_since: None })
                .collect();
            let now_ms = crate::model::Timestamp::now().0;
            let chosen = owners_by_start(&vips, &nodes, |n| members.get(n).map(|m| m.started_ms), now_ms, hold);
            let owned = tracker.round(&chosen, |vip| place.get(vip).copied());
            tracker.publish(owned);
            // Membership changes, and the passing of hold times, can move VIPs.
            tokio::select! {
                r = live.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            }
        }
    });
    let result = speaker.run_owned(owned_rx, false, shutdown).await;
    ownership.abort();
    // Say goodbye so the others take over at once instead of waiting to detect us.
    membership.leave();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    result
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
    pub fn new<L: Link>(speaker: &Speaker<L>, me: &str) -> (Self, watch::Receiver<Vec<Owned>>) {
        let (tx, rx) = watch::channel(Vec::new());
        let t = OwnerTracker {
            me: me.to_owned(),
            previous: HashMap::new(),
            metrics: speaker.metrics.clone(),
            friends: speaker.friends(),
            owned: tx,
        };
        (t, rx)
    }

    /// The live members changed (or may have): count them, and befriend their MACs.
    pub fn members(&self, members: &crate::membership::Live) {
        self.metrics.set_members(members.len());
        self.friends
            .set(members.iter().filter(|(n, _)| **n != self.me).flat_map(|(_, m)| m.macs.iter().map(|b| Mac(*b))));
    }

    /// Records `chosen` (every VIP's owner this round) and returns the VIPs this node owns,
    /// on the interface `place` gives (a VIP without one is left out).
    pub fn round(
        &mut self,
        chosen: &std::collections::BTreeMap<IpAddr, Option<String>>,
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

pub(crate) async fn serve_metrics(addr: SocketAddr, metrics: Metrics) -> Result<(), SpeakerError> {
    let router = crate::server::metrics_router(move || metrics.encode());
    crate::server::spawn(addr, router).await.map_err(|source| SpeakerError::Metrics { addr, source })
}

/// The runner: one reader task per interface, one timer task, all sharing the engine.
#[derive(Debug)]
pub struct Speaker<L: Link> {
    engine: Arc<Mutex<Engine>>,
    links: Arc<Vec<L>>,
    wake: Arc<Notify>,
    metrics: Metrics,
    conflicts: Option<mpsc::UnboundedSender<ConflictReport>>,
}

/// Another host was seen using a VIP (Kubernetes mode reports it as an Event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictReport {
    pub vip: IpAddr,
    pub iface: String,
    pub other: Mac,
    /// `true`: we were announcing it already (and defend it); `false`: found while probing,
    /// so the VIP is not announced.
    pub announced: bool,
}

/// See [`Speaker::friends`].
#[derive(Debug, Clone)]
pub struct Friends(Arc<Mutex<Engine>>);

impl Friends {
    pub fn set(&self, macs: impl IntoIterator<Item = Mac>) {
        lock(&self.0).set_friends(macs);
    }
}

fn lock(e: &Mutex<Engine>) -> std::sync::MutexGuard<'_, Engine> {
    e.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn dispatch<L: Link>(links: &[L], out: Output, events: &mpsc::UnboundedSender<Event>) {
    let n = out.frames.len();
    let started = Instant::now();
    for (i, frame) in out.frames {
        if let Some(link) = links.get(i) {
            if let Err(e) = link.send(&frame).await {
                warn!(error = %e, "send failed");
            }
        }
    }
    if n >= 100 {
        info!(frames = n, elapsed_us = started.elapsed().as_micros() as u64, "sent a round of frames");
    }
    for ev in out.events {
        let _ = events.send(ev);
    }
}

impl<L: Link> Speaker<L> {
    pub fn new(ifaces: Vec<Iface>, links: Vec<L>, timing: Timing, metrics: Metrics) -> Self {
        Speaker {
            engine: Arc::new(Mutex::new(Engine::new(ifaces, timing, metrics.clone()))),
            links: Arc::new(links),
            wake: Arc::new(Notify::new()),
            metrics,
            conflicts: None,
        }
    }

    /// Sends every conflict to `tx` as well as to the log.
    pub fn report_conflicts(mut self, tx: mpsc::UnboundedSender<ConflictReport>) -> Self {
        self.conflicts = Some(tx);
        self
    }

    pub fn links(&self) -> &[L] {
        &self.links
    }

    /// A handle to set the MACs of fellow group members from another task: their frames
    /// for our VIPs are handovers, not conflicts.
    pub fn friends(&self) -> Friends {
        Friends(self.engine.clone())
    }

    /// Announces `vips` and answers for them until `shutdown`, or until a conflict that
    /// is not allowed stops it.
    pub async fn run(
        &self,
        vips: Vec<(IpAddr, usize)>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), SpeakerError> {
        let owned = vips.into_iter().map(|(vip, iface)| Owned { vip, iface, takeover: false }).collect();
        let (_tx, rx) = watch::channel(owned);
        self.run_owned(rx, true, shutdown).await
    }

    /// Announces whatever `owned` says this node owns now, adding and removing VIPs as it
    /// changes, until `shutdown`. `exit_on_conflict`: a conflict found while probing ends
    /// the run with an error (static mode); otherwise it is reported and the VIP waits.
    pub async fn run_owned(
        &self,
        mut owned: watch::Receiver<Vec<Owned>>,
        exit_on_conflict: bool,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), SpeakerError> {
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let mut tasks = Vec::new();
        for i in 0..self.links.len() {
            let (engine, links, tx) = (self.engine.clone(), self.links.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match links[i].recv(&mut buf).await {
                        Ok(n) => n,
                        Err(e) => {
                            warn!(error = %e, "receive failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let out = lock(&engine).on_frame(i, &buf[..n], Instant::now());
                    if !out.frames.is_empty() || !out.events.is_empty() {
                        dispatch(&links, out, &tx).await;
                    }
                }
            }));
        }
        {
            let (engine, links, tx, wake) = (self.engine.clone(), self.links.clone(), tx.clone(), self.wake.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = lock(&engine).next_deadline();
                    match next {
                        Some(t) => {
                            tokio::select! {
                                _ = tokio::time::sleep_until(t.into()) => {}
                                _ = wake.notified() => continue,
                            }
                        }
                        None => {
                            wake.notified().await;
                            continue;
                        }
                    }
                    let out = lock(&engine).on_tick(Instant::now());
                    dispatch(&links, out, &tx).await;
                }
            }));
        }
        let mut current: HashMap<IpAddr, usize> = HashMap::new();
        let first = owned.borrow_and_update().clone();
        let out = self.apply_owned(&mut current, &first);
        self.wake.notify_one();
        dispatch(&self.links, out, &tx).await;
        tokio::pin!(shutdown);
        let mut owned_open = true;
        let result = loop {
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                ev = rx.recv() => {
                    let Some(ev) = ev else { break Ok(()) };
                    if let Some(err) = self.on_event(ev) {
                        if exit_on_conflict {
                            break Err(err);
                        }
                    }
                }
                r = owned.changed(), if owned_open => {
                    if r.is_err() {
                        // Nobody will change the set any more: keep announcing it.
                        owned_open = false;
                        continue;
                    }
                    let list = owned.borrow_and_update().clone();
                    let out = self.apply_owned(&mut current, &list);
                    self.wake.notify_one();
                    dispatch(&self.links, out, &tx).await;
                }
            }
        };
        for t in tasks {
            t.abort();
        }
        result
    }

    /// Makes the engine announce exactly `list`: removed VIPs stop at once, new ones start
    /// (probing first unless they are a takeover).
    fn apply_owned(&self, current: &mut HashMap<IpAddr, usize>, list: &[Owned]) -> Output {
        let now = Instant::now();
        let mut out = Output::default();
        let mut e = lock(&self.engine);
        let wanted: HashMap<IpAddr, &Owned> = list.iter().map(|o| (o.vip, o)).collect();
        current.retain(|vip, _| {
            let keep = wanted.contains_key(vip);
            if !keep {
                e.remove_vip(vip);
                info!(%vip, "no longer the owner: stopped answering");
            }
            keep
        });
        for o in list {
            if current.insert(o.vip, o.iface).is_none() {
                let r = e.add_vip(o.vip, o.iface, now, o.takeover);
                out.frames.extend(r.frames);
                out.events.extend(r.events);
                if o.takeover {
                    info!(vip = %o.vip, "took over");
                }
            }
        }
        out
    }

    fn on_event(&self, ev: Event) -> Option<SpeakerError> {
        let e = lock(&self.engine);
        match ev {
            Event::Announced { vip, iface } => {
                let name = e.iface(iface).name.clone();
                let n = e.owned().filter(|(_, i)| *i == iface).count();
                self.metrics.set_announced(&name, i64::try_from(n).unwrap_or(i64::MAX));
                info!(%vip, interface = %name, "announced");
                None
            }
            Event::Conflict { vip, iface, other, announced } => {
                let name = e.iface(iface).name.clone();
                warn!(%vip, interface = %name, other_mac = %other, announced, "address conflict: another host uses the VIP");
                if let Some(tx) = &self.conflicts {
                    let _ = tx.send(ConflictReport { vip, iface: name.clone(), other, announced });
                }
                (!announced).then_some(SpeakerError::Conflict { vip, iface: name, other })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use sys::MemLink;
    use wire::{ArpOp, Incoming};

    const NODE: Mac = Mac([2, 0, 0x5e, 0, 0, 0x11]);
    const CLIENT: Mac = Mac([0x3a, 0x1c, 0x52, 0x7e, 0x90, 1]);

    #[tokio::test(flavor = "current_thread")]
    async fn runner_answers_over_the_in_memory_link() {
        let timing = Timing { probe_timeout: Duration::from_millis(200), ..Timing::default() };
        let sp = Arc::new(Speaker::new(
            vec![Iface { name: "mem0".into(), mac: NODE }],
            vec![MemLink::default()],
            timing,
            Metrics::new(),
        ));
        let vip: std::net::Ipv4Addr = "192.0.2.100".parse().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let run = {
            let sp = sp.clone();
            tokio::spawn(async move {
                sp.run(vec![(IpAddr::V4(vip), 0)], async {
                    let _ = stop_rx.await;
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let req = wire::arp(Mac::BROADCAST, ArpOp::Request, CLIENT, "192.0.2.1".parse().unwrap(), Mac::ZERO, vip);
        sp.links()[0].inject(req);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let sent: Vec<Incoming> = sp.links()[0].sent().iter().map(|f| wire::parse(f).unwrap()).collect();
        assert!(matches!(sent[0], Incoming::Arp { ref sender_ip, .. } if sender_ip.is_unspecified()), "a probe first");
        assert!(
            sent.iter()
                .any(|f| matches!(f, Incoming::Arp { op: ArpOp::Reply, target_mac, .. } if *target_mac == CLIENT)),
            "the request was answered: {sent:?}"
        );
        stop_tx.send(()).unwrap();
        assert!(run.await.unwrap().is_ok());
    }

    #[test]
    fn vips_must_be_in_a_subnet() {
        let l = LinkInfo { name: "eth0".into(), index: 2, mac: NODE, subnets: vec!["192.0.2.0/24".parse().unwrap()] };
        let e = place_vips(std::slice::from_ref(&l), &["198.51.100.1".parse().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("198.51.100.1 is not in any subnet of eth0"), "{e}");
        assert!(e.to_string().contains("192.0.2.0/24 (eth0)"), "{e}");
        assert!(matches!(place_vips(std::slice::from_ref(&l), &[]), Err(SpeakerError::NoVips)));
        let dup = ["192.0.2.9".parse().unwrap(), "192.0.2.9".parse().unwrap()];
        assert!(matches!(place_vips(&[l], &dup), Err(SpeakerError::DuplicateVip(_))));
    }
}
