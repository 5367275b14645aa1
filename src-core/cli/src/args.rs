//! The `vipvisor` command line: parsing (clap) and rendering (table or JSON).
//! Output is built completely before anything is printed, so a failing command prints
//! nothing on stdout.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Serialize;
use serde_json::json;

use crate::config::read_pools_file;
use crate::ipam::FamilyStats;
use crate::model::{
    parse_labels, AddressBlock, AllocRequest, FamilyRequest, Labels, Pool, PoolName, PoolOptions, Port, Reservation,
    ServiceKey, SharingKey, Timestamp, Uid,
};
use crate::store::{ConfigReport, Store};

#[derive(Debug, Parser)]
#[command(
    name = "vipvisor",
    version,
    about = "LoadBalancer VIPs for on-prem Kubernetes: IPAM, announcements, hypervisor grants"
)]
pub struct Cli {
    /// Store URL (sqlite://PATH). Default: sqlite:// under $XDG_DATA_HOME/vipvisor/vipvisor.db.
    #[arg(long, global = true, env = "VIPVISOR_STORE")]
    pub store: Option<String>,
    /// Output format of every command.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Name recorded in the audit log for changes (default: cli:$USER).
    #[arg(long, global = true, env = "VIPVISOR_ACTOR")]
    pub actor: Option<String>,
    /// How long a released address stays reserved for its last holder.
    #[arg(long, global = true, env = "VIPVISOR_QUARANTINE", default_value = "60s", value_parser = parse_duration)]
    pub quarantine: Duration,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage address pools.
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Manage reserved addresses, never handed out.
    #[command(subcommand)]
    Reserve(ReserveCmd),
    /// Allocate and release service addresses.
    #[command(subcommand)]
    Alloc(AllocCmd),
    /// Make the store hold the pools and reservations of a file (idempotent).
    Apply {
        /// The pools file (YAML); see examples/pools.yaml.
        #[arg(short = 'f', long = "file")]
        file: String,
        /// Also remove pools and reservations that are not in the file.
        #[arg(long)]
        prune: bool,
        /// Release allocations that the change leaves outside every pool (recorded).
        #[arg(long)]
        force: bool,
    },
    /// Announce VIPs with ARP/NDP on interfaces until SIGTERM/SIGINT (static mode, no
    /// Kubernetes). Exit code 3: an address conflict was found and the VIP not announced.
    Speaker(SpeakerArgs),
    /// Run the Kubernetes LoadBalancer controller (with leader election) until SIGTERM.
    Controller(ControllerArgs),
    /// Show the audit log.
    Events {
        /// Only events since this time: a duration ago (1h, 30m) or an RFC 3339 time.
        #[arg(long, value_parser = parse_since)]
        since: Option<SinceArg>,
        /// At most this many (the newest).
        #[arg(long)]
        limit: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// Create a pool.
    Add(PoolAdd),
    /// List pools with their usage.
    List,
    /// Show a pool: blocks, options, and size/used/free/quarantined per family.
    Show { name: PoolName },
    /// Remove a pool (refused while its addresses are in use, unless --force).
    Rm {
        name: PoolName,
        /// Release the pool's allocations (recorded in the audit log).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct PoolAdd {
    pub name: PoolName,
    /// Blocks: CIDR (192.0.2.0/28), range (198.51.100.10-198.51.100.20) or address, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub addresses: Vec<AddressBlock>,
    /// Only hand out this pool's addresses when a service names the pool or an address.
    #[arg(long)]
    pub no_auto_assign: bool,
    /// Skip addresses ending in .0 and .255.
    #[arg(long)]
    pub avoid_buggy_ips: bool,
    /// Namespaces allowed to use the pool (default: all).
    #[arg(long, value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// Namespace labels required to use the pool: k=v[,k=v].
    #[arg(long, value_parser = parse_labels)]
    pub namespace_selector: Option<Labels>,
    /// Service labels required to use the pool: k=v[,k=v].
    #[arg(long, value_parser = parse_labels)]
    pub service_selector: Option<Labels>,
    /// Lower is tried first; pools without a priority come last.
    #[arg(long)]
    pub priority: Option<u32>,
}

#[derive(Debug, Subcommand)]
pub enum ReserveCmd {
    /// Reserve an address or block.
    Add {
        block: AddressBlock,
        #[arg(long, default_value = "")]
        note: String,
        /// Release allocations that hold reserved addresses (recorded).
        #[arg(long)]
        force: bool,
    },
    /// List reservations.
    List,
    /// Remove a reservation.
    Rm { block: AddressBlock },
}

#[derive(Debug, Subcommand)]
pub enum AllocCmd {
    /// Give a service addresses (idempotent).
    Request(AllocRequestArgs),
    /// Release a service's addresses (quarantined for --quarantine).
    Release {
        service: ServiceKey,
        /// Only release if the service's recorded UID is this one.
        #[arg(long)]
        uid: Option<Uid>,
    },
    /// List allocations.
    List,
}

#[derive(Debug, Args)]
pub struct AllocRequestArgs {
    /// NAMESPACE/NAME of the service.
    pub service: ServiceKey,
    #[arg(long)]
    pub uid: Option<Uid>,
    /// Specific addresses (one per family), comma-separated.
    #[arg(long = "ip", value_delimiter = ',')]
    pub ips: Vec<IpAddr>,
    #[arg(long)]
    pub pool: Option<PoolName>,
    #[arg(long, value_enum)]
    pub family: Option<FamilyArg>,
    #[arg(long)]
    pub sharing_key: Option<SharingKey>,
    /// Ports the service uses: tcp/80,udp/53.
    #[arg(long, value_delimiter = ',')]
    pub ports: Vec<Port>,
    /// Labels of the service's namespace: k=v[,k=v].
    #[arg(long, value_parser = parse_labels)]
    pub namespace_labels: Option<Labels>,
    /// Labels of the service: k=v[,k=v].
    #[arg(long, value_parser = parse_labels)]
    pub labels: Option<Labels>,
}

#[derive(Debug, Args)]
pub struct SpeakerArgs {
    /// Kubernetes mode (the DaemonSet): announce the addresses of LoadBalancer Services,
    /// one owner per VIP among the speakers of Ready nodes.
    #[arg(long, conflicts_with_all = ["vips", "join"])]
    pub kubernetes: bool,
    /// Kubeconfig file (Kubernetes mode; default: $KUBECONFIG, ~/.kube/config, or the
    /// in-cluster config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Interface to answer on (repeat for several); each VIP goes to the first interface
    /// with a subnet that contains it. Kubernetes mode default: every interface that is up
    /// with a MAC and a global address, except container and tunnel interfaces.
    #[arg(long = "interface", required_unless_present = "kubernetes")]
    pub interfaces: Vec<String>,
    /// VIP to announce (IPv4 or IPv6; repeat for several).
    #[arg(long = "vip", required_unless_present = "kubernetes")]
    pub vips: Vec<IpAddr>,
    /// Name of this node: its Node object in Kubernetes mode (default: $NODE_NAME, else
    /// the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// The loadBalancerClass whose Services are announced (Kubernetes mode).
    #[arg(long, default_value = "vipvisor.io/lb")]
    pub class: String,
    /// Do not announce LoadBalancer Services that have no loadBalancerClass.
    #[arg(long)]
    pub only_class: bool,
    /// Spacing of gratuitous rounds after gaining a VIP.
    #[arg(long, default_value = "1.1s", value_parser = parse_duration)]
    pub garp_interval: Duration,
    /// How long gratuitous rounds go on after gaining a VIP.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub garp_duration: Duration,
    /// Re-announce every VIP this often once the burst is over (0s: off).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub refresh_interval: Duration,
    /// How long to listen for another owner before announcing (0s: no probe).
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub probe_timeout: Duration,
    /// Announce a VIP even if another host answers the probe.
    #[arg(long)]
    pub allow_conflicts: bool,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9472).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Group mode: a peer's gossip address (repeat). Every member gets the same --vip list
    /// and one owner announces each VIP.
    #[arg(long = "join")]
    pub join: Vec<std::net::SocketAddr>,
    /// File holding the group's shared secret (e.g. `head -c 32 /dev/urandom | base64`).
    #[arg(long)]
    pub gossip_key_file: Option<PathBuf>,
    /// UDP port of the gossip protocol.
    #[arg(long, default_value_t = 7946)]
    pub gossip_port: u16,
    /// Address to bind gossip to (default: the interface's first address).
    #[arg(long)]
    pub gossip_bind: Option<IpAddr>,
    /// Gossip: how often each member probes another (failure detection speed vs traffic).
    #[arg(long, default_value = "70ms", value_parser = parse_duration)]
    pub gossip_probe_period: Duration,
    /// Gossip: how long a direct probe waits for its ack before asking others to probe.
    #[arg(long, default_value = "30ms", value_parser = parse_duration)]
    pub gossip_probe_rtt: Duration,
    /// Gossip: how long a suspected member has to refute before it is declared down.
    #[arg(long, default_value = "120ms", value_parser = parse_duration)]
    pub gossip_suspicion: Duration,
    /// A member takes VIPs from others only after it has been up this long (no flapping).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub hold_time: Duration,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or the in-cluster config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Pools file (same YAML as `vipvisor apply`), applied with prune at start and on change.
    #[arg(long)]
    pub pools: Option<PathBuf>,
    /// The loadBalancerClass this controller serves.
    #[arg(long, default_value = "vipvisor.io/lb")]
    pub class: String,
    /// Do not serve LoadBalancer Services that have no loadBalancerClass.
    #[arg(long)]
    pub only_class: bool,
    /// Namespace and name of the leader-election Lease.
    #[arg(long, default_value = "vipvisor-system")]
    pub lease_namespace: String,
    #[arg(long, default_value = "vipvisor-controller")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: $POD_NAME, else the host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a Lease stays valid without renewal.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often the holder renews (and standbys retry).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub lease_renew: Duration,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    Ipv4,
    Ipv6,
    Dual,
}

#[derive(Debug, Clone, Copy)]
pub enum SinceArg {
    Ago(Duration),
    At(Timestamp),
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; expected a duration such as 60s, 5m or 0s"))
}

fn parse_since(s: &str) -> Result<SinceArg, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(SinceArg::Ago(d));
    }
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|_| "expected a duration ago (1h, 30m) or an RFC 3339 time (2026-11-25T10:00:00Z)".to_string())?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_millis();
    Ok(SinceArg::At(Timestamp(i64::try_from(ms).unwrap_or(i64::MAX))))
}

