//! The speaker's decisions, as a pure state machine: frames and time in, frames and events
//! out. No sockets, no clock (every call takes `now`).
//!
//! Per VIP: `Probing` (RFC 5227 ARP probes / DAD-style NS; anyone else claiming the address
//! is a conflict) → `Announcing` (gratuitous burst: ARP request *and* reply, or unsolicited
//! NA with Override, at once and then every `garp_interval` for `garp_duration`) → `Owned`
//! (answers requests; optional periodic refresh). A conflict during probing leaves the VIP
//! unannounced unless `allow_conflicts`. Removing a VIP stops answering at once, silently.
//!
//! Virtual-MAC mode ([`Engine::set_virtual_macs`]): an owned VIP with a virtual MAC is
//! answered and announced with it (Ethernet source and ARP sender / NA target link-layer
//! address), and refreshed every `vmac_refresh` so switches keep it on our port. Probes
//! still go out from the interface's MAC. A frame claiming the VIP with its own virtual
//! MAC is a group member (a handover), not a conflict; any other use of a virtual MAC is
//! a collision ([`Event::MacCollision`]).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::metrics::{Metrics, Proto};
use super::wire::{self, ArpOp, Drop, Incoming, Mac};

/// Timing and policy of announcements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Spacing of gratuitous rounds (Linux ignores neighbour updates within ~1 s of the last).
    pub garp_interval: Duration,
    /// How long the burst lasts after gaining a VIP.
    pub garp_duration: Duration,
    /// Periodic re-announcement once the burst is over (off by default).
    pub refresh_interval: Option<Duration>,
    /// How long to listen for another owner before the first announcement.
    pub probe_timeout: Duration,
    /// Announce even when another host answers the probe.
    pub allow_conflicts: bool,
    /// Virtual-MAC mode: a frame from each owned VIP's MAC this often, so switches keep
    /// its port (shorter than the common 300 s FDB ageing).
    pub vmac_refresh: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            garp_interval: Duration::from_millis(1100),
            garp_duration: Duration::from_secs(5),
            refresh_interval: None,
            probe_timeout: Duration::from_millis(200),
            allow_conflicts: false,
            vmac_refresh: Duration::from_secs(60),
        }
    }
}

/// One interface the speaker answers on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub mac: Mac,
}

/// Something worth telling the operator (logs) or the caller (static mode exits on conflict).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Another host uses the VIP. `announced`: the VIP was (or will be) announced anyway.
    Conflict { vip: IpAddr, iface: usize, other: Mac, announced: bool },
    /// Probing found nobody; the VIP is now announced.
    Announced { vip: IpAddr, iface: usize },
    /// `mac` sent as a VIP we own or watch (an ARP sender, a neighbour advertisement).
    Seen { vip: IpAddr, iface: usize, mac: Mac },
    /// Another host uses `mac`, the virtual MAC of `vip`: it sent a frame from it, or
    /// named it as its own, claiming `claims` (another address, or none).
    MacCollision { vip: IpAddr, iface: usize, mac: Mac, claims: Option<IpAddr> },
}

/// What the caller must do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Output {
    /// Frames to send, with the interface index.
    pub frames: Vec<(usize, Vec<u8>)>,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Probing { second_probe: Option<Instant>, deadline: Instant },
    Conflict,
    Announcing { next: Instant, rounds_left: u32 },
    Owned { next_refresh: Option<Instant>, last_defend: Option<Instant> },
}

#[derive(Debug, Clone)]
struct Vip {
    iface: usize,
    state: State,
    /// The MAC it is announced with: its virtual MAC, or `None` for the interface's.
    vmac: Option<Mac>,
}

/// The speaker state machine.
#[derive(Debug)]
pub struct Engine {
    ifaces: Vec<Iface>,
    timing: Timing,
    vips: HashMap<IpAddr, Vip>,
    metrics: Metrics,
    /// MACs of fellow group members: their frames for our VIPs are handovers, not conflicts.
    friends: std::collections::HashSet<Mac>,
    /// VIPs whose answerers are reported ([`Event::Seen`]) although we do not own them.
    watched: std::collections::HashSet<IpAddr>,
    /// Virtual-MAC mode: every VIP's MAC that this node may announce, and back.
    virtual_macs: HashMap<IpAddr, Mac>,
    by_mac: HashMap<Mac, IpAddr>,
}

/// RFC 5227 DEFEND_INTERVAL: at most one defence per VIP per 10 s.
const DEFEND_INTERVAL: Duration = Duration::from_secs(10);

impl Engine {
    pub fn new(ifaces: Vec<Iface>, timing: Timing, metrics: Metrics) -> Self {
        Engine {
            ifaces,
            timing,
            vips: HashMap::new(),
            metrics,
            friends: Default::default(),
            watched: Default::default(),
            virtual_macs: HashMap::new(),
            by_mac: HashMap::new(),
        }
    }

    pub fn iface(&self, i: usize) -> Option<&Iface> {
        self.ifaces.get(i)
    }
    pub fn ifaces(&self) -> &[Iface] {
        &self.ifaces
    }

    /// Sets the virtual MACs of the VIPs in virtual-MAC mode (owned or not: a frame from
    /// any of them by another host is a collision). A VIP being announced keeps the MAC it
    /// was added with until it is removed and added again.
    pub fn set_virtual_macs(&mut self, macs: HashMap<IpAddr, Mac>) {
        self.by_mac = macs.iter().map(|(v, m)| (*m, *v)).collect();
        self.virtual_macs = macs;
    }

