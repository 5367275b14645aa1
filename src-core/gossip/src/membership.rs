//! Liveness of speakers: SWIM membership through `foca` (no home-made heartbeat protocol)
//! over UDP, every datagram sealed with ChaCha20-Poly1305 under a shared key, so a host
//! without the key can neither join nor forge a death.
//!
//! foca does no I/O: this module owns the socket and one timer queue and feeds foca
//! datagrams and timer events; foca's member notifications become a `watch` of live
//! members. A member is *settled* once it has been up for the hold time **by its own
//! monotonic clock**; it then says so in its identity, so every member learns the same
//! fact through gossip and no host compares its wall clock with another's.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use foca::{AccumulatingRuntime, Foca, PostcardCodec, Timer};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// A member: its name, gossip address, and a generation bumped with every new identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    pub addr: SocketAddr,
    pub generation: u64,
    /// Up for the hold time without being cut off, by its own clock: it may take VIPs
    /// from others.
    pub settled: bool,
    /// The MACs it announces with: its frames are a fellow member's, not a conflict.
    pub macs: Vec<[u8; 6]>,
}

impl NodeId {
    /// A peer known only by its address (from `--join`): its name and the rest are learnt
    /// from its answer.
    fn seed(addr: SocketAddr) -> NodeId {
        NodeId { name: String::new(), addr, generation: 0, settled: false, macs: vec![] }
    }
    fn next(&self, settled: bool) -> NodeId {
        NodeId { generation: self.generation.wrapping_add(1), settled, ..self.clone() }
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;
    /// A member declared down comes back with a new generation. Whether it must also wait
    /// for its hold time again (it was cut off with a minority) is decided by its own run
    /// loop, which knows; this function has nothing but the identity.
    fn renew(&self) -> Option<Self> {
        Some(self.next(self.settled))
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("the gossip key is empty; expected a shared secret such as `head -c 32 /dev/urandom | base64`")]
    EmptyKey,
    #[error("the gossip key has {len} bytes; expected at least 16 (e.g. `head -c 32 /dev/urandom | base64`)")]
    ShortKey { len: usize },
    #[error("cannot bind gossip to {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Seals and opens datagrams. The key is SHA-256 of the shared secret's text.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

const NONCE: usize = 12;
/// The shortest shared secret accepted (after trimming whitespace).
pub const MIN_KEY_BYTES: usize = 16;
/// The largest gossip key file read.
pub const MAX_KEY_FILE_BYTES: u64 = 4096;

impl Sealer {
    pub fn new(secret: &[u8]) -> Result<Self, MembershipError> {
        let trimmed = secret.trim_ascii();
        if trimmed.is_empty() {
            return Err(MembershipError::EmptyKey);
        }
        if trimmed.len() < MIN_KEY_BYTES {
            return Err(MembershipError::ShortKey { len: trimmed.len() });
        }
        let digest = Sha256::digest(trimmed);
        Ok(Sealer { cipher: ChaCha20Poly1305::new(Key::from_slice(&digest)) })
    }
    pub fn seal(&self, plain: &[u8]) -> Vec<u8> {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let mut out = nonce.to_vec();
        // Encryption of an in-memory buffer cannot fail for sizes below the AEAD limit.
        out.extend(self.cipher.encrypt(&nonce, plain).unwrap_or_default());
        out
    }
    /// `None` for anything not sealed with our key (wrong key, tampered, truncated).
    pub fn open(&self, packet: &[u8]) -> Option<Vec<u8>> {
        if packet.len() < NONCE + 16 {
            return None;
        }
        let (nonce, ct) = packet.split_at(NONCE);
        self.cipher.decrypt(Nonce::from_slice(nonce), ct).ok()
    }
}

/// Probe timing. The defaults aim at detecting a dead member in well under 0.5 s on a LAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GossipTiming {
    pub probe_period: Duration,
    pub probe_rtt: Duration,
    pub suspect_to_down: Duration,
}

impl Default for GossipTiming {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_millis(70),
            probe_rtt: Duration::from_millis(30),
            suspect_to_down: Duration::from_millis(120),
        }
    }
}