/// The default store URL: `$XDG_DATA_HOME/vipvisor/vipvisor.db` (or `~/.local/share/…`).
pub fn default_store_url() -> anyhow::Result<String> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or_else(|| {
                anyhow::anyhow!("neither XDG_DATA_HOME nor HOME is set; expected one, or --store URL")
            })?;
            std::path::PathBuf::from(home).join(".local/share")
        }
    };
    Ok(format!("sqlite://{}", base.join("vipvisor/vipvisor.db").display()))
}

/// Runs a parsed command; returns the text to print on stdout.
pub async fn run(cli: Cli) -> anyhow::Result<String> {
    if let Command::Speaker(a) = &cli.command {
        run_speaker(a).await?;
        return Ok(String::new());
    }
    if let Command::Controller(a) = &cli.command {
        let url = match &cli.store {
            Some(u) => u.clone(),
            None => "sqlite:///var/lib/vipvisor/vipvisor.db".to_string(),
        };
        run_controller(a, url, cli.quarantine).await?;
        return Ok(String::new());
    }
    let url = match &cli.store {
        Some(u) => u.clone(),
        None => default_store_url()?,
    };
    let actor = cli
        .actor
        .clone()
        .unwrap_or_else(|| format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into())));
    let store = Store::open(&url).await?.with_actor(actor);
    let out = execute(&store, &cli).await;
    store.close().await;
    out
}

