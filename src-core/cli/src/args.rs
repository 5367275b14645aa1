//! The command line's grammar (clap). Values are parsed into domain types here, at the
//! edge; the commands themselves are in [`crate::commands`] and [`crate::daemons`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use vipvisor_model::{parse_labels, AddressBlock, Labels, PoolName, Port, ServiceKey, SharingKey, Timestamp, Uid};

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
    #[arg(long, global = true, env = "VIPVISOR_ACTOR", value_parser = parse_actor)]
    pub actor: Option<String>,
    /// How long a released address stays reserved for its last holder.
    #[arg(long, global = true, env = "VIPVISOR_QUARANTINE", default_value = "60s", value_parser = between("0s", "365d"))]
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
        /// With --prune, accept a file with no pool (which removes every pool).
        #[arg(long, requires = "prune")]
        allow_empty: bool,
        /// Release allocations that the change leaves outside every pool (recorded).
        #[arg(long)]
        force: bool,
    },
    /// Announce VIPs with ARP/NDP on interfaces until SIGTERM/SIGINT (static mode, no
    /// Kubernetes). Exit code 3: an address conflict was found and the VIP not announced.
    Speaker(SpeakerArgs),
    /// Run the Kubernetes LoadBalancer controller (with leader election) until SIGTERM.
    Controller(ControllerArgs),
    /// Let the nodes' VMs announce their VIPs through the hypervisor's filters (libvirt).
    #[command(subcommand)]
    Hypervisor(HypervisorCmd),
    /// Manage the API tokens of `vipvisor serve` (shown once, stored hashed).
    #[command(subcommand)]
    Token(TokenCmd),
    /// Serve the API (REST JSON under /api/v1, bearer tokens) until SIGTERM/SIGINT.
    Serve(ServeArgs),
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

