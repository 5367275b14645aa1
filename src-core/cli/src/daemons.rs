//! The long-running modes: flags → the daemon crates' configurations, their HTTP surface
//! (metrics, health, readiness), and signals.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use vipvisor_gossip::group::{self, GroupConfig};
use vipvisor_gossip::membership::{self, GossipTiming, Live, MemberInfo, Sealer};
use vipvisor_health::Health;
use vipvisor_kube::controller::{self, ControllerConfig};
use vipvisor_kube::decide::ClassPolicy;
use vipvisor_kube::lease::LeaseConfig;
use vipvisor_kube::speaker::{self, KubeSpeakerConfig};
use vipvisor_l2::engine::Timing;
use vipvisor_l2::metrics::Metrics;
use vipvisor_l2::{Prepared, StaticConfig};

use crate::args::{ControllerArgs, SpeakerArgs};
use crate::http;

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into())
}

/// Reads the group's shared secret. Errors name the file, never its contents.
/// Only a regular file of at most 4 KiB is read (not `/dev/zero`, not a FIFO); a key file
/// that others may read gets a warning.
async fn read_key(path: &PathBuf) -> anyhow::Result<Sealer> {
    use std::os::unix::fs::PermissionsExt;
    let p = path.clone();
    let secret = tokio::task::spawn_blocking(move || {
        vipvisor_api::files::read_bounded(&p, membership::MAX_KEY_FILE_BYTES, "--gossip-key-file")
    })
    .await?
    .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(file = %path.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "the gossip key file is readable by every user; expected mode 0600 or 0640 (chmod o-r)");
        }
    }
    Sealer::new(&secret).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// The speaker's `/metrics` and `/healthz` (and a static speaker's `/members`), when
/// `--metrics-addr` asks for them.
async fn serve_metrics(
    a: &SpeakerArgs,
    metrics: &Metrics,
    health: &Health,
    members: Option<http::Members>,
) -> anyhow::Result<()> {
    if let Some(addr) = a.metrics_addr {
        let m = metrics.clone();
        http::serve(addr, http::router(move || m.encode(), health.clone(), None, members)).await?;
    }
    Ok(())
}

/// `--record`: writes what this member owns (and the MACs seen answering for the group's
/// VIPs, summed per second) to the store until `owned` closes; write errors are logged
/// and retried at the next change or second.
async fn record(
    app: vipvisor_api::App,
    node: String,
    links: Vec<(String, String)>,
    mut owned: tokio::sync::watch::Receiver<Vec<vipvisor_l2::Owned>>,
    mut seen: tokio::sync::mpsc::Receiver<vipvisor_l2::SightingReport>,
) {
    use std::collections::{BTreeMap, HashMap};
    use vipvisor_api::{OwnerClaim, OwnerScope};
    // Per (VIP, MAC, interface): how many, first and last seen.
    let mut counts: HashMap<(std::net::IpAddr, String, String), (i64, std::time::Instant, std::time::Instant)> =
        HashMap::new();
    let mut dirty = true;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            r = owned.changed() => {
                if r.is_err() { return }
                dirty = true;
            }
            s = seen.recv() => {
                let Some(s) = s else { return };
                let now = std::time::Instant::now();
                let e = counts.entry((s.vip, s.mac.to_string(), s.iface)).or_insert((0, now, now));
                e.0 += 1;
                e.2 = now;
                continue;
            }
            _ = tick.tick() => {}
        }
        if dirty {
            let claims: BTreeMap<_, _> = owned
                .borrow_and_update()
                .iter()
                .map(|o| {
                    let (iface, mac) = links.get(o.iface).cloned().unwrap_or_default();
                    (o.vip, OwnerClaim { address: o.vip, node: node.clone(), interface: iface, mac, source: "group" })
                })
                .collect();
            match app.set_owners("group", &claims, OwnerScope::Node(&node)).await {
                Ok(_) => dirty = false,
                Err(e) => tracing::warn!(error = %e.message, "could not record the owners in the store"),
            }
        }
        for ((vip, mac, iface), (n, first, last)) in std::mem::take(&mut counts) {
            if let Err(e) = app.saw(vip, &mac, &node, &iface, n, (first.elapsed(), last.elapsed())).await {
                tracing::warn!(error = %e.message, "could not record a sighting in the store");
            }
        }
    }
}