async fn run_speaker(a: &SpeakerArgs) -> anyhow::Result<()> {
    if a.garp_interval < Duration::from_millis(10) && !a.garp_duration.is_zero() {
        anyhow::bail!(
            "invalid --garp-interval {:?}; expected at least 10ms (or --garp-duration 0s for a single round)",
            a.garp_interval
        );
    }
    let node_name = match &a.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into()),
    };
    let cfg = crate::announce::StaticConfig {
        interfaces: a.interfaces.clone(),
        vips: a.vips.clone(),
        node_name,
        timing: crate::announce::engine::Timing {
            garp_interval: a.garp_interval,
            garp_duration: a.garp_duration,
            refresh_interval: (!a.refresh_interval.is_zero()).then_some(a.refresh_interval),
            probe_timeout: a.probe_timeout,
            allow_conflicts: a.allow_conflicts,
        },
        metrics_addr: a.metrics_addr,
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
    let gossip_timing = crate::membership::GossipTiming {
        probe_period: a.gossip_probe_period,
        probe_rtt: a.gossip_probe_rtt,
        suspect_to_down: a.gossip_suspicion,
    };
    let read_key = |path: &PathBuf| -> anyhow::Result<crate::membership::Sealer> {
        let secret = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("cannot read --gossip-key-file {}: {e}", path.display()))?;
        crate::membership::Sealer::new(&secret).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    };
    if a.kubernetes {
        let Some(path) = &a.gossip_key_file else {
            anyhow::bail!("--kubernetes needs --gossip-key-file: the speakers' gossip is authenticated");
        };
        let sealer = read_key(path)?;
        let client = kube_client(a.kubeconfig.as_deref()).await?;
        let k = crate::cluster::speaker::KubeSpeakerConfig {
            node_name: cfg.node_name,
            interfaces: cfg.interfaces,
            timing: cfg.timing,
            metrics_addr: cfg.metrics_addr,
            gossip_port: a.gossip_port,
            gossip_bind: a.gossip_bind,
            sealer,
            gossip_timing,
            hold: a.hold_time,
            policy: crate::cluster::decide::ClassPolicy { class: a.class.clone(), serve_unclassed: !a.only_class },
        };
        return crate::cluster::speaker::run(client, k, shutdown_signal()).await;
    }
    let group = match (&a.gossip_key_file, a.join.is_empty()) {
        (None, true) => None,
        (None, false) => anyhow::bail!("--join needs --gossip-key-file: the group's gossip is authenticated"),
        (Some(path), _) => Some(crate::announce::GroupConfig {
            bind: a.gossip_bind,
            port: a.gossip_port,
            join: a.join.clone(),
            sealer: read_key(path)?,
            timing: gossip_timing,
            hold: a.hold_time,
            settle: Duration::from_secs(1),
        }),
    };
    crate::announce::run_static(cfg, group, shutdown_signal()).await?;
    Ok(())
}

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

