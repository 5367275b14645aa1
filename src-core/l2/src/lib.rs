//! vipvisor-l2: L2 announcements. The speaker answers ARP and NDP for its VIPs with the
//! interface's own MAC (or, in virtual-MAC mode, each VIP's own MAC), from user space,
//! without adding the VIPs to any interface.
//!
//! - [`wire`]: frames (smoltcp codecs), classification, builders;
//! - [`engine`]: the pure state machine (probe → burst → owned; answers; conflicts);
//! - [`sys`]: AF_PACKET sockets with a BPF filter, multicast joins (the only `unsafe`);
//! - [`link`]: interface facts; [`metrics`]: Prometheus counters;
//! - [`vmac`]: virtual MACs and the devices that carry them on the owner;
//! - this module: the runner ([`Speaker`]) that wires them together, and static mode.
//!
//! Owns: what goes on the wire for the VIPs it is told it owns. Must not: decide
//! ownership (gossip does), talk to Kubernetes, or serve HTTP (the binary does).

pub mod engine;
pub mod groups;
pub mod link;
pub mod metrics;
pub mod sys;
pub mod vmac;
pub mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch, Notify};
use tracing::{info, warn};
use vipvisor_health::Health;

use engine::{Engine, Event, Iface, Output, Timing};
use groups::Groups;
use link::{LinkError, LinkInfo};
use metrics::Metrics;
use sys::{Link, PacketSocket};
use wire::Mac;

/// How often a waiting loop wakes to tell [`Health`] it is alive.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
/// A loop that has not turned for this long is stalled (`/healthz` fails).
pub const STALLED_AFTER: Duration = Duration::from_secs(10);
/// At most this many engine events wait for the runner; more are dropped (and counted as
/// a drop reason), so a flood cannot grow memory.
const EVENT_QUEUE: usize = 1024;

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
    /// Virtual-MAC mode: every VIP's MAC (see [`vmac::plan`]); empty: the interfaces' MACs.
    pub virtual_macs: HashMap<IpAddr, Mac>,
}

#[derive(Debug, thiserror::Error)]
pub enum SpeakerError {
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("VIP {vip} is not in any subnet of {interfaces}; expected an address inside one of: {subnets}")]
    VipNotInSubnet { vip: IpAddr, interfaces: String, subnets: String },
    #[error("VIP {vip} cannot be announced on {iface}: {why}; expected another address of the subnet")]
    UnusableVip { vip: IpAddr, iface: String, why: String },
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
    #[error("{interfaces} interface(s) but {links} socket(s); expected one socket per interface")]
    LinkCount { interfaces: usize, links: usize },
    #[error("gossip: {0}")]
    Gossip(String),
    #[error("cannot start the L2 thread: {0}")]
    Thread(#[source] std::io::Error),
    #[error("address conflict: {vip} is already in use by {other} on {iface}; not announcing it (pass --allow-conflicts to announce anyway)")]
    Conflict { vip: IpAddr, iface: String, other: Mac },
    #[error("virtual-MAC mode: {0}")]
    VirtualMac(String),
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
            Some(i) => {
                if let Some(why) = links.iter().find_map(|l| l.unusable_vip(vip).map(|w| (l, w))) {
                    return Err(SpeakerError::UnusableVip { vip: *vip, iface: why.0.name.clone(), why: why.1 });
                }
                out.push((*vip, i))
            }
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

/// Opens a raw socket per interface.
pub fn open_links(links: &[LinkInfo]) -> Result<Vec<PacketSocket>, SpeakerError> {
    let mut sockets = Vec::new();
    for l in links {
        let sock = PacketSocket::open(l.index).map_err(|source| match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => SpeakerError::NoCapability { iface: l.name.clone(), source },
            _ => SpeakerError::Socket { iface: l.name.clone(), source },
        })?;
        sockets.push(sock);
    }
    Ok(sockets)
}

