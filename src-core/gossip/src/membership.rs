//! Liveness of speakers: SWIM membership through `foca` (no home-made heartbeat protocol)
//! over UDP, every datagram sealed with ChaCha20-Poly1305 under a shared key, so a host
//! without the key can neither join nor forge a death (groundwork for issue #5).
//!
//! foca does no I/O: this module owns the socket and the timers and feeds foca datagrams
//! and timer events; foca's member up/down notifications become a `watch` of live names.

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
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// A member: its name, gossip address, and a generation bumped when it rejoins.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId {
    pub name: String,
    pub addr: SocketAddr,
    pub generation: u64,
    /// When this member started (Unix ms): lets every member agree on who is "settled".
    pub started_ms: i64,
    /// The MACs it announces with: its frames are a fellow member's, not a conflict.
    pub macs: Vec<[u8; 6]>,
}

impl NodeId {
    /// A peer known only by its address (from `--join`): its name and the rest are learnt
    /// from its answer.
    fn seed(addr: SocketAddr) -> NodeId {
        NodeId { name: String::new(), addr, generation: 0, started_ms: 0, macs: vec![] }
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;
    /// A member declared down comes back with a new generation. If it was cut off with a
    /// minority of the group (a crash as others saw it, or the small side of a partition),
    /// it also gets a new start time: its hold time starts again, so it does not take VIPs
    /// back from the majority that served them meanwhile. A member of the majority side
    /// (told it was down by the minority when the partition heals) keeps its start time.
    fn renew(&self) -> Option<Self> {
        let minority = lock_minority().get(&self.addr).copied().unwrap_or(true);
        Some(NodeId {
            generation: self.generation.wrapping_add(1),
            started_ms: if minority { crate::model::Timestamp::now().0 } else { self.started_ms },
            ..self.clone()
        })
    }
    fn addr(&self) -> SocketAddr {
        self.addr
    }
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// Per gossip address: does that member of this process see at most half of the largest
/// group it has seen? Read by [`NodeId::renew`], which foca calls with nothing but the
/// identity; keyed by address so several members in one process (tests) stay apart.
static MINORITY: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<SocketAddr, bool>>> =
    std::sync::LazyLock::new(Default::default);

fn lock_minority() -> std::sync::MutexGuard<'static, std::collections::HashMap<SocketAddr, bool>> {
    MINORITY.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("the gossip key is empty; expected a shared secret such as `head -c 32 /dev/urandom | base64`")]
    EmptyKey,
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

impl Sealer {
    pub fn new(secret: &[u8]) -> Result<Self, MembershipError> {
        let trimmed = secret.trim_ascii();
        if trimmed.is_empty() {
            return Err(MembershipError::EmptyKey);
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
    /// Start time (Unix ms).
    pub started_ms: i64,
    pub macs: Vec<[u8; 6]>,
}

/// Live members by name, ourselves included.
pub type Live = std::collections::BTreeMap<String, MemberInfo>;

/// A running member: `live()` is the set of live members, ourselves included.
#[derive(Debug)]
pub struct Membership {
    live: watch::Receiver<Live>,
    /// `true`: leave gracefully; `false`: stop dead, as a crash would.
    stop: mpsc::UnboundedSender<bool>,
    peers: watch::Sender<Vec<SocketAddr>>,
    pub local: SocketAddr,
}

impl Membership {
    /// Binds `bind`, joins through `peers`, and runs until dropped or [`Membership::leave`].
    pub async fn start(
        name: &str,
        macs: Vec<[u8; 6]>,
        bind: SocketAddr,
        peers: Vec<SocketAddr>,
        sealer: Sealer,
        timing: GossipTiming,
    ) -> Result<Membership, MembershipError> {
        let sock = UdpSocket::bind(bind).await.map_err(|source| MembershipError::Bind { addr: bind, source })?;
        let local = sock.local_addr().map_err(|source| MembershipError::Bind { addr: bind, source })?;
        let started_ms = crate::model::Timestamp::now().0;
        let me = NodeId { name: name.to_owned(), addr: local, generation: 0, started_ms, macs: macs.clone() };
        let (live_tx, live_rx) = watch::channel(Live::from([(name.to_owned(), MemberInfo { started_ms, macs })]));
        let (stop_tx, stop_rx) = mpsc::unbounded_channel::<bool>();
        let (peers_tx, peers_rx) = watch::channel(peers);
        tokio::spawn(run(Arc::new(sock), me, peers_rx, sealer, timing, live_tx, stop_rx));
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
        let _ = self.stop.send(true);
    }
    /// Stops without a word, as a crashed node would (for tests).
    pub fn crash(&self) {
        let _ = self.stop.send(false);
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// At most this many non-member peers are announced to per rejoin round, so a large
/// cluster where few nodes run a speaker is not flooded.
const REJOIN_FANOUT: usize = 5;

async fn run(
    sock: Arc<UdpSocket>,
    me: NodeId,
    mut peers: watch::Receiver<Vec<SocketAddr>>,
    sealer: Sealer,
    timing: GossipTiming,
    live_tx: watch::Sender<Live>,
    mut stop: mpsc::UnboundedReceiver<bool>,
) {
    let rng: rand::rngs::StdRng = rand::make_rng();
    let mut pick: rand::rngs::StdRng = rand::make_rng();
    let mut foca = Foca::new(me.clone(), config(timing), rng, PostcardCodec);
    let mut rt = AccumulatingRuntime::new();
    let (timer_tx, mut timer_rx) = mpsc::unbounded_channel::<Timer<NodeId>>();
    let mut peak = 1usize;
    lock_minority().insert(me.addr, false);
    let initial = peers.borrow_and_update().clone();
    for p in initial.iter().copied().filter(|p| *p != me.addr).take(REJOIN_FANOUT) {
        if let Err(e) = foca.announce(NodeId::seed(p), &mut rt) {
            warn!(error = %e, peer = %p, "cannot announce to a peer");
        }
    }
    let mut buf = vec![0u8; 65536];
    // Re-announce to configured peers that are not members: after a partition heals, or a
    // peer restarts, the group merges again without waiting for anyone's periodic gossip.
    let mut rejoin = tokio::time::interval(Duration::from_secs(1));
    rejoin.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        flush(&mut rt, &sock, &sealer, &timer_tx, &mut foca, &live_tx, &mut peak).await;
        tokio::select! {
            _ = rejoin.tick() => {
                let known: std::collections::HashSet<SocketAddr> = foca.iter_members().map(|m| m.id().addr).collect();
                let me_addr = foca.identity().addr;
                let unknown: Vec<SocketAddr> =
                    peers.borrow().iter().copied().filter(|p| *p != me_addr && !known.contains(p)).collect();
                for p in rand::seq::IndexedRandom::sample(unknown.as_slice(), &mut pick, REJOIN_FANOUT) {
                    let _ = foca.announce(NodeId::seed(*p), &mut rt);
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                match sealer.open(&buf[..n]) {
                    Some(plain) => {
                        if let Err(e) = foca.handle_data(&plain, &mut rt) {
                            debug!(error = %e, %from, "gossip datagram rejected");
                        }
                    }
                    None => debug!(%from, "dropped a gossip datagram not sealed with our key"),
                }
            }
            Some(t) = timer_rx.recv() => {
                if let Err(e) = foca.handle_timer(t, &mut rt) {
                    debug!(error = %e, "timer");
                }
            }
            graceful = stop.recv() => {
                if graceful != Some(false) {
                    let _ = foca.leave_cluster(&mut rt);
                    flush(&mut rt, &sock, &sealer, &timer_tx, &mut foca, &live_tx, &mut peak).await;
                }
                lock_minority().remove(&me.addr);
                return;
            }
        }
    }
}

async fn flush(
    rt: &mut AccumulatingRuntime<NodeId>,
    sock: &UdpSocket,
    sealer: &Sealer,
    timers: &mpsc::UnboundedSender<Timer<NodeId>>,
    foca: &mut Foca<NodeId, PostcardCodec, rand::rngs::StdRng, foca::NoCustomBroadcast>,
    live: &watch::Sender<Live>,
    peak: &mut usize,
) {
    while let Some((to, data)) = rt.to_send() {
        let _ = sock.send_to(&sealer.seal(&data), to.addr).await;
    }
    while let Some((after, t)) = rt.to_schedule() {
        let tx = timers.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            let _ = tx.send(t);
        });
    }
    let mut changed = false;
    while let Some(n) = rt.to_notify() {
        changed |= matches!(
            n,
            foca::OwnedNotification::MemberUp(_)
                | foca::OwnedNotification::MemberDown(_)
                | foca::OwnedNotification::Rejoin(_)
                | foca::OwnedNotification::Rename(..)
        );
    }
    let me = foca.identity().clone();
    if changed {
        let mut names: Live = foca
            .iter_members()
            .map(|m| (m.id().name.clone(), MemberInfo { started_ms: m.id().started_ms, macs: m.id().macs.clone() }))
            .filter(|(n, _)| !n.is_empty())
            .collect();
        names.insert(me.name.clone(), MemberInfo { started_ms: me.started_ms, macs: me.macs.clone() });
        info!(members = ?names.keys().collect::<Vec<_>>(), "membership changed");
        // The largest group seen never shrinks: a member that lost the others cannot tell a
        // partition from their deaths, so it assumes the former (the cost: a hold time).
        *peak = (*peak).max(names.len());
        lock_minority().insert(me.addr, names.len() * 2 <= *peak);
        live.send_replace(names);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_datagrams_need_the_key() {
        let a = Sealer::new(b"s3cret\n").unwrap();
        let b = Sealer::new(b"s3cret").unwrap();
        let other = Sealer::new(b"not the key").unwrap();
        let p = a.seal(b"hello");
        assert_eq!(b.open(&p).as_deref(), Some(&b"hello"[..]), "same secret (whitespace trimmed) opens it");
        assert_eq!(other.open(&p), None, "another key cannot");
        let mut t = p.clone();
        t[20] ^= 1;
        assert_eq!(a.open(&t), None, "tampering is detected");
        assert_eq!(a.open(&p[..10]), None);
        assert_ne!(a.seal(b"hello"), p, "a fresh nonce each time");
        assert!(matches!(Sealer::new(b"  \n"), Err(MembershipError::EmptyKey)));
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

    /// Three members on loopback over real UDP: they find each other, see a crash quickly,
    /// and a member with another key never gets in.
    #[tokio::test(flavor = "current_thread")]
    async fn members_join_detect_a_crash_and_keep_strangers_out() {
        let key = Sealer::new(b"group secret").unwrap();
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let t = GossipTiming::default();
        let a = Membership::start("a", vec![], any, vec![], key.clone(), t).await.unwrap();
        let b = Membership::start("b", vec![], any, vec![a.local], key.clone(), t).await.unwrap();
        let c = Membership::start("c", vec![], any, vec![a.local], key.clone(), t).await.unwrap();
        for m in [&a, &b, &c] {
            wait_for(m, &["a", "b", "c"], Duration::from_secs(5)).await;
        }
        c.crash();
        let seen_a = wait_for(&a, &["a", "b"], Duration::from_secs(3)).await;
        let seen_b = wait_for(&b, &["a", "b"], Duration::from_secs(3)).await;
        eprintln!("crash of c seen by a after {seen_a:?}, by b after {seen_b:?}");

        let stranger = Membership::start("d", vec![], any, vec![a.local, b.local], Sealer::new(b"wrong").unwrap(), t)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        let names = |m: &Membership| m.live().borrow().keys().cloned().collect::<Vec<_>>();
        assert_eq!(names(&a), vec!["a", "b"], "d has the wrong key: not a member");
        assert_eq!(names(&stranger), vec!["d"], "and d sees nobody");
        b.leave();
        wait_for(&a, &["a"], Duration::from_secs(3)).await;
    }
}