fn config(t: GossipTiming) -> foca::Config {
    let mut c = foca::Config::new_lan(NonZeroU32::new(32).unwrap_or(NonZeroU32::MIN));
    c.probe_period = t.probe_period;
    c.probe_rtt = t.probe_rtt;
    c.suspect_to_down_after = t.suspect_to_down;
    c.periodic_gossip = Some(foca::PeriodicParams { frequency: t.probe_period, num_members: NonZeroUsize::MIN });
    c.periodic_announce =
        Some(foca::PeriodicParams { frequency: Duration::from_secs(1), num_members: NonZeroUsize::MIN });
    // After a partition heals, members declared down must find each other again quickly,
    // or both sides keep announcing (foca's LAN default is every 65 s).
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(250),
        num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
    });
    c
}

/// What the group knows about a live member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// Up for its hold time (see [`NodeId::settled`]).
    pub settled: bool,
    pub macs: Vec<[u8; 6]>,
}

/// Live members by name, ourselves included.
pub type Live = std::collections::BTreeMap<String, MemberInfo>;

/// A running member: `live()` is the set of live members, ourselves included.
#[derive(Debug)]
pub struct Membership {
    live: watch::Receiver<Live>,
    /// `Some(true)`: leave gracefully; `Some(false)`: stop dead, as a crash would.
    stop: watch::Sender<Option<bool>>,
    peers: watch::Sender<Vec<SocketAddr>>,
    pub local: SocketAddr,
}

/// How a member starts.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub name: String,
    pub macs: Vec<[u8; 6]>,
    pub bind: SocketAddr,
    pub peers: Vec<SocketAddr>,
    pub sealer: Sealer,
    pub timing: GossipTiming,
    /// How long this member waits, after starting or after being cut off, before it counts
    /// as settled.
    pub hold: Duration,
}

impl Membership {
    /// Binds, joins through the peers, and runs until dropped or [`Membership::leave`].
    pub async fn start(cfg: MemberConfig) -> Result<Membership, MembershipError> {
        let sock =
            UdpSocket::bind(cfg.bind).await.map_err(|source| MembershipError::Bind { addr: cfg.bind, source })?;
        let local = sock.local_addr().map_err(|source| MembershipError::Bind { addr: cfg.bind, source })?;
        let settled = cfg.hold.is_zero();
        let me = NodeId { name: cfg.name.clone(), addr: local, generation: 0, settled, macs: cfg.macs.clone() };
        let (live_tx, live_rx) =
            watch::channel(Live::from([(cfg.name.clone(), MemberInfo { settled, macs: cfg.macs })]));
        let (stop_tx, stop_rx) = watch::channel(None);
        let (peers_tx, peers_rx) = watch::channel(cfg.peers);
        let run = Runner::new(Arc::new(sock), me, cfg.sealer, cfg.timing, cfg.hold, live_tx);
        tokio::spawn(run.run(peers_rx, stop_rx));
        Ok(Membership { live: live_rx, stop: stop_tx, peers: peers_tx, local })
    }
    pub fn live(&self) -> watch::Receiver<Live> {
        self.live.clone()
    }
    /// Replaces the addresses to (re)join through (Kubernetes mode: the other nodes).
    pub fn set_peers(&self, mut peers: Vec<SocketAddr>) {
        peers.sort();
        peers.dedup();
        self.peers.send_if_modified(|cur| {
            let changed = *cur != peers;
            if changed {
                *cur = peers;
            }
            changed
        });
    }
    /// Announces our departure and stops.
    pub fn leave(&self) {
        let _ = self.stop.send(Some(true));
    }
    /// Stops without a word, as a crashed node would (for tests).
    pub fn crash(&self) {
        let _ = self.stop.send(Some(false));
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.send_if_modified(|s| {
            let first = s.is_none();
            if first {
                *s = Some(true);
            }
            first
        });
    }
}

/// At most this many non-member peers are announced to per rejoin round, so a large
/// cluster where few nodes run a speaker is not flooded.
const REJOIN_FANOUT: usize = 5;