/// A speaker on real interfaces, ready to run: the links, the VIPs placed on them (static
/// mode), the runner and the multicast memberships.
#[derive(Debug)]
pub struct Prepared {
    pub links: Vec<LinkInfo>,
    pub placed: Vec<(IpAddr, usize)>,
    pub speaker: Speaker<PacketSocket>,
    pub groups: Groups,
}

impl Prepared {
    /// Looks up the interfaces, places the VIPs, opens the sockets and joins the
    /// solicited-node groups of the IPv6 VIPs (any of them may become ours).
    pub fn open(cfg: &StaticConfig, metrics: Metrics, health: &Health) -> Result<Prepared, SpeakerError> {
        let links: Vec<LinkInfo> = cfg.interfaces.iter().map(|n| link::lookup(n)).collect::<Result<_, _>>()?;
        let placed = place_vips(&links, &cfg.vips)?;
        let virtual_mac = !cfg.virtual_macs.is_empty();
        if virtual_mac {
            if cfg.virtual_macs.keys().any(IpAddr::is_ipv4) {
                vmac::check_rp_filter().map_err(|e| SpeakerError::VirtualMac(e.to_string()))?;
            }
            let ours: Vec<Mac> = links.iter().map(|l| l.mac).collect();
            if let Some((vip, mac)) = cfg.virtual_macs.iter().find(|(_, m)| ours.contains(m)) {
                return Err(SpeakerError::VirtualMac(format!(
                    "the virtual MAC {mac} of {vip} is an interface's own MAC; expected a MAC no interface has"
                )));
            }
        }
        let p = Prepared::on_links(links, placed, cfg.timing, virtual_mac, metrics, health)?;
        p.speaker.friends().set_virtual_macs(cfg.virtual_macs.clone());
        Ok(p)
    }

    /// The same on interfaces found by the caller (Kubernetes mode), with `placed` VIPs.
    /// `virtual_mac`: VIPs may be in virtual-MAC mode, so the speaker manages the devices
    /// that carry their MACs (and deletes a previous speaker's at the start of a run).
    pub fn on_links(
        links: Vec<LinkInfo>,
        placed: Vec<(IpAddr, usize)>,
        timing: Timing,
        virtual_mac: bool,
        metrics: Metrics,
        health: &Health,
    ) -> Result<Prepared, SpeakerError> {
        // The sockets belong to the L2 thread's reactor: their readiness wakes that thread.
        let l2 =
            Arc::new(L2Thread::start().map_err(|source| SpeakerError::Socket { iface: "(runtime)".into(), source })?);
        let sockets = {
            let _in_l2 = l2.handle.enter();
            open_links(&links)?
        };
        let mut groups = Groups::new(&links).map_err(|(iface, source)| SpeakerError::Socket { iface, source })?;
        groups.sync(&placed).map_err(|(vip, iface, source)| SpeakerError::Multicast { vip, iface, source })?;
        let ifaces = links.iter().map(|l| Iface { name: l.name.clone(), mac: l.mac }).collect();
        let mut speaker = Speaker::new(ifaces, sockets, timing, metrics)?.with_health(health.clone()).on_thread(l2);
        if virtual_mac {
            let devices = vmac::Devices::open().map_err(|e| SpeakerError::VirtualMac(e.to_string()))?;
            speaker.devices = Some((devices, links.iter().map(|l| l.index).collect()));
        }
        Ok(Prepared { links, placed, speaker, groups })
    }

    /// Static mode alone: announces every placed VIP until `shutdown`, or until a conflict
    /// stops it.
    pub async fn run_alone(&mut self, node: &str, shutdown: impl Future<Output = ()>) -> Result<(), SpeakerError> {
        info!(%node, interfaces = ?self.links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), vips = self.placed.len(), "speaker starting");
        let result = self.speaker.run(self.placed.clone(), shutdown).await;
        self.groups.leave_all();
        info!("speaker stopped");
        result
    }
}