impl Command {
    /// Commands that only read the store (they open it read-only).
    pub fn reads_only(&self) -> bool {
        matches!(
            self,
            Command::Pool(PoolCmd::List | PoolCmd::Show { .. })
                | Command::Reserve(ReserveCmd::List)
                | Command::Alloc(AllocCmd::List)
                | Command::Events { .. }
                | Command::Token(TokenCmd::List)
        )
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create a token; it is printed once (`-o json`: {"name","role","token"}).
    Create {
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// List the tokens (names and roles, never the secrets).
    List,
    /// Revoke a token: it is refused from now on.
    Revoke { name: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Reads everything.
    Viewer,
    /// Reads and writes.
    Admin,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (loopback by default: put TLS in front before exposing it).
    #[arg(long, default_value = "127.0.0.1:8470")]
    pub listen: std::net::SocketAddr,
    /// TLS: the certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM); needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The provider file (see README "Provider file"): the web UI's hypervisor page then
    /// diagnoses the nodes' NICs and offers the fix (dry run, apply, undo) to admins.
    #[arg(long)]
    pub providers: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum HypervisorCmd {
    /// Every provider's VMs with their NICs (MAC, network, bridge, filter).
    Inventory {
        /// The provider file (YAML; see README "Provider file").
        #[arg(long)]
        providers: PathBuf,
    },
    /// Will these VIPs be dropped on these nodes, and why: one line per finding. Exit code
    /// 0 when nothing blocks, 4 when something does.
    Diagnose {
        #[arg(long)]
        providers: PathBuf,
        /// A node (repeat for several).
        #[arg(long = "node", required_unless_present = "speaker")]
        nodes: Vec<String>,
        /// A static speaker's `--metrics-addr` (host:port): its group's live members are
        /// the nodes, found by their MACs, and its VIPs the VIPs (unless --vip).
        #[arg(long)]
        speaker: Option<std::net::SocketAddr>,
        /// VIPs to check, comma-separated.
        #[arg(long = "vip", value_delimiter = ',')]
        vips: Vec<IpAddr>,
        /// Ask about the virtual-MAC need too: may each node send from and receive for
        /// each VIP's virtual MAC (with --speaker: the group's own MACs).
        #[arg(long)]
        virtual_mac: bool,
        /// The group id of the derived virtual MACs (the speakers' --virtual-mac-group).
        #[arg(long, default_value_t = 0, requires = "virtual_mac")]
        virtual_mac_group: u8,
    },
    /// Grant VIPs on every listed node (every candidate, so a failover never waits on the
    /// hypervisor); recorded in the store. Without --vip and --node: every allocation's
    /// addresses in the store, on every node of the provider file's `nodes:`. With
    /// --speaker: a static group's VIPs on all its live members (all are candidates),
    /// their VMs found by the MACs the members gossip.
    Apply {
        #[arg(long)]
        providers: PathBuf,
        #[arg(long = "vip", value_delimiter = ',')]
        vips: Vec<IpAddr>,
        #[arg(long = "node", conflicts_with = "speaker")]
        nodes: Vec<String>,
        /// A static speaker's `--metrics-addr` (host:port), asked for `/members` (and, in
        /// virtual-MAC mode, its VIPs' MACs, which are granted too).
        #[arg(long)]
        speaker: Option<std::net::SocketAddr>,
        /// Also grant each VIP's virtual MAC (derived in --virtual-mac-group).
        #[arg(long, conflicts_with = "speaker")]
        virtual_mac: bool,
        #[arg(long, default_value_t = 0, requires = "virtual_mac")]
        virtual_mac_group: u8,
    },
    /// Take back what vipvisor added: for one VIP, one node, or everything.
    Revert {
        #[arg(long)]
        providers: PathBuf,
        #[arg(long)]
        vip: Option<IpAddr>,
        #[arg(long)]
        node: Option<String>,
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
    /// Which MAC answers for the pool's addresses: `node` (the owner node's) or `virtual`
    /// (each VIP's own, which moves with it; see the README).
    #[arg(long, default_value = "node")]
    pub mac: vipvisor_model::MacMode,
}

#[derive(Debug, Subcommand)]
pub enum ReserveCmd {
    /// Reserve an address or block.
    Add {
        block: AddressBlock,
        /// Free text, at most 1024 bytes.
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
    /// Namespace of this node's ServiceL2Status, where it reports what it announces
    /// (Kubernetes mode; the DaemonSet's own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "vipvisor-speaker")]
    pub status_namespace: String,
    /// Spacing of gratuitous rounds after gaining a VIP.
    #[arg(long, default_value = "1.1s", value_parser = between("10ms", "60s"))]
    pub garp_interval: Duration,
    /// How long gratuitous rounds go on after gaining a VIP.
    #[arg(long, default_value = "5s", value_parser = between("0s", "1h"))]
    pub garp_duration: Duration,
    /// Re-announce every VIP this often once the burst is over (0s: off).
    #[arg(long, default_value = "0s", value_parser = off_or_between("1s", "24h"))]
    pub refresh_interval: Duration,
    /// How long to listen for another owner before announcing (0s: no probe).
    #[arg(long, default_value = "200ms", value_parser = between("0s", "10s"))]
    pub probe_timeout: Duration,
    /// Announce a VIP even if another host answers the probe.
    #[arg(long)]
    pub allow_conflicts: bool,
    /// Static mode: announce each VIP with its own virtual MAC, which moves with the VIP,
    /// so clients' neighbour caches never change on a failover (see the README). Needs
    /// CAP_NET_ADMIN and net.ipv4.conf.all.rp_filter=0.
    #[arg(long, conflicts_with = "kubernetes")]
    pub virtual_mac: bool,
    /// Virtual-MAC mode: this group's id (0-255), the second byte of every derived MAC, so
    /// two groups on one segment never derive the same MAC.
    #[arg(long, default_value_t = 0, requires = "virtual_mac")]
    pub virtual_mac_group: u8,
    /// Virtual-MAC mode: VIP=MAC gives a VIP its own MAC instead of the derived one
    /// (repeat).
    #[arg(long = "virtual-mac-for", value_parser = vipvisor_l2::vmac::parse_pair, requires = "virtual_mac")]
    pub virtual_mac_for: Vec<(IpAddr, vipvisor_l2::wire::Mac)>,
    /// Virtual-MAC mode: how often the owner sends a frame from each virtual MAC, so
    /// switches keep it on its port (shorter than their FDB ageing, 300 s by default).
    #[arg(long, default_value = "60s", value_parser = between("1s", "1h"))]
    pub virtual_mac_refresh: Duration,
    /// Serve Prometheus metrics and /healthz on this address (e.g. 127.0.0.1:9472).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Static mode: record what this member announces (and the MACs seen answering for
    /// the group's VIPs) in the store (--store), for `vipvisor serve`'s owners and
    /// failover history. Every member of a group may share one store file.
    #[arg(long, conflicts_with = "kubernetes")]
    pub record: bool,
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
    #[arg(long, default_value = "70ms", value_parser = between("10ms", "10s"))]
    pub gossip_probe_period: Duration,
    /// Gossip: how long a direct probe waits for its ack before asking others to probe.
    #[arg(long, default_value = "30ms", value_parser = between("1ms", "10s"))]
    pub gossip_probe_rtt: Duration,
    /// Gossip: how long a suspected member has to refute before it is declared down.
    #[arg(long, default_value = "120ms", value_parser = between("10ms", "10m"))]
    pub gossip_suspicion: Duration,
    /// A member takes VIPs from others only after it has been up this long (no flapping).
    #[arg(long, default_value = "10s", value_parser = between("0s", "1h"))]
    pub hold_time: Duration,
}

/// How the controller's API authenticates (`--serve-auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ServeAuth {
    Tokens,
    Kubernetes,
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
    /// Namespace of the speakers' ServiceL2Status objects, reflected into the Services'
    /// `vipvisor.io/Announced` condition.
    #[arg(long, default_value = "vipvisor-speaker")]
    pub speaker_namespace: String,
    /// Serve the API (as `vipvisor serve` does) on this address, on the controller's store.
    #[arg(long)]
    pub serve: Option<std::net::SocketAddr>,
    /// Who may use the served API: `tokens` (vipvisor's own, `vipvisor token create`) or
    /// `kubernetes` (the caller's Kubernetes token, checked by TokenReview, and its role
    /// by SubjectAccessReview: `get` on `api.vipvisor.io` reads, `update` also writes; the
    /// ClusterRoles vipvisor-viewer and vipvisor-admin in deploy/rbac.yaml grant them).
    #[arg(long, value_enum, default_value_t = ServeAuth::Tokens, requires = "serve")]
    pub serve_auth: ServeAuth,
    /// TLS for the served API: the certificate chain (PEM); needs --serve-tls-key.
    #[arg(long, requires_all = ["serve", "serve_tls_key"])]
    pub serve_tls_cert: Option<PathBuf>,
    /// TLS for the served API: the certificate's private key (PEM).
    #[arg(long, requires_all = ["serve", "serve_tls_cert"])]
    pub serve_tls_key: Option<PathBuf>,
    /// Provider file: grant every allocated VIP on the VMs of every candidate node
    /// (nodes with a speaker, not excluded), revoke it when the VIP goes.
    #[arg(long)]
    pub providers: Option<PathBuf>,
    /// The group id (0-255) in the virtual MACs of `mac: virtual` pools: give each cluster
    /// on one LAN its own, so their VIPs' MACs never collide.
    #[arg(long, default_value_t = 0)]
    pub virtual_mac_group: u8,
    /// Namespace and name of the leader-election Lease.
    #[arg(long, default_value = "vipvisor-system")]
    pub lease_namespace: String,
    #[arg(long, default_value = "vipvisor-controller")]
    pub lease_name: String,
    /// This replica's identity in the Lease (default: $POD_NAME, else the host name and pid).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// How long a Lease stays valid without renewal.
    #[arg(long, default_value = "15s", value_parser = between("1s", "10m"))]
    pub lease_duration: Duration,
    /// How often the holder renews (and standbys retry).
    #[arg(long, default_value = "2s", value_parser = between("100ms", "5m"))]
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
    PreferDual,
}

#[derive(Debug, Clone, Copy)]
pub enum SinceArg {
    Ago(Duration),
    At(Timestamp),
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; expected a duration such as 60s, 5m or 0s"))
}

fn duration(s: &str) -> Duration {
    parse_duration(s).expect("a valid bound")
}

/// A duration flag's parser with bounds: every duration flag has a minimum and a
/// maximum that make sense for it (a 0 s lease renewal is a hot loop; 3·10¹¹ years
/// overflows every clock).
fn between(min: &'static str, max: &'static str) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    move |s| {
        let d = parse_duration(s)?;
        if d < duration(min) || d > duration(max) {
            return Err(format!("{s} is out of range; expected a duration from {min} to {max}"));
        }
        Ok(d)
    }
}

/// [`between`], and 0s for "off".
fn off_or_between(
    min: &'static str,
    max: &'static str,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    move |s| {
        let d = parse_duration(s)?;
        if !d.is_zero() && (d < duration(min) || d > duration(max)) {
            return Err(format!("{s} is out of range; expected 0s (off) or a duration from {min} to {max}"));
        }
        Ok(d)
    }
}

/// The audit log's actor: at most 256 bytes, no control characters.
pub fn parse_actor(s: &str) -> Result<String, String> {
    vipvisor_model::check_actor(s).map(|()| s.to_owned()).map_err(|e| e.to_string())
}

pub fn parse_since(s: &str) -> Result<SinceArg, String> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(SinceArg::Ago(d));
    }
    let t = humantime::parse_rfc3339_weak(s)
        .map_err(|_| "expected a duration ago (1h, 30m) or an RFC 3339 time (2026-11-25T10:00:00Z)".to_string())?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?.as_millis();
    Ok(SinceArg::At(Timestamp(i64::try_from(ms).unwrap_or(i64::MAX))))
}