/// foca's timers, in one queue polled by the run loop (no task per timer).
#[derive(Debug, Default)]
struct TimerQueue {
    heap: BinaryHeap<Reverse<(tokio::time::Instant, u64)>>,
    timers: HashMap<u64, Timer<NodeId>>,
    seq: u64,
}

impl TimerQueue {
    fn schedule(&mut self, at: tokio::time::Instant, t: Timer<NodeId>) {
        self.seq = self.seq.wrapping_add(1);
        self.heap.push(Reverse((at, self.seq)));
        self.timers.insert(self.seq, t);
    }
    fn next_at(&self) -> Option<tokio::time::Instant> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }
    /// Every timer due at `now`, in order.
    fn due(&mut self, now: tokio::time::Instant) -> Vec<Timer<NodeId>> {
        let mut out = Vec::new();
        while let Some(Reverse((at, seq))) = self.heap.peek().copied() {
            if at > now {
                break;
            }
            self.heap.pop();
            if let Some(t) = self.timers.remove(&seq) {
                out.push(t);
            }
        }
        out
    }
    fn len(&self) -> usize {
        self.timers.len()
    }
}

type FocaT = Foca<NodeId, PostcardCodec, rand::rngs::StdRng, foca::NoCustomBroadcast>;

/// How long a member keeps announcing itself after changing its identity.
const REANNOUNCE_FOR: Duration = Duration::from_secs(3);

struct Runner {
    sock: Arc<UdpSocket>,
    sealer: Sealer,
    foca: FocaT,
    rt: AccumulatingRuntime<NodeId>,
    timers: TimerQueue,
    live: watch::Sender<Live>,
    hold: Duration,
    /// When our identity becomes settled (None: it is).
    settle_at: Option<tokio::time::Instant>,
    /// The largest group seen; never shrinks: a member that lost the others cannot tell a
    /// partition from their deaths, so it assumes the former (the cost: a hold time).
    peak: usize,
    /// We see at most half of `peak`: if the others declare us down, we were cut off.
    minority: bool,
    /// Until then, announce ourselves to every peer each second: after an identity change
    /// (several members settle at once when they started together) messages addressed to
    /// an old identity are dropped, so each side may never hear the other's new one; an
    /// announce is answered with the peer's current view, addressed to our new identity.
    reannounce_until: Option<tokio::time::Instant>,
}

impl Runner {
    fn new(
        sock: Arc<UdpSocket>,
        me: NodeId,
        sealer: Sealer,
        timing: GossipTiming,
        hold: Duration,
        live: watch::Sender<Live>,
    ) -> Runner {
        let rng: rand::rngs::StdRng = rand::make_rng();
        let settle_at = (!me.settled).then(|| tokio::time::Instant::now() + hold);
        Runner {
            sock,
            sealer,
            foca: Foca::new(me, config(timing), rng, PostcardCodec),
            rt: AccumulatingRuntime::new(),
            timers: TimerQueue::default(),
            live,
            hold,
            settle_at,
            peak: 1,
            minority: false,
            reannounce_until: None,
        }
    }