/// The runner: one reader task per interface, one timer task, all sharing the engine.
#[derive(Debug)]
pub struct Speaker<L: Link> {
    engine: Arc<Mutex<Engine>>,
    links: Arc<Vec<L>>,
    wake: Arc<Notify>,
    metrics: Metrics,
    conflicts: Option<mpsc::Sender<ConflictReport>>,
    sightings: Option<mpsc::Sender<SightingReport>>,
    health: Health,
    /// Where the receive and timer loops run (default: the caller's runtime).
    l2: Option<Arc<L2Thread>>,
    /// Repeated conflict warnings, per VIP and sender.
    conflict_log: Arc<Mutex<LogLimiter<(IpAddr, Mac)>>>,
    /// Virtual-MAC mode: the devices that carry the owned VIPs' MACs, and the index of
    /// each interface (their lower device).
    devices: Option<(vmac::Devices, Vec<u32>)>,
}

/// A VIP the runner announces: its interface, the virtual MAC it was planned with, and
/// whether a device carries that MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Current {
    iface: usize,
    planned: Option<Mac>,
    device: bool,
}

/// Rate-limits a repeated log line per key: the first is logged, then at most one per
/// [`LOG_EVERY`] saying how many were left out (metrics still count every one). Keys
/// not seen for [`LOG_EVERY`] are forgotten once there are many, so a flood of forged
/// senders cannot grow it without bound.
#[derive(Debug)]
pub struct LogLimiter<K> {
    seen: HashMap<K, (Instant, u64)>,
}

/// How often one repeated line is logged.
pub const LOG_EVERY: Duration = Duration::from_secs(10);
const LOG_KEYS: usize = 1024;

impl<K: std::hash::Hash + Eq + Clone> Default for LogLimiter<K> {
    fn default() -> Self {
        LogLimiter { seen: HashMap::new() }
    }
}

impl<K: std::hash::Hash + Eq + Clone> LogLimiter<K> {
    /// `Some(left out since the last line)` when this occurrence is to be logged.
    pub fn admit(&mut self, key: &K, now: Instant) -> Option<u64> {
        if self.seen.len() >= LOG_KEYS && !self.seen.contains_key(key) {
            self.seen.retain(|_, (t, _)| now.duration_since(*t) < LOG_EVERY);
            if self.seen.len() >= LOG_KEYS {
                return None;
            }
        }
        match self.seen.get_mut(key) {
            Some((t, n)) if now.duration_since(*t) < LOG_EVERY => {
                *n += 1;
                None
            }
            Some((t, n)) => {
                let left_out = *n;
                (*t, *n) = (now, 0);
                Some(left_out)
            }
            None => {
                self.seen.insert(key.clone(), (now, 0));
                Some(0)
            }
        }
    }
}