pub async fn run_speaker(a: &SpeakerArgs, record_to: Option<String>) -> anyhow::Result<()> {
    if a.garp_interval < Duration::from_millis(10) && !a.garp_duration.is_zero() {
        anyhow::bail!(
            "invalid --garp-interval {:?}; expected at least 10ms (or --garp-duration 0s for a single round)",
            a.garp_interval
        );
    }
    let node_name = a.node_name.clone().unwrap_or_else(hostname);
    let timing = Timing {
        garp_interval: a.garp_interval,
        garp_duration: a.garp_duration,
        refresh_interval: (!a.refresh_interval.is_zero()).then_some(a.refresh_interval),
        probe_timeout: a.probe_timeout,
        allow_conflicts: a.allow_conflicts,
        vmac_refresh: a.virtual_mac_refresh,
    };
    if a.gossip_probe_rtt.is_zero() || a.gossip_probe_rtt >= a.gossip_probe_period {
        anyhow::bail!(
            "invalid --gossip-probe-rtt {:?}; expected more than 0 and less than --gossip-probe-period {:?}",
            a.gossip_probe_rtt,
            a.gossip_probe_period
        );
    }
    if a.gossip_suspicion.is_zero() {
        anyhow::bail!("invalid --gossip-suspicion 0s; expected a duration such as 150ms");
    }
    let gossip_timing = GossipTiming {
        probe_period: a.gossip_probe_period,
        probe_rtt: a.gossip_probe_rtt,
        suspect_to_down: a.gossip_suspicion,
    };
    let metrics = Metrics::new();
    let health = Health::new();
    if a.kubernetes {
        let Some(path) = &a.gossip_key_file else {
            anyhow::bail!("--kubernetes needs --gossip-key-file: the speakers' gossip is authenticated");
        };
        let sealer = read_key(path).await?;
        let client = vipvisor_kube::client(a.kubeconfig.as_deref()).await.map_err(anyhow::Error::msg)?;
        serve_metrics(a, &metrics, &health, None).await?;
        let k = KubeSpeakerConfig {
            node_name,
            interfaces: a.interfaces.clone(),
            timing,
            gossip_port: a.gossip_port,
            gossip_bind: a.gossip_bind,
            sealer,
            gossip_timing,
            hold: a.hold_time,
            policy: ClassPolicy { class: a.class.clone(), serve_unclassed: !a.only_class },
            status_namespace: a.status_namespace.clone(),
        };
        return Ok(speaker::run(client, k, metrics, &health, shutdown_signal()).await?);
    }
    let mut group = match (&a.gossip_key_file, a.join.is_empty()) {
        (None, true) => None,
        (None, false) => anyhow::bail!("--join needs --gossip-key-file: the group's gossip is authenticated"),
        (Some(path), _) => Some(GroupConfig {
            bind: a.gossip_bind,
            port: a.gossip_port,
            join: a.join.clone(),
            sealer: read_key(path).await?,
            timing: gossip_timing,
            hold: a.hold_time,
            settle: Duration::from_secs(1),
            mirror: None,
        }),
    };
    let virtual_macs = if a.virtual_mac {
        if let Some((vip, _)) = a.virtual_mac_for.iter().find(|(v, _)| !a.vips.contains(v)) {
            anyhow::bail!("--virtual-mac-for {vip}: not one of the --vip addresses");
        }
        let explicit = a.virtual_mac_for.iter().copied().collect();
        vipvisor_l2::vmac::plan(&a.vips, a.virtual_mac_group, &explicit).map_err(anyhow::Error::msg)?
    } else {
        Default::default()
    };
    let members_vmacs = virtual_macs.iter().map(|(v, m)| (*v, vipvisor_provider::Mac(m.0))).collect();
    let cfg = StaticConfig {
        interfaces: a.interfaces.clone(),
        vips: a.vips.clone(),
        node_name: node_name.clone(),
        timing,
        virtual_macs,
    };
    let mut prepared = Prepared::open(&cfg, metrics.clone(), &health)?;
    // Alone, the node is its only member; in a group, the gossip says who is live.
    let me = MemberInfo { settled: true, macs: prepared.links.iter().map(|l| l.mac.0).collect() };
    let (members_tx, live) = tokio::sync::watch::channel(Live::from([(node_name.clone(), me)]));
    let members = http::Members { vips: a.vips.clone(), live, virtual_macs: members_vmacs };
    serve_metrics(a, &metrics, &health, Some(members)).await?;
    let recorder = match &record_to {
        None => None,
        Some(url) => {
            let Some(g) = group.as_mut() else {
                anyhow::bail!(
                    "--record needs a group (--join and --gossip-key-file): a lone speaker has no failovers to record"
                );
            };
            let app = vipvisor_api::App::open(url, &format!("speaker:{node_name}"), Duration::ZERO)
                .await
                .map_err(|e| anyhow::anyhow!(crate::render::error_text(&e)))?;
            let (tx, rx) = tokio::sync::watch::channel(Vec::new());
            g.mirror = Some(tx);
            let (seen_tx, seen_rx) = tokio::sync::mpsc::channel(1024);
            prepared.speaker.report_sightings(seen_tx);
            let links = prepared.links.iter().map(|l| (l.name.clone(), l.mac.to_string())).collect();
            Some((app.clone(), tokio::spawn(record(app, node_name.clone(), links, rx, seen_rx))))
        }
    };
    let result = match group {
        None => prepared.run_alone(&node_name, shutdown_signal()).await,
        Some(g) => group::run(&mut prepared, &node_name, g, &health, members_tx, shutdown_signal()).await,
    };
    if let Some((app, task)) = recorder {
        task.abort();
        // Stopped: this member announces nothing any more (the takeover's gap is measured
        // from here).
        let none = std::collections::BTreeMap::new();
        if let Err(e) = app.set_owners("group", &none, vipvisor_api::OwnerScope::Node(&node_name)).await {
            tracing::warn!(error = %e.message, "could not record in the store that this member stopped");
        }
        app.close().await;
    }
    result?;
    Ok(())
}