    async fn run(mut self, mut peers: watch::Receiver<Vec<SocketAddr>>, mut stop: watch::Receiver<Option<bool>>) {
        let mut pick: rand::rngs::StdRng = rand::make_rng();
        let me_addr = self.foca.identity().addr;
        let initial = peers.borrow_and_update().clone();
        for p in initial.iter().copied().filter(|p| *p != me_addr).take(REJOIN_FANOUT) {
            if let Err(e) = self.foca.announce(NodeId::seed(p), &mut self.rt) {
                warn!(error = %e, peer = %p, "cannot announce to a peer");
            }
        }
        let mut buf = vec![0u8; 65536];
        // Re-announce to configured peers that are not members: after a partition heals, or
        // a peer restarts, the group merges again without waiting for anyone's gossip.
        let mut rejoin = tokio::time::interval(Duration::from_secs(1));
        rejoin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.flush().await;
            let far = tokio::time::Instant::now() + Duration::from_secs(3600);
            let next_timer = self.timers.next_at().unwrap_or(far);
            let settle_at = self.settle_at.unwrap_or(far);
            tokio::select! {
                _ = rejoin.tick() => {
                    if self.reannounce_until.is_some_and(|t| tokio::time::Instant::now() < t) {
                        let all: Vec<SocketAddr> = peers.borrow().iter().copied().filter(|p| *p != me_addr).collect();
                        for p in all {
                            let _ = self.foca.announce(NodeId::seed(p), &mut self.rt);
                        }
                        continue;
                    }
                    let known: HashSet<SocketAddr> = self.foca.iter_members().map(|m| m.id().addr).collect();
                    let unknown: Vec<SocketAddr> =
                        peers.borrow().iter().copied().filter(|p| *p != me_addr && !known.contains(p)).collect();
                    for p in rand::seq::IndexedRandom::sample(unknown.as_slice(), &mut pick, REJOIN_FANOUT) {
                        let _ = self.foca.announce(NodeId::seed(*p), &mut self.rt);
                    }
                }
                r = self.sock.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    match self.sealer.open(&buf[..n]) {
                        Some(plain) => {
                            if let Err(e) = self.foca.handle_data(&plain, &mut self.rt) {
                                debug!(error = %e, %from, "gossip datagram rejected");
                            }
                        }
                        None => debug!(%from, "dropped a gossip datagram not sealed with our key"),
                    }
                }
                _ = tokio::time::sleep_until(next_timer) => {
                    for t in self.timers.due(tokio::time::Instant::now()) {
                        if let Err(e) = self.foca.handle_timer(t, &mut self.rt) {
                            debug!(error = %e, "timer");
                        }
                    }
                }
                _ = tokio::time::sleep_until(settle_at) => {
                    self.settle_at = None;
                    self.set_identity(true);
                }
                r = stop.changed() => {
                    let graceful = r.is_err() || *stop.borrow() != Some(false);
                    if graceful {
                        let _ = self.foca.leave_cluster(&mut self.rt);
                        self.flush().await;
                    }
                    return;
                }
            }
        }
    }

    /// Takes a new identity that says whether we are settled.
    fn set_identity(&mut self, settled: bool) {
        let next = self.foca.identity().next(settled);
        info!(generation = next.generation, settled, "gossip identity renewed");
        if let Err(e) = self.foca.change_identity(next, &mut self.rt) {
            warn!(error = %e, "cannot change the gossip identity");
        }
        self.reannounce_until = Some(tokio::time::Instant::now() + REANNOUNCE_FOR);
        self.publish();
    }

    fn publish(&mut self) {
        let me = self.foca.identity().clone();
        let mut names: Live = self
            .foca
            .iter_members()
            .map(|m| (m.id().name.clone(), MemberInfo { settled: m.id().settled, macs: m.id().macs.clone() }))
            .filter(|(n, _)| !n.is_empty())
            .collect();
        names.insert(me.name.clone(), MemberInfo { settled: me.settled, macs: me.macs.clone() });
        self.peak = self.peak.max(names.len());
        self.minority = names.len() * 2 <= self.peak;
        let changed = *self.live.borrow() != names;
        if changed {
            info!(members = ?names.iter().map(|(n, m)| format!("{n}{}", if m.settled { "" } else { " (holding)" })).collect::<Vec<_>>(), "membership changed");
            self.live.send_replace(names);
        }
    }

    async fn flush(&mut self) {
        while let Some((to, data)) = self.rt.to_send() {
            let _ = self.sock.send_to(&self.sealer.seal(&data), to.addr).await;
        }
        let now = tokio::time::Instant::now();
        while let Some((after, t)) = self.rt.to_schedule() {
            self.timers.schedule(now + after, t);
        }
        let mut changed = false;
        let mut rejoined = false;
        while let Some(n) = self.rt.to_notify() {
            rejoined |= matches!(n, foca::OwnedNotification::Rejoin(_));
            changed |= matches!(
                n,
                foca::OwnedNotification::MemberUp(_)
                    | foca::OwnedNotification::MemberDown(_)
                    | foca::OwnedNotification::Rejoin(_)
                    | foca::OwnedNotification::Rename(..)
            );
        }
        if rejoined && self.minority {
            // The others declared us down while we saw a minority: we were the cut-off
            // side, so our hold time starts again and we do not take VIPs back from the
            // majority that served them meanwhile. (The majority side keeps its state.)
            self.settle_at = Some(now + self.hold);
            if self.foca.identity().settled {
                self.set_identity(false);
            }
            // The new identity's messages must go out now.
            while let Some((to, data)) = self.rt.to_send() {
                let _ = self.sock.send_to(&self.sealer.seal(&data), to.addr).await;
            }
        }
        if changed {
            self.publish();
        }
        debug!(timers = self.timers.len(), "gossip round");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// foca's timers wait in one heap polled by the run loop (before: a task each).
    #[test]
    fn timers_come_due_in_order_from_one_queue() {
        let mut q = TimerQueue::default();
        let t0 = tokio::time::Instant::now();
        let me = NodeId::seed("127.0.0.1:1".parse().unwrap());
        q.schedule(t0 + Duration::from_millis(30), Timer::ProbeRandomMember(3));
        q.schedule(t0 + Duration::from_millis(10), Timer::ProbeRandomMember(1));
        q.schedule(
            t0 + Duration::from_millis(20),
            Timer::ChangeSuspectToDown { member_id: me, incarnation: 0, token: 0 },
        );
        assert_eq!(q.len(), 3);
        assert_eq!(q.next_at(), Some(t0 + Duration::from_millis(10)), "the earliest is next");
        assert!(q.due(t0).is_empty(), "nothing is due before its time");
        let due = q.due(t0 + Duration::from_millis(25));
        assert_eq!(due.len(), 2, "the two earliest are due at 25 ms");
        assert!(matches!(due[0], Timer::ProbeRandomMember(1)), "in order: {due:?}");
        assert_eq!(q.len(), 1, "due timers leave the queue");
        assert_eq!(q.due(t0 + Duration::from_secs(1)).len(), 1);
        assert_eq!((q.len(), q.next_at()), (0, None));
    }

    #[test]
    fn sealed_datagrams_need_the_key() {
        let a = Sealer::new(b"s3cret-s3cret-s3cret\n").unwrap();
        let b = Sealer::new(b"s3cret-s3cret-s3cret").unwrap();
        let other = Sealer::new(b"not the key of the group").unwrap();
        let p = a.seal(b"hello");
        assert_eq!(b.open(&p).as_deref(), Some(&b"hello"[..]), "same secret (whitespace trimmed) opens it");
        assert_eq!(other.open(&p), None, "another key cannot");
        let mut t = p.clone();
        t[20] ^= 1;
        assert_eq!(a.open(&t), None, "tampering is detected");
        assert_eq!(a.open(&p[..10]), None);
        assert_ne!(a.seal(b"hello"), p, "a fresh nonce each time");
        assert!(matches!(Sealer::new(b"  \n"), Err(MembershipError::EmptyKey)));
        assert!(matches!(Sealer::new(b"  short-key-15byt \n"), Err(MembershipError::ShortKey { len: 15 })));
        assert!(Sealer::new(b"sixteen bytes!!!").is_ok(), "16 bytes is enough");
        assert_eq!(format!("{a:?}"), "Sealer(<redacted>)", "keys never reach logs");
    }
}