/// The L2 path's own thread: a current-thread runtime that owns the sockets' readiness and
/// runs the receive and timer loops, so an ARP reply never waits for, or hops between,
/// the threads that decode Kubernetes objects, write the store or run gossip. Stopped on
/// drop.
#[derive(Debug)]
pub struct L2Thread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl L2Thread {
    pub fn start() -> std::io::Result<L2Thread> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("vipvisor-l2".into()).spawn(move || {
            rt.block_on(async {
                let _ = stopped.await;
            });
        })?;
        Ok(L2Thread { handle, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for L2Thread {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
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

/// A MAC seen sending as a VIP (see [`Speaker::report_sightings`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SightingReport {
    pub vip: IpAddr,
    pub iface: String,
    pub mac: Mac,
}

/// See [`Speaker::friends`].
#[derive(Debug, Clone)]
pub struct Friends(Arc<Mutex<Engine>>);

impl Friends {
    pub fn set(&self, macs: impl IntoIterator<Item = Mac>) {
        lock(&self.0).set_friends(macs);
    }
    /// Reports who answers for `vips` too, not only for the VIPs this node owns.
    pub fn watch(&self, vips: impl IntoIterator<Item = IpAddr>) {
        lock(&self.0).set_watched(vips);
    }
    /// Sets the virtual MACs of the VIPs in virtual-MAC mode (see
    /// [`Engine::set_virtual_macs`]); an owned VIP whose MAC changes is announced again
    /// with the new one at the next change of what this node owns.
    pub fn set_virtual_macs(&self, macs: HashMap<IpAddr, Mac>) {
        lock(&self.0).set_virtual_macs(macs);
    }
    /// The MAC an announced VIP is answered with now.
    pub fn announced_mac(&self, vip: &IpAddr) -> Option<Mac> {
        lock(&self.0).announced_mac(vip)
    }
}

fn lock<T>(e: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    e.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn dispatch<L: Link>(links: &[L], out: Output, events: &mpsc::Sender<Event>, metrics: &Metrics) {
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
        if events.try_send(ev).is_err() {
            metrics.events_dropped();
        }
    }
}

impl<L: Link> Speaker<L> {
    /// A runner over one link per interface (`links[i]` carries `ifaces[i]`).
    pub fn new(ifaces: Vec<Iface>, links: Vec<L>, timing: Timing, metrics: Metrics) -> Result<Self, SpeakerError> {
        if ifaces.len() != links.len() {
            return Err(SpeakerError::LinkCount { interfaces: ifaces.len(), links: links.len() });
        }
        Ok(Speaker {
            engine: Arc::new(Mutex::new(Engine::new(ifaces, timing, metrics.clone()))),
            links: Arc::new(links),
            wake: Arc::new(Notify::new()),
            metrics,
            conflicts: None,
            sightings: None,
            health: Health::new(),
            l2: None,
            conflict_log: Arc::default(),
            devices: None,
        })
    }

    /// Runs the receive and timer loops on `l2` (whose reactor the links must belong to).
    pub fn on_thread(mut self, l2: Arc<L2Thread>) -> Self {
        self.l2 = Some(l2);
        self
    }

    fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match &self.l2 {
            Some(t) => t.handle.spawn(fut),
            None => tokio::spawn(fut),
        }
    }

    /// Registers the runner's loops with `health` (for `/healthz`).
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// Sends every conflict to `tx` as well as to the log (when `tx` is full, the report
    /// is dropped: the log has it).
    pub fn report_conflicts(mut self, tx: mpsc::Sender<ConflictReport>) -> Self {
        self.conflicts = Some(tx);
        self
    }

    /// Sends every MAC seen answering for an owned or watched VIP to `tx` (dropped when
    /// `tx` is full).
    pub fn report_sightings(&mut self, tx: mpsc::Sender<SightingReport>) {
        self.sightings = Some(tx);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
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
        let (tx, mut rx) = mpsc::channel::<Event>(EVENT_QUEUE);
        let mut tasks = Vec::new();
        for i in 0..self.links.len() {
            let (engine, links, tx, metrics) =
                (self.engine.clone(), self.links.clone(), tx.clone(), self.metrics.clone());
            let beat = self.health.register("l2-receive", STALLED_AFTER);
            tasks.push(self.spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    beat.beat();
                    let n = match tokio::time::timeout(BEAT_EVERY, links[i].recv(&mut buf)).await {
                        Err(_idle) => continue,
                        Ok(Ok(n)) => n,
                        Ok(Err(e)) => {
                            warn!(error = %e, "receive failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let out = lock(&engine).on_frame(i, &buf[..n], Instant::now());
                    if !out.frames.is_empty() || !out.events.is_empty() {
                        dispatch(&links, out, &tx, &metrics).await;
                    }
                }
            }));
        }
        {
            let (engine, links, tx, wake) = (self.engine.clone(), self.links.clone(), tx.clone(), self.wake.clone());
            let metrics = self.metrics.clone();
            let beat = self.health.register("l2-timers", STALLED_AFTER);
            tasks.push(self.spawn(async move {
                loop {
                    beat.beat();
                    let now = tokio::time::Instant::now();
                    let next = lock(&engine).next_deadline().map(tokio::time::Instant::from_std);
                    let until = next.map_or(now + BEAT_EVERY, |t| t.min(now + BEAT_EVERY));
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = wake.notified() => continue,
                    }
                    if next.is_none_or(|t| t > tokio::time::Instant::now()) {
                        continue;
                    }
                    let out = lock(&engine).on_tick(Instant::now());
                    dispatch(&links, out, &tx, &metrics).await;
                }
            }));
        }
        let beat = self.health.register("l2-runner", STALLED_AFTER);
        let mut tick = tokio::time::interval(BEAT_EVERY);
        let mut current: HashMap<IpAddr, Current> = HashMap::new();
        if let Some((devices, _)) = &self.devices {
            // A previous speaker's (after SIGKILL): nothing of ours is announced yet.
            match devices.clean().await {
                Ok(0) => {}
                Ok(n) => info!(devices = n, "deleted virtual-MAC devices left by a previous speaker"),
                Err(e) => {
                    self.metrics.device_error();
                    warn!(error = %e, "could not delete the virtual-MAC devices left by a previous speaker")
                }
            }
            self.metrics.set_devices(0);
        }
        let first = owned.borrow_and_update().clone();
        self.apply_owned(&mut current, &first, &tx).await;
        tokio::pin!(shutdown);
        let mut owned_open = true;
        let result = loop {
            beat.beat();
            tokio::select! {
                () = &mut shutdown => break Ok(()),
                _ = tick.tick() => {
                    // A VIP's MAC plan changed (e.g. its pool moved to virtual-MAC mode)
                    // while what this node owns did not: announce it again with the new one.
                    let stale = {
                        let e = lock(&self.engine);
                        current.iter().any(|(vip, c)| e.virtual_mac(vip) != c.planned)
                    };
                    if stale {
                        let list = owned.borrow().clone();
                        self.apply_owned(&mut current, &list, &tx).await;
                    }
                }
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
                    self.apply_owned(&mut current, &list, &tx).await;
                }
            }
        };
        for t in tasks {
            t.abort();
        }
        // Stopped: the devices that carried our VIPs' MACs go too.
        self.apply_owned(&mut current, &[], &tx).await;
        beat.done();
        result
    }