pub async fn run_controller(a: &ControllerArgs, store_url: String, quarantine: Duration) -> anyhow::Result<()> {
    if a.lease_renew >= a.lease_duration {
        anyhow::bail!(
            "invalid --lease-renew {:?}; expected less than --lease-duration {:?}",
            a.lease_renew,
            a.lease_duration
        );
    }
    // Users' own Kubernetes tokens never cross a network in clear text.
    if let (Some(addr), crate::args::ServeAuth::Kubernetes, None) = (a.serve, a.serve_auth, &a.serve_tls_cert) {
        if !addr.ip().is_loopback() {
            anyhow::bail!(
                "--serve-auth kubernetes on {addr} without TLS would carry users' Kubernetes tokens in clear text; expected --serve-tls-cert and --serve-tls-key, or a loopback --serve address"
            );
        }
    }
    let metrics = controller::Metrics::new();
    // The whole provider file is checked before anything else is done.
    let providers = match &a.providers {
        Some(p) => Some(Arc::new(crate::hypervisor::load(p)?.observed(metrics.provider_observer()))),
        None => None,
    };
    let client = vipvisor_kube::client(a.kubeconfig.as_deref()).await.map_err(anyhow::Error::msg)?;
    let identity = a.identity.clone().unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let cfg = ControllerConfig {
        store_url,
        pools_file: a.pools.clone(),
        policy: ClassPolicy { class: a.class.clone(), serve_unclassed: !a.only_class },
        lease: LeaseConfig {
            namespace: a.lease_namespace.clone(),
            name: a.lease_name.clone(),
            identity,
            duration: a.lease_duration,
            renew_every: a.lease_renew,
        },
        quarantine,
        speaker_namespace: a.speaker_namespace.clone(),
        providers,
        serve: a.serve,
        serve_kubernetes_auth: a.serve_auth == crate::args::ServeAuth::Kubernetes,
        serve_tls: match (&a.serve_tls_cert, &a.serve_tls_key) {
            (Some(cert), Some(key)) => Some(vipvisor_server::TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        },
        virtual_mac_group: a.virtual_mac_group,
    };
    let health = Health::new();
    let (phase, phase_rx) = tokio::sync::watch::channel(controller::Phase::Starting);
    if let Some(addr) = a.metrics_addr {
        let m = metrics.clone();
        http::serve(addr, http::router(move || m.encode(), health.clone(), Some(phase_rx), None)).await?;
    }
    Ok(controller::run(client, cfg, health, metrics, phase, shutdown_signal()).await?)
}