/// A client from `kubeconfig`, else the default chain ($KUBECONFIG, ~/.kube/config, in-cluster).
async fn kube_client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("cannot read kubeconfig {}: {e}", path.display()))?;
            let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("invalid kubeconfig {}: {e}", path.display()))?;
            kube::Client::try_from(config)?
        }
        None => kube::Client::try_default().await.map_err(|e| anyhow::anyhow!("no Kubernetes configuration: {e}"))?,
    })
}

async fn run_controller(a: &ControllerArgs, store_url: String, quarantine: Duration) -> anyhow::Result<()> {
    if a.lease_renew >= a.lease_duration {
        anyhow::bail!(
            "invalid --lease-renew {:?}; expected less than --lease-duration {:?}",
            a.lease_renew,
            a.lease_duration
        );
    }
    let client = kube_client(a.kubeconfig.as_deref()).await?;
    let identity = a.identity.clone().unwrap_or_else(|| {
        let host =
            nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "unknown".into());
        format!("{host}-{}", std::process::id())
    });
    let cfg = crate::cluster::ControllerConfig {
        store_url,
        pools_file: a.pools.clone(),
        policy: crate::cluster::decide::ClassPolicy { class: a.class.clone(), serve_unclassed: !a.only_class },
        lease: crate::cluster::lease::LeaseConfig {
            namespace: a.lease_namespace.clone(),
            name: a.lease_name.clone(),
            identity,
            duration: a.lease_duration,
            renew_every: a.lease_renew,
        },
        metrics_addr: a.metrics_addr,
        quarantine,
    };
    crate::cluster::run(client, cfg, shutdown_signal()).await
}