    /// Creates the device for `vip`'s virtual MAC on `iface`; `false` (logged) when it
    /// cannot, and the VIP is then announced with the interface's MAC.
    async fn add_device(&self, vip: IpAddr, mac: Mac, iface: usize) -> bool {
        let Some((devices, lowers)) = &self.devices else { return false };
        let Some(lower) = lowers.get(iface) else { return false };
        let result = async {
            if vip.is_ipv4() {
                vmac::check_rp_filter()?;
            }
            devices.ensure(vip, mac, *lower).await
        };
        match result.await {
            Ok(_) => true,
            Err(e) => {
                self.metrics.device_error();
                tracing::error!(%vip, %mac, error = %e, "cannot carry the virtual MAC: announcing the VIP with the interface's own MAC instead");
                false
            }
        }
    }

    async fn remove_device(&self, mac: Mac) {
        if let Some((devices, _)) = &self.devices {
            if let Err(e) = devices.remove(mac).await {
                self.metrics.device_error();
                warn!(%mac, error = %e, "could not delete the virtual-MAC device");
            }
        }
    }

    /// Makes the engine announce exactly `list`: removed VIPs stop at once (then their
    /// virtual-MAC devices go), new ones start (probing first unless they are a takeover),
    /// each as soon as the device for its virtual MAC is up.
    async fn apply_owned(&self, current: &mut HashMap<IpAddr, Current>, list: &[Owned], tx: &mpsc::Sender<Event>) {
        let wanted: HashMap<IpAddr, &Owned> = list.iter().map(|o| (o.vip, o)).collect();
        let mut gone = Vec::new();
        {
            let mut e = lock(&self.engine);
            current.retain(|vip, c| {
                // Kept: still ours, on the same interface, with the same MAC plan.
                let keep = wanted.get(vip).is_some_and(|o| o.iface == c.iface) && e.virtual_mac(vip) == c.planned;
                if !keep {
                    e.remove_vip(vip);
                    if wanted.contains_key(vip) {
                        info!(%vip, "announcing again: its interface or MAC changed");
                    } else {
                        info!(%vip, "no longer the owner: stopped answering");
                    }
                    if let (true, Some(m)) = (c.device, c.planned) {
                        gone.push(m);
                    }
                }
                keep
            });
        }
        for mac in gone {
            self.remove_device(mac).await;
        }
        let fresh: Vec<(&Owned, Option<Mac>)> = {
            let e = lock(&self.engine);
            list.iter().filter(|o| !current.contains_key(&o.vip)).map(|o| (o, e.virtual_mac(&o.vip))).collect()
        };
        // VIPs that need no device start together, in one round (as before virtual MACs);
        // each of the others as soon as its device is up.
        let (plain, carried): (Vec<_>, Vec<_>) =
            fresh.into_iter().partition(|(_, planned)| planned.is_none() || self.devices.is_none());
        let mut out = Output::default();
        {
            let now = Instant::now();
            let mut e = lock(&self.engine);
            for (o, planned) in plain {
                current.insert(o.vip, Current { iface: o.iface, planned, device: false });
                let r = e.add_vip_as(o.vip, o.iface, planned, now, o.takeover);
                out.frames.extend(r.frames);
                out.events.extend(r.events);
                if o.takeover {
                    info!(vip = %o.vip, "took over");
                }
            }
        }
        self.wake.notify_one();
        dispatch(&self.links, out, tx, &self.metrics).await;
        for (o, planned) in carried {
            let Some(mac) = planned else { continue };
            let device = self.add_device(o.vip, mac, o.iface).await;
            // Without its device (it failed) the VIP is announced with the interface's MAC.
            let announce = device.then_some(mac);
            current.insert(o.vip, Current { iface: o.iface, planned, device });
            let out = lock(&self.engine).add_vip_as(o.vip, o.iface, announce, Instant::now(), o.takeover);
            if o.takeover {
                info!(vip = %o.vip, mac = ?announce, "took over");
            }
            self.wake.notify_one();
            dispatch(&self.links, out, tx, &self.metrics).await;
        }
        if self.devices.is_some() {
            self.metrics.set_devices(current.values().filter(|c| c.device).count());
        }
    }