    /// The virtual MAC `vip` would be announced with, if it is in virtual-MAC mode.
    pub fn virtual_mac(&self, vip: &IpAddr) -> Option<Mac> {
        self.virtual_macs.get(vip).copied()
    }

    /// The MAC an announced VIP is answered with (its virtual MAC or the interface's).
    pub fn announced_mac(&self, vip: &IpAddr) -> Option<Mac> {
        let v = self.vips.get(vip)?;
        v.vmac.or_else(|| self.ifaces.get(v.iface).map(|i| i.mac))
    }

    /// VIPs currently answered for (announcing or owned).
    pub fn owned(&self) -> impl Iterator<Item = (IpAddr, usize)> + '_ {
        self.vips
            .iter()
            .filter(|(_, v)| matches!(v.state, State::Announcing { .. } | State::Owned { .. }))
            .map(|(ip, v)| (*ip, v.iface))
    }

    fn rounds(&self) -> u32 {
        let (d, i) = (self.timing.garp_duration.as_nanos(), self.timing.garp_interval.as_nanos().max(1));
        u32::try_from(d.div_ceil(i).max(1)).unwrap_or(u32::MAX)
    }

    /// Starts announcing `vip` on interface `iface`. `takeover`: the VIP was owned by a
    /// member of our group that is gone, so announce at once without probing.
    /// In virtual-MAC mode it is announced with its virtual MAC.
    pub fn add_vip(&mut self, vip: IpAddr, iface: usize, now: Instant, takeover: bool) -> Output {
        let vmac = self.virtual_mac(&vip);
        self.add_vip_as(vip, iface, vmac, now, takeover)
    }

    /// [`Engine::add_vip`], announced with `vmac` (`None`: the interface's MAC).
    pub fn add_vip_as(&mut self, vip: IpAddr, iface: usize, vmac: Option<Mac>, now: Instant, takeover: bool) -> Output {
        let mut out = Output::default();
        // An interface we do not have (a caller's bug) gets nothing, rather than a panic.
        if self.vips.contains_key(&vip) || iface >= self.ifaces.len() {
            return out;
        }
        let state = if takeover || self.timing.probe_timeout.is_zero() {
            self.vips.insert(vip, Vip { iface, state: State::Owned { next_refresh: None, last_defend: None }, vmac });
            self.start_burst(vip, now, &mut out);
            return out;
        } else {
            self.probe(vip, iface, &mut out);
            State::Probing {
                second_probe: Some(now + self.timing.probe_timeout / 2),
                deadline: now + self.timing.probe_timeout,
            }
        };
        self.vips.insert(vip, Vip { iface, state, vmac });
        out
    }

    /// Sets the MACs of the other members of our group.
    pub fn set_friends(&mut self, macs: impl IntoIterator<Item = Mac>) {
        self.friends = macs.into_iter().collect();
    }

    /// Sets the VIPs whose answerers are reported as [`Event::Seen`] besides our own.
    pub fn set_watched(&mut self, vips: impl IntoIterator<Item = IpAddr>) {
        self.watched = vips.into_iter().collect();
    }

    /// Stops answering for `vip` at once; no goodbye traffic.
    pub fn remove_vip(&mut self, vip: &IpAddr) -> bool {
        self.vips.remove(vip).is_some()
    }

    fn probe(&self, vip: IpAddr, iface: usize, out: &mut Output) {
        let mac = self.ifaces[iface].mac;
        let name = &self.ifaces[iface].name;
        match vip {
            IpAddr::V4(v) => {
                out.frames.push((iface, wire::arp_probe(mac, v)));
                self.metrics.probe(name, Proto::Arp);
            }
            IpAddr::V6(v) => {
                out.frames.push((iface, wire::dad_probe(mac, v)));
                self.metrics.probe(name, Proto::Ndp);
            }
        }
    }

    fn start_burst(&mut self, vip: IpAddr, now: Instant, out: &mut Output) {
        let rounds = self.rounds();
        let Some(v) = self.vips.get(&vip) else { return };
        let iface = v.iface;
        self.garp(vip, iface, out);
        let state = if rounds > 1 {
            State::Announcing { next: now + self.timing.garp_interval, rounds_left: rounds - 1 }
        } else {
            State::Owned { next_refresh: self.refresh_after(&vip, now), last_defend: None }
        };
        if let Some(v) = self.vips.get_mut(&vip) {
            v.state = state;
        }
    }

    /// When an owned VIP is announced again: the configured refresh, and in virtual-MAC
    /// mode at least every `vmac_refresh`.
    fn refresh_after(&self, vip: &IpAddr, now: Instant) -> Option<Instant> {
        let vmac = self.vips.get(vip).is_some_and(|v| v.vmac.is_some()).then_some(self.timing.vmac_refresh);
        [self.timing.refresh_interval, vmac].into_iter().flatten().min().map(|d| now + d)
    }

    /// The MAC `vip` is answered with on `iface`.
    fn answer_mac(&self, vip: &IpAddr, iface: usize) -> Mac {
        self.vips.get(vip).and_then(|v| v.vmac).unwrap_or(self.ifaces[iface].mac)
    }

    fn garp(&self, vip: IpAddr, iface: usize, out: &mut Output) {
        let mac = self.answer_mac(&vip, iface);
        let name = &self.ifaces[iface].name;
        match vip {
            IpAddr::V4(v) => {
                out.frames.push((iface, wire::garp_request(mac, v)));
                out.frames.push((iface, wire::garp_reply(mac, v)));
                self.metrics.gratuitous(name, Proto::Arp, 2);
            }
            IpAddr::V6(v) => {
                out.frames.push((iface, wire::neighbor_advert(mac, v, None)));
                self.metrics.gratuitous(name, Proto::Ndp, 1);
            }
        }
    }

    /// The earliest time `on_tick` has work to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.vips
            .values()
            .filter_map(|v| match v.state {
                State::Probing { second_probe, deadline } => Some(second_probe.map_or(deadline, |s| s.min(deadline))),
                State::Announcing { next, .. } => Some(next),
                State::Owned { next_refresh, .. } => next_refresh,
                State::Conflict => None,
            })
            .min()
    }

    /// Advances timers: second probes, end of probing, burst rounds, refreshes.
    pub fn on_tick(&mut self, now: Instant) -> Output {
        let mut out = Output::default();
        let due: Vec<IpAddr> = self
            .vips
            .iter()
            .filter(|(_, v)| match v.state {
                State::Probing { second_probe, deadline } => second_probe.is_some_and(|s| s <= now) || deadline <= now,
                State::Announcing { next, .. } => next <= now,
                State::Owned { next_refresh, .. } => next_refresh.is_some_and(|r| r <= now),
                State::Conflict => false,
            })
            .map(|(ip, _)| *ip)
            .collect();
        for vip in due {
            let Some(v) = self.vips.get(&vip).cloned() else { continue };
            match v.state {
                State::Probing { deadline, .. } if deadline <= now => {
                    out.events.push(Event::Announced { vip, iface: v.iface });
                    self.start_burst(vip, now, &mut out);
                }
                State::Probing { deadline, .. } => {
                    self.probe(vip, v.iface, &mut out);
                    self.set(vip, State::Probing { second_probe: None, deadline });
                }
                State::Announcing { rounds_left, .. } => {
                    self.garp(vip, v.iface, &mut out);
                    let next = if rounds_left > 1 {
                        State::Announcing { next: now + self.timing.garp_interval, rounds_left: rounds_left - 1 }
                    } else {
                        State::Owned { next_refresh: self.refresh_after(&vip, now), last_defend: None }
                    };
                    self.set(vip, next);
                }
                State::Owned { last_defend, .. } => {
                    self.garp(vip, v.iface, &mut out);
                    let next_refresh = self.refresh_after(&vip, now);
                    self.set(vip, State::Owned { next_refresh, last_defend });
                }
                State::Conflict => {}
            }
        }
        out
    }

    fn set(&mut self, vip: IpAddr, state: State) {
        if let Some(v) = self.vips.get_mut(&vip) {
            v.state = state;
        }
    }

    fn is_ours(&self, mac: Mac) -> bool {
        self.ifaces.iter().any(|i| i.mac == mac)
    }

    /// Handles a received frame on interface `iface`.
    pub fn on_frame(&mut self, iface: usize, frame: &[u8], now: Instant) -> Output {
        let mut out = Output::default();
        let Some(name) = self.ifaces.get(iface).map(|i| i.name.clone()) else { return out };
        let incoming = match wire::parse(frame) {
            Ok(i) => i,
            Err(reason) => {
                self.metrics.drop(&name, reason);
                return out;
            }
        };
        let eth_src = match &incoming {
            Incoming::Arp { eth_src, .. }
            | Incoming::NeighborSolicit { eth_src, .. }
            | Incoming::NeighborAdvert { eth_src, .. } => *eth_src,
        };
        if self.is_ours(eth_src) {
            self.metrics.drop(&name, Drop::OwnFrame);
            return out;
        }
        let claim = match &incoming {
            Incoming::Arp { sender_mac, sender_ip, .. } if !sender_ip.is_unspecified() => {
                Some((IpAddr::V4(*sender_ip), *sender_mac))
            }
            Incoming::NeighborAdvert { eth_src, target, target_lladdr, .. } => {
                Some((IpAddr::V6(*target), target_lladdr.unwrap_or(*eth_src)))
            }
            _ => None,
        };
        if let Some((vip, mac)) = claim {
            if self.watched.contains(&vip) || self.vips.contains_key(&vip) {
                out.events.push(Event::Seen { vip, iface, mac });
            }
        }
        if !self.by_mac.is_empty() {
            self.collisions(iface, &incoming, claim.map(|(ip, _)| ip), &mut out);
        }
        let result = match incoming {
            Incoming::Arp { op, sender_mac, sender_ip, target_ip, .. } => {
                self.on_arp(iface, op, sender_mac, sender_ip, target_ip, now, &mut out)
            }
            Incoming::NeighborSolicit { eth_src, src, target, source_lladdr, .. } => {
                self.on_ns(iface, eth_src, src, target, source_lladdr, &mut out)
            }
            Incoming::NeighborAdvert { eth_src, target, target_lladdr, .. } => {
                let other = target_lladdr.unwrap_or(eth_src);
                self.claimed_by_other(IpAddr::V6(target), iface, other, now, Proto::Ndp, &mut out);
                Err(Drop::NotARequest)
            }
        };
        if let Err(reason) = result {
            self.metrics.drop(&name, reason);
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn on_arp(
        &mut self,
        iface: usize,
        op: ArpOp,
        sender_mac: Mac,
        sender_ip: Ipv4Addr,
        target_ip: Ipv4Addr,
        now: Instant,
        out: &mut Output,
    ) -> Result<(), Drop> {
        // Anyone sending as one of our VIPs, or probing for one we are probing, conflicts.
        if !sender_ip.is_unspecified() {
            self.claimed_by_other(IpAddr::V4(sender_ip), iface, sender_mac, now, Proto::Arp, out);
        } else if op == ArpOp::Request {
            let vip = IpAddr::V4(target_ip);
            if matches!(self.vips.get(&vip), Some(Vip { state: State::Probing { .. }, iface: i, .. }) if *i == iface) {
                self.conflict(vip, iface, sender_mac, Proto::Arp, out);
            }
        }
        // A gratuitous request (sender = target) announces, it does not ask.
        if op != ArpOp::Request || sender_ip == target_ip {
            return Err(Drop::NotARequest);
        }
        let name = &self.ifaces[iface].name;
        self.metrics.request(name, Proto::Arp);
        let vip = IpAddr::V4(target_ip);
        self.answerable(vip, iface)?;
        let mac = self.answer_mac(&vip, iface);
        out.frames.push((iface, wire::arp_reply(mac, target_ip, sender_mac, sender_ip)));
        self.metrics.reply(name, Proto::Arp);
        Ok(())
    }

    fn on_ns(
        &mut self,
        iface: usize,
        eth_src: Mac,
        src: Ipv6Addr,
        target: Ipv6Addr,
        source_lladdr: Option<Mac>,
        out: &mut Output,
    ) -> Result<(), Drop> {
        let vip = IpAddr::V6(target);
        if src.is_unspecified() {
            // Someone else's DAD for an address we are probing: both want it.
            if matches!(self.vips.get(&vip), Some(Vip { state: State::Probing { .. }, iface: i, .. }) if *i == iface) {
                self.conflict(vip, iface, eth_src, Proto::Ndp, out);
            }
        }
        let name = &self.ifaces[iface].name;
        self.metrics.request(name, Proto::Ndp);
        self.answerable(vip, iface)?;
        let mac = self.answer_mac(&vip, iface);
        let to = if src.is_unspecified() { None } else { Some((src, source_lladdr.unwrap_or(eth_src))) };
        out.frames.push((iface, wire::neighbor_advert(mac, target, to)));
        self.metrics.reply(name, Proto::Ndp);
        Ok(())
    }

    /// A frame from (or naming) one of the virtual MACs that does not claim that MAC's own
    /// VIP: another host uses the MAC.
    fn collisions(&self, iface: usize, incoming: &Incoming, claims: Option<IpAddr>, out: &mut Output) {
        let (eth_src, named) = match incoming {
            Incoming::Arp { eth_src, sender_mac, .. } => (*eth_src, Some(*sender_mac)),
            Incoming::NeighborSolicit { eth_src, source_lladdr, .. } => (*eth_src, *source_lladdr),
            Incoming::NeighborAdvert { eth_src, target_lladdr, .. } => (*eth_src, *target_lladdr),
        };
        for mac in [Some(eth_src), named.filter(|m| *m != eth_src)].into_iter().flatten() {
            if let Some(vip) = self.by_mac.get(&mac) {
                if claims != Some(*vip) {
                    self.metrics.mac_collision(&self.ifaces[iface].name);
                    out.events.push(Event::MacCollision { vip: *vip, iface, mac, claims });
                }
            }
        }
    }

    fn answerable(&self, vip: IpAddr, iface: usize) -> Result<(), Drop> {
        match self.vips.get(&vip) {
            None => Err(Drop::NotForUs),
            Some(v) if v.iface != iface => Err(Drop::WrongInterface),
            Some(Vip { state: State::Announcing { .. } | State::Owned { .. }, .. }) => Ok(()),
            Some(_) => Err(Drop::NotOwnedYet),
        }
    }

    /// Another host (`other`) sent as `vip`: a conflict while probing; while owning, a
    /// defence (one gratuitous round, at most every 10 s) and a report.
    fn claimed_by_other(
        &mut self,
        vip: IpAddr,
        iface: usize,
        other: Mac,
        now: Instant,
        proto: Proto,
        out: &mut Output,
    ) {
        let Some(v) = self.vips.get(&vip).cloned() else { return };
        if v.iface != iface {
            return;
        }
        // A fellow group member announcing one of our VIPs is a handover in progress (its
        // view of the group moved first): neither a conflict nor a reason to defend, which
        // would only make clients' caches flap between the two.
        if self.member_mac(&vip, other) {
            return;
        }
        match v.state {
            State::Probing { .. } => self.conflict(vip, iface, other, proto, out),
            State::Owned { next_refresh, last_defend } => {
                self.metrics.conflict(&self.ifaces[iface].name, proto);
                out.events.push(Event::Conflict { vip, iface, other, announced: true });
                if last_defend.is_none_or(|t| now.duration_since(t) >= DEFEND_INTERVAL) {
                    self.garp(vip, iface, out);
                    self.set(vip, State::Owned { next_refresh, last_defend: Some(now) });
                }
            }
            State::Announcing { .. } => {
                self.metrics.conflict(&self.ifaces[iface].name, proto);
                out.events.push(Event::Conflict { vip, iface, other, announced: true });
            }
            State::Conflict => {}
        }
    }

    /// `other`, seen claiming `vip`, is a member of our group: a fellow member's MAC, or
    /// the VIP's virtual MAC (planned now, or the one it was added with).
    fn member_mac(&self, vip: &IpAddr, other: Mac) -> bool {
        self.friends.contains(&other)
            || self.virtual_mac(vip) == Some(other)
            || self.vips.get(vip).is_some_and(|v| v.vmac == Some(other))
    }

    fn conflict(&mut self, vip: IpAddr, iface: usize, other: Mac, proto: Proto, out: &mut Output) {
        if self.member_mac(&vip, other) {
            return;
        }
        self.metrics.conflict(&self.ifaces[iface].name, proto);
        let announced = self.timing.allow_conflicts;
        out.events.push(Event::Conflict { vip, iface, other, announced });
        if !announced {
            self.set(vip, State::Conflict);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: Mac = Mac([2, 0, 0x5e, 0, 0, 0x11]);
    const OTHER: Mac = Mac([2, 0, 0x5e, 0, 0, 0x22]);
    const CLIENT: Mac = Mac([0x3a, 0x1c, 0x52, 0x7e, 0x90, 1]);

    fn v4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }
    fn engine(timing: Timing) -> (Engine, Metrics) {
        let m = Metrics::new();
        let e = Engine::new(
            vec![
                Iface { name: "eth0".into(), mac: NODE },
                Iface { name: "eth1".into(), mac: Mac([2, 0, 0, 0, 0, 0x33]) },
            ],
            timing,
            m.clone(),
        );
        (e, m)
    }
    fn parsed(out: &Output) -> Vec<Incoming> {
        out.frames.iter().map(|(_, f)| wire::parse(f).unwrap()).collect()
    }

    #[test]
    fn probes_then_bursts_then_answers() {
        let (mut e, m) = engine(Timing::default());
        let t0 = Instant::now();
        let vip = IpAddr::V4(v4("192.0.2.100"));
        let out = e.add_vip(vip, 0, t0, false);
        assert!(
            matches!(parsed(&out)[..], [Incoming::Arp { sender_ip, .. }] if sender_ip.is_unspecified()),
            "first a probe"
        );
        let req = wire::arp(Mac::BROADCAST, ArpOp::Request, CLIENT, v4("192.0.2.1"), Mac::ZERO, v4("192.0.2.100"));
        assert!(e.on_frame(0, &req, t0).frames.is_empty(), "no answers while probing");
        assert_eq!(m.drops("eth0", Drop::NotOwnedYet), 1);
        let mid = e.on_tick(t0 + Duration::from_millis(100));
        assert_eq!(mid.frames.len(), 1, "a second probe half-way through the window");
        let out = e.on_tick(t0 + Duration::from_millis(200));
        assert_eq!(out.events, vec![Event::Announced { vip, iface: 0 }]);
        let ops: Vec<ArpOp> = parsed(&out)
            .into_iter()
            .map(|i| match i {
                Incoming::Arp { op, .. } => op,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(ops, vec![ArpOp::Request, ArpOp::Reply], "the burst sends a gratuitous request and reply");
        let ans = e.on_frame(0, &req, t0 + Duration::from_millis(201));
        assert_eq!(
            parsed(&ans),
            vec![Incoming::Arp {
                eth_src: NODE,
                op: ArpOp::Reply,
                sender_mac: NODE,
                sender_ip: v4("192.0.2.100"),
                target_mac: CLIENT,
                target_ip: v4("192.0.2.1")
            }]
        );
        // The burst: rounds at 0, 1.1, 2.2, 3.3, 4.4 s after announcing, then quiet.
        let start = t0 + Duration::from_millis(200);
        let mut rounds = 1;
        let mut t = start;
        while let Some(d) = e.next_deadline() {
            t = d;
            if !e.on_tick(t).frames.is_empty() {
                rounds += 1;
            }
        }
        assert_eq!(rounds, 5, "5 s at 1.1 s spacing is 5 rounds");
        assert_eq!(t - start, Duration::from_millis(4400));
        assert_eq!(m.gratuitous_count("eth0", Proto::Arp), 10);
    }

    #[test]
    fn requests_elsewhere_are_dropped_with_reasons() {
        let (mut e, m) = engine(Timing { probe_timeout: Duration::ZERO, ..Timing::default() });
        let t0 = Instant::now();
        e.add_vip(IpAddr::V4(v4("192.0.2.100")), 0, t0, false);
        let other = wire::arp(Mac::BROADCAST, ArpOp::Request, CLIENT, v4("192.0.2.1"), Mac::ZERO, v4("192.0.2.200"));
        assert!(e.on_frame(0, &other, t0).frames.is_empty());
        assert_eq!(m.drops("eth0", Drop::NotForUs), 1);
        let ours = wire::arp(Mac::BROADCAST, ArpOp::Request, CLIENT, v4("192.0.2.1"), Mac::ZERO, v4("192.0.2.100"));
        assert!(e.on_frame(1, &ours, t0).frames.is_empty(), "the VIP lives on eth0, not eth1");
        assert_eq!(m.drops("eth1", Drop::WrongInterface), 1);
        let reply = wire::arp(NODE, ArpOp::Reply, CLIENT, v4("192.0.2.1"), NODE, v4("192.0.2.100"));
        assert!(e.on_frame(0, &reply, t0).frames.is_empty());
        assert_eq!(m.drops("eth0", Drop::NotARequest), 1);
        let own = wire::garp_request(NODE, v4("192.0.2.100"));
        assert!(e.on_frame(0, &own, t0).frames.is_empty());
        assert_eq!(m.drops("eth0", Drop::OwnFrame), 1);
        assert!(e.on_frame(0, &[1, 2, 3], t0).frames.is_empty());
        assert_eq!(m.drops("eth0", Drop::Malformed), 1);
        e.remove_vip(&IpAddr::V4(v4("192.0.2.100")));
        assert!(e.on_frame(0, &ours, t0).frames.is_empty(), "a removed VIP is not answered, at once");
        assert_eq!(e.next_deadline(), None, "and nothing more is sent for it");
    }

    #[test]
    fn ndp_answers_unicast_and_dad() {
        let (mut e, _) = engine(Timing { probe_timeout: Duration::ZERO, ..Timing::default() });
        let t0 = Instant::now();
        let vip = v6("2001:db8::100");
        let burst = e.add_vip(IpAddr::V6(vip), 0, t0, false);
        assert!(matches!(parsed(&burst)[..], [Incoming::NeighborAdvert { solicited: false, override_flag: true, .. }]));
        let ns = wire::neighbor_solicit(CLIENT, v6("2001:db8::1"), vip);
        let out = e.on_frame(0, &ns, t0);
        assert_eq!(&out.frames[0].1[0..6], &CLIENT.0, "a solicited NA is unicast to the asker");
        assert!(matches!(
            parsed(&out)[..],
            [Incoming::NeighborAdvert { solicited: true, override_flag: true, target_lladdr: Some(NODE), .. }]
        ));
        let dad = wire::dad_probe(CLIENT, vip);
        let out = e.on_frame(0, &dad, t0);
        assert!(
            matches!(parsed(&out)[..], [Incoming::NeighborAdvert { solicited: false, .. }]),
            "a DAD probe is answered to all-nodes"
        );
    }

    #[test]
    fn conflicts_while_probing_stop_the_announcement() {
        let (mut e, m) = engine(Timing::default());
        let t0 = Instant::now();
        let a = IpAddr::V4(v4("192.0.2.100"));
        e.add_vip(a, 0, t0, false);
        let answer = wire::arp(NODE, ArpOp::Reply, OTHER, v4("192.0.2.100"), NODE, Ipv4Addr::UNSPECIFIED);
        let out = e.on_frame(0, &answer, t0 + Duration::from_millis(5));
        assert_eq!(not_seen(&out), vec![Event::Conflict { vip: a, iface: 0, other: OTHER, announced: false }]);
        let later = e.on_tick(t0 + Duration::from_secs(1));
        assert!(later.frames.is_empty() && later.events.is_empty(), "a conflicting VIP is never announced");
        assert_eq!(m.conflicts("eth0", Proto::Arp), 1);
        // IPv6: an NA for the target during DAD.
        let b = IpAddr::V6(v6("2001:db8::100"));
        e.add_vip(b, 0, t0, false);
        let na = wire::neighbor_advert(OTHER, v6("2001:db8::100"), None);
        let out = e.on_frame(0, &na, t0);
        assert!(matches!(not_seen(&out)[..], [Event::Conflict { other: OTHER, .. }]));
        // Simultaneous probes: someone else's ARP probe for the same VIP.
        let c = IpAddr::V4(v4("192.0.2.101"));
        e.add_vip(c, 0, t0, false);
        let out = e.on_frame(0, &wire::arp_probe(OTHER, v4("192.0.2.101")), t0);
        assert!(matches!(not_seen(&out)[..], [Event::Conflict { other: OTHER, .. }]));
    }

    #[test]
    fn allow_conflicts_announces_anyway_and_owners_defend() {
        let (mut e, _) = engine(Timing { allow_conflicts: true, ..Timing::default() });
        let t0 = Instant::now();
        let a = IpAddr::V4(v4("192.0.2.100"));
        e.add_vip(a, 0, t0, false);
        let answer = wire::garp_reply(OTHER, v4("192.0.2.100"));
        let out = e.on_frame(0, &answer, t0);
        assert!(matches!(not_seen(&out)[..], [Event::Conflict { announced: true, .. }]));
        let out = e.on_tick(t0 + Duration::from_millis(200));
        assert!(!out.frames.is_empty(), "announced despite the conflict");
        let (mut e, _) =
            engine(Timing { probe_timeout: Duration::ZERO, garp_duration: Duration::ZERO, ..Timing::default() });
        e.add_vip(a, 0, t0, false);
        let out = e.on_frame(0, &answer, t0);
        assert_eq!(out.frames.len(), 2, "an owner defends with one gratuitous round");
        let out = e.on_frame(0, &answer, t0 + Duration::from_secs(1));
        assert!(out.frames.is_empty(), "but not more than once per 10 s");
    }

    #[test]
    fn group_members_are_not_conflicts() {
        let (mut e, m) = engine(Timing::default());
        e.set_friends([OTHER]);
        let t0 = Instant::now();
        let a = IpAddr::V4(v4("192.0.2.100"));
        e.add_vip(a, 0, t0, false);
        let out = e.on_frame(0, &wire::garp_reply(OTHER, v4("192.0.2.100")), t0);
        assert!(not_seen(&out).is_empty(), "a fellow member's announcement is a handover, not a conflict");
        assert!(not_seen(&e.on_frame(0, &wire::arp_probe(OTHER, v4("192.0.2.100")), t0)).is_empty());
        assert_eq!(m.conflicts("eth0", Proto::Arp), 0);
        let stranger = Mac([2, 0, 0x5e, 0, 0, 0x99]);
        assert!(!not_seen(&e.on_frame(0, &wire::garp_reply(stranger, v4("192.0.2.100")), t0)).is_empty());
    }

    #[test]
    fn a_members_announcement_while_we_own_is_a_handover() {
        // Owned (no probe, no burst left): before, a fellow member's gratuitous ARP during a
        // handover raised a conflict and a defending round, so clients flapped between us.
        for takeover in [true, false] {
            let t = Timing { probe_timeout: Duration::ZERO, garp_duration: Duration::ZERO, ..Timing::default() };
            let (mut e, m) = engine(t);
            e.set_friends([OTHER]);
            let t0 = Instant::now();
            let vip = IpAddr::V4(v4("192.0.2.100"));
            e.add_vip(vip, 0, t0, takeover);
            assert!(e.owned().any(|(v, _)| v == vip), "the VIP is ours");
            for frame in [wire::garp_reply(OTHER, v4("192.0.2.100")), wire::garp_request(OTHER, v4("192.0.2.100"))] {
                let out = e.on_frame(0, &frame, t0 + Duration::from_millis(50));
                assert!(not_seen(&out).is_empty(), "no AddressConflict for a fellow member: {:?}", not_seen(&out));
                assert!(out.frames.is_empty(), "no defending burst against a fellow member");
            }
            let na = wire::neighbor_advert(OTHER, v6("2001:db8::100"), None);
            e.add_vip(IpAddr::V6(v6("2001:db8::100")), 0, t0, takeover);
            let out = e.on_frame(0, &na, t0 + Duration::from_millis(50));
            assert!(not_seen(&out).is_empty() && out.frames.is_empty(), "the same for an unsolicited NA");
            assert_eq!(m.conflicts("eth0", Proto::Arp) + m.conflicts("eth0", Proto::Ndp), 0);
        }
    }
    /// The events but sightings (which every frame claiming one of our VIPs makes).
    fn not_seen(out: &Output) -> Vec<Event> {
        out.events.iter().filter(|e| !matches!(e, Event::Seen { .. })).cloned().collect()
    }

    #[test]
    fn whoever_sends_as_an_owned_or_watched_vip_is_seen() {
        let (mut e, _) = engine(Timing::default());
        let t0 = Instant::now();
        let owned = IpAddr::V4(v4("192.0.2.100"));
        let watched = IpAddr::V4(v4("192.0.2.101"));
        let v6w = IpAddr::V6(v6("2001:db8::101"));
        e.add_vip(owned, 0, t0, true);
        e.set_watched([watched, v6w]);
        let seen = |out: &Output| -> Vec<Event> {
            out.events.iter().filter(|e| matches!(e, Event::Seen { .. })).cloned().collect()
        };
        // A fellow member's gratuitous ARP for a VIP we watch, a stranger's for ours, an NA.
        let out = e.on_frame(0, &wire::garp_reply(OTHER, v4("192.0.2.101")), t0);
        assert_eq!(seen(&out), vec![Event::Seen { vip: watched, iface: 0, mac: OTHER }]);
        let out = e.on_frame(0, &wire::garp_reply(OTHER, v4("192.0.2.100")), t0);
        assert_eq!(seen(&out), vec![Event::Seen { vip: owned, iface: 0, mac: OTHER }]);
        let out = e.on_frame(0, &wire::neighbor_advert(OTHER, v6("2001:db8::101"), None), t0);
        assert_eq!(seen(&out), vec![Event::Seen { vip: v6w, iface: 0, mac: OTHER }]);
        // Not: an address nobody asked about, a request that only asks, our own frames.
        assert!(seen(&e.on_frame(0, &wire::garp_reply(OTHER, v4("192.0.2.50")), t0)).is_empty());
        assert!(seen(&e.on_frame(0, &wire::arp_probe(OTHER, v4("192.0.2.101")), t0)).is_empty());
        assert!(seen(&e.on_frame(0, &wire::garp_reply(NODE, v4("192.0.2.101")), t0)).is_empty());
        e.set_watched([]);
        assert!(seen(&e.on_frame(0, &wire::garp_reply(OTHER, v4("192.0.2.101")), t0)).is_empty());
    }

    #[test]
    fn virtual_macs_answer_announce_refresh_and_collide() {
        const VMAC: Mac = Mac([0x42, 0, 192, 0, 2, 100]);
        const VMAC6: Mac = Mac([0x62, 0, 0, 0, 1, 0]);
        let t = Timing { probe_timeout: Duration::ZERO, garp_duration: Duration::ZERO, ..Timing::default() };
        let (mut e, m) = engine(t);
        let vip = IpAddr::V4(v4("192.0.2.100"));
        let vip6 = IpAddr::V6(v6("2001:db8::100"));
        let plain = IpAddr::V4(v4("192.0.2.101"));
        e.set_virtual_macs(HashMap::from([(vip, VMAC), (vip6, VMAC6)]));
        let t0 = Instant::now();
        // The burst: Ethernet source and sender address are the virtual MAC.
        let out = e.add_vip(vip, 0, t0, true);
        assert!(!out.frames.is_empty());
        for (_, f) in &out.frames {
            assert_eq!(&f[6..12], &VMAC.0, "Ethernet source");
            assert!(matches!(wire::parse(f).unwrap(), Incoming::Arp { sender_mac: VMAC, .. }));
        }
        assert_eq!(e.announced_mac(&vip), Some(VMAC));
        let req = wire::arp(Mac::BROADCAST, ArpOp::Request, CLIENT, v4("192.0.2.1"), Mac::ZERO, v4("192.0.2.100"));
        let ans = e.on_frame(0, &req, t0);
        assert!(matches!(parsed(&ans)[..], [Incoming::Arp { eth_src: VMAC, sender_mac: VMAC, op: ArpOp::Reply, .. }]));
        // IPv6: the NA's source and target link-layer address.
        let out = e.add_vip(vip6, 0, t0, true);
        assert!(matches!(
            parsed(&out)[..],
            [Incoming::NeighborAdvert { eth_src: VMAC6, target_lladdr: Some(VMAC6), .. }]
        ));
        let ns = wire::neighbor_solicit(CLIENT, v6("2001:db8::1"), v6("2001:db8::100"));
        assert!(matches!(
            parsed(&e.on_frame(0, &ns, t0))[..],
            [Incoming::NeighborAdvert { target_lladdr: Some(VMAC6), .. }]
        ));
        // A VIP without a virtual MAC keeps the interface's.
        e.add_vip(plain, 0, t0, true);
        assert_eq!(e.announced_mac(&plain), Some(NODE));
        // The switch's entry is refreshed every vmac_refresh (the plain VIP has no refresh).
        assert_eq!(e.next_deadline(), Some(t0 + Duration::from_secs(60)));
        let refresh = e.on_tick(t0 + Duration::from_secs(60));
        assert_eq!(refresh.frames.len(), 3, "ARP request + reply for the v4 VIP, one NA for the v6 VIP");
        assert!(refresh.frames.iter().all(|(_, f)| f[6..12] == VMAC.0 || f[6..12] == VMAC6.0));
        // Another member announcing the VIP with its virtual MAC is a handover.
        let out = e.on_frame(0, &wire::garp_reply(VMAC, v4("192.0.2.100")), t0);
        assert!(not_seen(&out).is_empty() && out.frames.is_empty(), "{:?}", out.events);
        // Anyone using a virtual MAC for another address (or none) collides with it.
        let out = e.on_frame(0, &wire::garp_reply(VMAC, v4("192.0.2.77")), t0);
        assert_eq!(
            not_seen(&out),
            vec![Event::MacCollision { vip, iface: 0, mac: VMAC, claims: Some(IpAddr::V4(v4("192.0.2.77"))) }]
        );
        let out = e.on_frame(0, &wire::neighbor_solicit(VMAC6, v6("2001:db8::9"), v6("2001:db8::1")), t0);
        assert_eq!(not_seen(&out), vec![Event::MacCollision { vip: vip6, iface: 0, mac: VMAC6, claims: None }]);
        assert_eq!(m.mac_collisions("eth0"), 2);
        // A stranger with its own MAC claiming the VIP is still an address conflict.
        let out = e.on_frame(0, &wire::garp_reply(OTHER, v4("192.0.2.100")), t0);
        assert!(matches!(not_seen(&out)[..], [Event::Conflict { other: OTHER, .. }]));
    }

    #[test]
    fn unknown_interfaces_are_ignored_not_panics() {
        let (mut e, _) = engine(Timing::default());
        let t0 = Instant::now();
        assert!(e.add_vip(IpAddr::V4(v4("192.0.2.100")), 7, t0, false).frames.is_empty());
        assert_eq!(e.owned().count(), 0);
        let req = wire::arp(Mac::BROADCAST, ArpOp::Request, CLIENT, v4("192.0.2.1"), Mac::ZERO, v4("192.0.2.100"));
        assert!(e.on_frame(9, &req, t0).frames.is_empty());
        assert!(e.iface(9).is_none());
    }

    #[test]
    fn takeover_skips_the_probe_and_refresh_repeats() {
        let t = Timing {
            refresh_interval: Some(Duration::from_secs(30)),
            garp_duration: Duration::ZERO,
            ..Timing::default()
        };
        let (mut e, _) = engine(t);
        let t0 = Instant::now();
        let out = e.add_vip(IpAddr::V4(v4("192.0.2.100")), 0, t0, true);
        assert_eq!(out.frames.len(), 2, "a takeover announces at once");
        assert_eq!(e.next_deadline(), Some(t0 + Duration::from_secs(30)));
        assert_eq!(e.on_tick(t0 + Duration::from_secs(30)).frames.len(), 2, "periodic refresh");
    }
}
