//! Static speaker groups (no Kubernetes, a keepalived replacement): speakers that share
//! one VIP list; each VIP is announced by one owner, chosen over the live members of the
//! gossip group.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tracing::info;
use vipvisor_health::Health;
use vipvisor_l2::sys::Link;
use vipvisor_l2::{Prepared, Speaker, SpeakerError, STALLED_AFTER};

use crate::membership::{GossipTiming, Live, MemberConfig, Membership, Sealer};
use crate::ownership::{self, Facts, OwnerTracker, StaticFacts};

#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Gossip address to bind; default: the first IPv4 (else IPv6) address of the first
    /// interface, on `port`.
    pub bind: Option<IpAddr>,
    pub port: u16,
    pub join: Vec<SocketAddr>,
    pub sealer: Sealer,
    pub timing: GossipTiming,
    /// A (re)joining member takes VIPs from others only after it has been up this long.
    pub hold: Duration,
    /// How long to wait for the group before deciding ownership alone.
    pub settle: Duration,
    /// Told what this member owns whenever that changes (`--record` writes it to the
    /// store).
    pub mirror: Option<tokio::sync::watch::Sender<Vec<vipvisor_l2::Owned>>>,
}

/// Runs this member in both modes: the ownership loop over `facts` tells `speaker` what to
/// announce until `shutdown` (or a fatal error); then the member leaves the group at once,
/// so the others take over instead of waiting to detect it.
pub async fn serve<L, F>(
    speaker: &Speaker<L>,
    me: &str,
    membership: &Membership,
    facts: F,
    health: &Health,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SpeakerError>
where
    L: Link + Send + Sync + 'static,
    F: Facts + 'static,
{
    serve_mirrored(speaker, me, membership, facts, health, None, shutdown).await
}

/// [`serve`], also sending what this member owns to `mirror` whenever it changes.
pub async fn serve_mirrored<L, F>(
    speaker: &Speaker<L>,
    me: &str,
    membership: &Membership,
    facts: F,
    health: &Health,
    mirror: Option<tokio::sync::watch::Sender<Vec<vipvisor_l2::Owned>>>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SpeakerError>
where
    L: Link + Send + Sync + 'static,
    F: Facts + 'static,
{
    let (tracker, owned_rx) = OwnerTracker::new(speaker, me);
    let beat = health.register("ownership", STALLED_AFTER);
    let ownership = tokio::spawn(ownership::run(membership.live(), tracker, facts, beat.clone()));
    let mirror = mirror.map(|tx| {
        let mut rx = owned_rx.clone();
        tokio::spawn(async move {
            loop {
                tx.send_replace(rx.borrow_and_update().clone());
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
    });
    let result = speaker.run_owned(owned_rx, false, shutdown).await;
    ownership.abort();
    if let Some(m) = mirror {
        m.abort();
    }
    beat.done();
    membership.leave();
    tokio::time::sleep(Duration::from_millis(50)).await;
    result
}

/// Runs `speaker` as a member of a static group until `shutdown` (Ok) or a fatal error.
pub async fn run(
    p: &mut Prepared,
    me: &str,
    g: GroupConfig,
    health: &Health,
    members: tokio::sync::watch::Sender<Live>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SpeakerError> {
    let bind_ip = g
        .bind
        .or_else(|| {
            p.links.first().and_then(|l| l.subnets.iter().find(|n| n.is_ipv4()).or(l.subnets.first()).map(|n| n.ip()))
        })
        .ok_or_else(|| {
            SpeakerError::Gossip(
                "no address to bind gossip to; expected --gossip-bind or an address on the interface".into(),
            )
        })?;
    let bind = SocketAddr::new(bind_ip, g.port);
    // Said before the start: seeding the member's random numbers waits for the kernel's
    // entropy, which on a freshly booted VM without an RNG can take minutes.
    info!(%bind, "gossip starting");
    let membership = Membership::start(MemberConfig {
        name: me.to_owned(),
        macs: p.links.iter().map(|l| l.mac.0).collect(),
        bind,
        peers: g.join.clone(),
        sealer: g.sealer.clone(),
        timing: g.timing,
        hold: g.hold,
    })
    .await
    .map_err(|e| SpeakerError::Gossip(e.to_string()))?;
    let mut live = membership.live();
    // The live members and their MACs, for `/members` (the hypervisor mapping).
    let mut forward = membership.live();
    let publisher = tokio::spawn(async move {
        loop {
            members.send_replace(forward.borrow_and_update().clone());
            if forward.changed().await.is_err() {
                return;
            }
        }
    });
    info!(%bind, peers = ?g.join, "gossip started");
    // Give the group a moment to answer, so a joining node does not decide alone.
    if !g.join.is_empty() {
        let _ = tokio::time::timeout(g.settle, live.wait_for(|l| l.len() > 1)).await;
    }
    p.speaker.friends().watch(p.placed.iter().map(|(v, _)| *v));
    let facts = StaticFacts::new(&p.placed);
    let result = serve_mirrored(&p.speaker, me, &membership, facts, health, g.mirror.clone(), shutdown).await;
    p.groups.leave_all();
    publisher.abort();
    info!("speaker stopped");
    result
}