    fn on_event(&self, ev: Event) -> Option<SpeakerError> {
        let e = lock(&self.engine);
        match ev {
            Event::Announced { vip, iface } => {
                let name = e.iface(iface).map(|i| i.name.clone()).unwrap_or_default();
                let n = e.owned().filter(|(_, i)| *i == iface).count();
                self.metrics.set_announced(&name, i64::try_from(n).unwrap_or(i64::MAX));
                info!(%vip, interface = %name, "announced");
                None
            }
            Event::Seen { vip, iface, mac } => {
                if let Some(tx) = &self.sightings {
                    let name = e.iface(iface).map(|i| i.name.clone()).unwrap_or_default();
                    let _ = tx.try_send(SightingReport { vip, iface: name, mac });
                }
                None
            }
            Event::MacCollision { vip, iface, mac, claims } => {
                let name = e.iface(iface).map(|i| i.name.clone()).unwrap_or_default();
                if let Some(left_out) = lock(&self.conflict_log).admit(&(vip, mac), Instant::now()) {
                    let claims = claims.map_or_else(|| "no address".to_owned(), |c| c.to_string());
                    warn!(%vip, interface = %name, virtual_mac = %mac, other_host_claims = %claims, repeats_not_logged = left_out, "MAC collision: another host uses the virtual MAC of this VIP");
                }
                None
            }
            Event::Conflict { vip, iface, other, announced } => {
                let name = e.iface(iface).map(|i| i.name.clone()).unwrap_or_default();
                if let Some(left_out) = lock(&self.conflict_log).admit(&(vip, other), Instant::now()) {
                    warn!(%vip, interface = %name, other_mac = %other, announced, repeats_not_logged = left_out, "address conflict: another host uses the VIP");
                }
                if let Some(tx) = &self.conflicts {
                    let _ = tx.try_send(ConflictReport { vip, iface: name.clone(), other, announced });
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

    #[test]
    fn repeated_lines_are_logged_once_per_interval_with_a_count() {
        let mut l = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(l.admit(&1, t0), Some(0), "the first is logged");
        for i in 1..=500u64 {
            assert_eq!(l.admit(&1, t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(l.admit(&2, t0), Some(0), "another key has its own line");
        assert_eq!(l.admit(&1, t0 + LOG_EVERY), Some(500), "then one line saying how many were left out");
        for k in 0..5000 {
            l.admit(&(k + 10), t0 + LOG_EVERY);
        }
        assert!(l.seen.len() <= LOG_KEYS, "bounded: {}", l.seen.len());
    }
    use wire::{ArpOp, Incoming};

    const NODE: Mac = Mac([2, 0, 0x5e, 0, 0, 0x11]);
    const CLIENT: Mac = Mac([0x3a, 0x1c, 0x52, 0x7e, 0x90, 1]);

    #[tokio::test(flavor = "current_thread")]
    async fn runner_answers_over_the_in_memory_link() {
        let timing = Timing { probe_timeout: Duration::from_millis(200), ..Timing::default() };
        let sp = Arc::new(
            Speaker::new(
                vec![Iface { name: "mem0".into(), mac: NODE }],
                vec![MemLink::default()],
                timing,
                Metrics::new(),
            )
            .unwrap(),
        );
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
    fn interfaces_and_links_must_pair_up() {
        let ifaces = vec![Iface { name: "a".into(), mac: NODE }, Iface { name: "b".into(), mac: CLIENT }];
        let e = Speaker::new(ifaces, vec![MemLink::default()], Timing::default(), Metrics::new()).unwrap_err();
        assert!(matches!(e, SpeakerError::LinkCount { interfaces: 2, links: 1 }), "{e}");
    }

    #[test]
    fn vips_must_be_in_a_subnet() {
        let l = LinkInfo { name: "eth0".into(), index: 2, mac: NODE, subnets: vec!["192.0.2.0/24".parse().unwrap()] };
        let e = place_vips(std::slice::from_ref(&l), &["198.51.100.1".parse().unwrap()]).unwrap_err();
        assert!(e.to_string().contains("198.51.100.1 is not in any subnet of eth0"), "{e}");
        assert!(e.to_string().contains("192.0.2.0/24 (eth0)"), "{e}");
        assert!(matches!(place_vips(std::slice::from_ref(&l), &[]), Err(SpeakerError::NoVips)));
        let mut own = l.clone();
        own.subnets = vec!["192.0.2.10/24".parse().unwrap()];
        for (vip, why) in
            [("192.0.2.10", "own address"), ("192.0.2.0", "network address"), ("192.0.2.255", "broadcast address")]
        {
            let e = place_vips(std::slice::from_ref(&own), &[vip.parse().unwrap()]).unwrap_err();
            assert!(e.to_string().contains(vip) && e.to_string().contains(why), "{e}");
        }
        assert!(place_vips(std::slice::from_ref(&own), &["192.0.2.11".parse().unwrap()]).is_ok());
        let dup = ["192.0.2.9".parse().unwrap(), "192.0.2.9".parse().unwrap()];
        assert!(matches!(place_vips(&[l], &dup), Err(SpeakerError::DuplicateVip(_))));
    }
}