async fn execute(store: &Store, cli: &Cli) -> anyhow::Result<String> {
    let now = Timestamp::now();
    let fmt = cli.output;
    match &cli.command {
        Command::Pool(PoolCmd::Add(a)) => {
            let opts = PoolOptions {
                auto_assign: !a.no_auto_assign,
                avoid_buggy_ips: a.avoid_buggy_ips,
                namespaces: a.namespaces.iter().cloned().collect(),
                namespace_selector: a.namespace_selector.clone().unwrap_or_default(),
                service_selector: a.service_selector.clone().unwrap_or_default(),
                priority: a.priority,
            };
            let pool = Pool::new(a.name.clone(), a.addresses.clone(), opts)?;
            let report = store.add_pool(pool.clone(), now).await?;
            render(fmt, &report, || format!("pool {} created: {}\n", pool.name, blocks_text(&pool)))
        }
        Command::Pool(PoolCmd::List) => {
            let ipam = store.snapshot().await?;
            let rows: Vec<PoolView> = ipam
                .pools()
                .map(|p| PoolView { pool: p.clone(), families: ipam.stats(&p.name).unwrap_or_default() })
                .collect();
            render(fmt, &rows, || {
                let mut t = vec![row(["NAME", "ADDRESSES", "AUTO", "PRIORITY", "SIZE", "USED", "FREE"])];
                for v in &rows {
                    let sum = |f: fn(&FamilyStats) -> u128| v.families.iter().map(f).fold(0u128, u128::saturating_add);
                    t.push(vec![
                        v.pool.name.to_string(),
                        blocks_text(&v.pool),
                        v.pool.auto_assign.to_string(),
                        v.pool.priority.map_or("-".into(), |p| p.to_string()),
                        sum(|s| s.size).to_string(),
                        sum(|s| s.used).to_string(),
                        sum(|s| s.free).to_string(),
                    ]);
                }
                table(&t)
            })
        }
        Command::Pool(PoolCmd::Show { name }) => {
            let ipam = store.snapshot().await?;
            let pool = ipam.pool(name).ok_or_else(|| crate::store::StoreError::UnknownPool(name.clone()))?;
            let view = PoolView { pool: pool.clone(), families: ipam.stats(name).unwrap_or_default() };
            render(fmt, &view, || {
                let p = &view.pool;
                let mut s = format!(
                    "name:               {}\naddresses:          {}\nauto_assign:        {}\navoid_buggy_ips:    {}\nnamespaces:         {}\nnamespace_selector: {}\nservice_selector:   {}\npriority:           {}\n\n",
                    p.name,
                    blocks_text(p),
                    p.auto_assign,
                    p.avoid_buggy_ips,
                    if p.namespaces.is_empty() { "(all)".into() } else { p.namespaces.iter().cloned().collect::<Vec<_>>().join(",") },
                    labels_text(&p.namespace_selector),
                    labels_text(&p.service_selector),
                    p.priority.map_or("-".into(), |x| x.to_string()),
                );
                let mut t = vec![row(["FAMILY", "SIZE", "RESERVED", "USED", "QUARANTINED", "FREE"])];
                for f in &view.families {
                    t.push(vec![
                        f.family.to_string(),
                        f.size.to_string(),
                        f.reserved.to_string(),
                        f.used.to_string(),
                        f.quarantined.to_string(),
                        f.free.to_string(),
                    ]);
                }
                s.push_str(&table(&t));
                s
            })
        }
        Command::Pool(PoolCmd::Rm { name, force }) => {
            let report = store.remove_pool(name, *force, now).await?;
            render(fmt, &report, || {
                let mut s = format!("pool {name} removed\n");
                s.push_str(&released_text(&report));
                s
            })
        }
        Command::Reserve(ReserveCmd::Add { block, note, force }) => {
            let report = store.add_reservation(Reservation { block: *block, note: note.clone() }, *force, now).await?;
            render(fmt, &report, || format!("reserved {block}\n{}", released_text(&report)))
        }
        Command::Reserve(ReserveCmd::List) => {
            let ipam = store.snapshot().await?;
            let rows: Vec<&Reservation> = ipam.reservations().collect();
            render(fmt, &rows, || {
                let mut t = vec![row(["BLOCK", "NOTE"])];
                t.extend(rows.iter().map(|r| vec![r.block.to_string(), r.note.clone()]));
                table(&t)
            })
        }
        Command::Reserve(ReserveCmd::Rm { block }) => {
            let report = store.remove_reservation(block, now).await?;
            render(fmt, &report, || format!("reservation {block} removed\n"))
        }
        Command::Alloc(AllocCmd::Request(a)) => {
            let req = AllocRequest {
                service: a.service.clone(),
                uid: a.uid.clone(),
                addresses: a.ips.clone(),
                pool: a.pool.clone(),
                family: a.family.map(|f| match f {
                    FamilyArg::Ipv4 => FamilyRequest::Ipv4,
                    FamilyArg::Ipv6 => FamilyRequest::Ipv6,
                    FamilyArg::Dual => FamilyRequest::Dual,
                }),
                sharing_key: a.sharing_key.clone(),
                ports: a.ports.iter().copied().collect(),
                namespace_labels: a.namespace_labels.clone().unwrap_or_default(),
                service_labels: a.labels.clone().unwrap_or_default(),
            };
            let o = store.allocate(&req, now, cli.quarantine).await?;
            let view = json!({
                "service": o.allocation.service,
                "addresses": o.allocation.addresses,
                "pool": o.allocation.pool,
            });
            render(fmt, &view, || {
                let change = match o.change {
                    crate::ipam::Change::Created => "allocated",
                    crate::ipam::Change::Updated => "updated",
                    crate::ipam::Change::Unchanged => "unchanged",
                };
                format!(
                    "{} {} from pool {} ({change})\n",
                    o.allocation.service,
                    addrs_text(&o.allocation.addresses),
                    o.allocation.pool
                )
            })
        }
        Command::Alloc(AllocCmd::Release { service, uid }) => {
            let r = store.release(service, uid.as_ref(), now, cli.quarantine).await?;
            let addresses: Vec<IpAddr> = r.as_ref().map(|r| r.allocation.addresses.clone()).unwrap_or_default();
            let until = r.as_ref().and_then(|r| r.quarantined.first()).map(|q| q.until.rfc3339());
            let view = json!({"service": service, "released": addresses, "quarantined_until": until});
            render(fmt, &view, || match &r {
                None => format!("{service} held no addresses; nothing to release\n"),
                Some(r) => format!(
                    "{service} released {}{}\n",
                    addrs_text(&r.allocation.addresses),
                    until.as_ref().map(|u| format!(" (quarantined until {u})")).unwrap_or_default()
                ),
            })
        }
        Command::Alloc(AllocCmd::List) => {
            let ipam = store.snapshot().await?;
            let rows = ipam.allocations();
            render(fmt, &rows, || {
                let mut t = vec![row(["SERVICE", "ADDRESSES", "POOL", "SHARING-KEY", "PORTS", "UID"])];
                for a in &rows {
                    t.push(vec![
                        a.service.to_string(),
                        addrs_text(&a.addresses),
                        a.pool.to_string(),
                        a.sharing_key.as_ref().map_or("-".into(), ToString::to_string),
                        if a.ports.is_empty() {
                            "-".into()
                        } else {
                            a.ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                        },
                        a.uid.as_ref().map_or("-".into(), ToString::to_string),
                    ]);
                }
                table(&t)
            })
        }
        Command::Apply { file, prune, force } => {
            let desired = read_pools_file(file)?;
            let report = store.apply(desired, *prune, *force, now).await?;
            render(fmt, &report, || {
                let mut s = String::new();
                for c in report.pools.iter() {
                    s.push_str(&format!("pool {} {}\n", c.name, c.action));
                }
                for c in report.reservations.iter() {
                    s.push_str(&format!("reservation {} {}\n", c.name, c.action));
                }
                s.push_str(&released_text(&report));
                if !report.changed {
                    s.push_str("no changes\n");
                }
                s
            })
        }
        Command::Speaker(_) | Command::Controller(_) => anyhow::bail!("long-running modes are started by run()"),
        Command::Events { since, limit } => {
            let since = since.map(|s| match s {
                SinceArg::At(t) => t,
                SinceArg::Ago(d) => Timestamp(now.0.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
            });
            let events = store.events(since, *limit).await?;
            render(fmt, &events, || {
                let mut t = vec![row(["ID", "TIME", "ACTOR", "KIND", "SUBJECT", "DETAIL"])];
                for e in &events {
                    t.push(vec![
                        e.id.to_string(),
                        e.at.clone(),
                        e.actor.clone(),
                        e.kind.clone(),
                        e.subject.clone(),
                        e.detail.to_string(),
                    ]);
                }
                table(&t)
            })
        }
    }
}

#[derive(Debug, Serialize)]
struct PoolView {
    #[serde(flatten)]
    pool: Pool,
    families: Vec<FamilyStats>,
}

fn render<T: Serialize + ?Sized>(fmt: Format, value: &T, text: impl FnOnce() -> String) -> anyhow::Result<String> {
    Ok(match fmt {
        Format::Json => serde_json::to_string_pretty(value)? + "\n",
        Format::Table => text(),
    })
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|s| (*s).to_string()).collect()
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| if i + 1 == r.len() { s.clone() } else { format!("{s:<w$}", w = widths[i]) })
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn blocks_text(p: &Pool) -> String {
    p.addresses.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn addrs_text(a: &[IpAddr]) -> String {
    a.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

fn labels_text(l: &Labels) -> String {
    if l.is_empty() {
        return "-".into();
    }
    l.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

fn released_text(r: &ConfigReport) -> String {
    r.released.iter().map(|a| format!("released {} from {} (forced)\n", addrs_text(&a.addresses), a.service)).collect()
}