#[cfg(test)]
mod udp_tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Instant;

    async fn wait_for(m: &Membership, want: &[&str], limit: Duration) -> Duration {
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let start = Instant::now();
        let mut rx = m.live();
        loop {
            if rx.borrow().keys().cloned().collect::<BTreeSet<_>>() == want {
                return start.elapsed();
            }
            let left = limit.saturating_sub(start.elapsed());
            assert!(!left.is_zero(), "membership is {:?}, expected {want:?} within {limit:?}", *rx.borrow());
            let _ = tokio::time::timeout(left, rx.changed()).await;
        }
    }

    fn member(name: &str, peers: Vec<SocketAddr>, key: &Sealer, hold: Duration) -> MemberConfig {
        MemberConfig {
            name: name.into(),
            macs: vec![],
            bind: "127.0.0.1:0".parse().unwrap(),
            peers,
            sealer: key.clone(),
            timing: GossipTiming::default(),
            hold,
        }
    }

    /// Three members on loopback over real UDP: they find each other, see a crash quickly,
    /// and a member with another key never gets in.
    #[tokio::test(flavor = "current_thread")]
    async fn members_join_detect_a_crash_and_keep_strangers_out() {
        let key = Sealer::new(b"group secret of the test").unwrap();
        let z = Duration::ZERO;
        let a = Membership::start(member("a", vec![], &key, z)).await.unwrap();
        let b = Membership::start(member("b", vec![a.local], &key, z)).await.unwrap();
        let c = Membership::start(member("c", vec![a.local], &key, z)).await.unwrap();
        for m in [&a, &b, &c] {
            wait_for(m, &["a", "b", "c"], Duration::from_secs(5)).await;
        }
        c.crash();
        let seen_a = wait_for(&a, &["a", "b"], Duration::from_secs(3)).await;
        let seen_b = wait_for(&b, &["a", "b"], Duration::from_secs(3)).await;
        eprintln!("crash of c seen by a after {seen_a:?}, by b after {seen_b:?}");

        let stranger = Membership::start(member(
            "d",
            vec![a.local, b.local],
            &Sealer::new(b"wrong key of a stranger").unwrap(),
            z,
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        let names = |m: &Membership| m.live().borrow().keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&a), vec!["a", "b"], "d has the wrong key: not a member");
        assert_eq!(names(&stranger), vec!["d"], "and d sees nobody");
        b.leave();
        wait_for(&a, &["a"], Duration::from_secs(3)).await;
    }

    /// Settledness is the member's own word, measured on its own monotonic clock and
    /// spread by gossip: every member sees a newcomer hold for its hold time and then
    /// settle, whatever the hosts' wall clocks say (before, each host compared the
    /// newcomer's wall-clock start time with its own, so a skewed clock made it settled at
    /// once for some and never for others). The newcomer never drops out of the others'
    /// view when it renews its identity.
    #[tokio::test(flavor = "current_thread")]
    async fn a_newcomer_settles_by_its_own_clock_and_everyone_agrees() {
        let key = Sealer::new(b"group secret of the test").unwrap();
        let a = Membership::start(member("a", vec![], &key, Duration::ZERO)).await.unwrap();
        let b = Membership::start(member("b", vec![a.local], &key, Duration::ZERO)).await.unwrap();
        wait_for(&a, &["a", "b"], Duration::from_secs(5)).await;
        let hold = Duration::from_millis(1500);
        let started = Instant::now();
        let c = Membership::start(member("c", vec![a.local], &key, hold)).await.unwrap();
        for m in [&a, &b, &c] {
            wait_for(m, &["a", "b", "c"], Duration::from_secs(5)).await;
        }
        let settled = |m: &Membership| m.live().borrow().get("c").map(|i| i.settled);
        assert!(started.elapsed() < hold, "the group formed within the hold time");
        for m in [&a, &b, &c] {
            assert_eq!(settled(m), Some(false), "c holds for its hold time in everyone's view");
        }
        // Watch a's view until c is settled there: c must stay a member throughout.
        let mut rx = a.live();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let view = rx.borrow_and_update().clone();
            assert!(view.contains_key("c"), "c dropped out of a's view while renewing: {view:?}");
            if view["c"].settled {
                break;
            }
            assert!(Instant::now() < deadline, "c never settled in a's view");
            let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
        }
        assert!(started.elapsed() >= hold, "not before its hold time: {:?}", started.elapsed());
        wait_for(&b, &["a", "b", "c"], Duration::from_secs(1)).await;
        let deadline = Instant::now() + Duration::from_secs(2);
        while settled(&b) != Some(true) || settled(&c) != Some(true) {
            assert!(Instant::now() < deadline, "b and c agree that c is settled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
