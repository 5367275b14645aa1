//! Kubernetes mode of the speaker (`vipvisor speaker --kubernetes`, the DaemonSet).
//!
//! Each speaker watches Services with assigned addresses, Nodes and EndpointSlices
//! (`discovery.k8s.io/v1`, or `v1beta1` where the server has no v1), gossips with the
//! speakers on the other nodes (peers are the Nodes' InternalIPs on the gossip port), and
//! computes the owner of every VIP with [`vipvisor_gossip::election`] from facts every speaker shares:
//! live members that are Ready Nodes without the exclude label, and under
//! `externalTrafficPolicy: Local` only nodes with a ready endpoint of the Service. It
//! announces the VIPs it owns. The owner reports itself on the Service
//! (`vipvisor.io/announcing: node,interface`) with an `Announcing` Event, and every speaker
//! exports the owners it computes as `vipvisor_speaker_vip_owner{vip,node}`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Service};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store as Reflector};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use tokio::sync::watch;
use tracing::{info, warn};
use vipvisor_gossip::election::{NodeFacts, VipFacts};
use vipvisor_gossip::group;
use vipvisor_gossip::membership::{GossipTiming, Live, MemberConfig, Membership, Sealer};
use vipvisor_gossip::ownership::Facts;
use vipvisor_health::Health;
use vipvisor_l2::engine::Timing;
use vipvisor_l2::groups::Groups;
use vipvisor_l2::link::{self, LinkInfo};
use vipvisor_l2::metrics::Metrics;
use vipvisor_l2::{wire, ConflictReport, Owned, Prepared, SpeakerError};
use vipvisor_model::ServiceKey;

use crate::decide::{self, ClassPolicy};
use crate::l2status;
use crate::reflect::reflect;

/// The label that keeps a node out of load-balancer duty.
pub const EXCLUDE_LABEL: &str = "node.kubernetes.io/exclude-from-external-load-balancers";
/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Everything `vipvisor speaker --kubernetes` needs.
#[derive(Debug, Clone)]
pub struct KubeSpeakerConfig {
    pub node_name: String,
    /// Interfaces to answer on; empty: every uplink-like interface ([`link::autodetect`]).
    pub interfaces: Vec<String>,
    pub timing: Timing,
    pub gossip_port: u16,
    /// Default: this Node's InternalIP (what the other speakers join).
    pub gossip_bind: Option<IpAddr>,
    pub sealer: Sealer,
    pub gossip_timing: GossipTiming,
    pub hold: Duration,
    pub policy: ClassPolicy,
    /// Where this node's `ServiceL2Status` is written (the speakers' namespace).
    pub status_namespace: String,
}

// ---------------------------------------------------------------------------------------
// Pure facts from Kubernetes objects.

/// The ready endpoints of one EndpointSlice, by node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    pub service: ServiceKey,
    pub ready_nodes: BTreeSet<String>,
}

/// Reads an EndpointSlice of either version (`v1`: `nodeName`; `v1beta1`: `nodeName` or
/// `topology["kubernetes.io/hostname"]`). A missing `ready` condition counts as ready, as
/// the API documents. `None` for a slice of no Service.
pub fn slice_info(obj: &serde_json::Value) -> Option<SliceInfo> {
    let meta = obj.get("metadata")?;
    let ns = meta.get("namespace")?.as_str()?;
    let svc = meta.get("labels")?.get(SERVICE_NAME_LABEL)?.as_str()?;
    let service = ServiceKey::new(ns, svc).ok()?;
    let mut ready_nodes = BTreeSet::new();
    for ep in obj.get("endpoints").and_then(|e| e.as_array()).map(Vec::as_slice).unwrap_or_default() {
        let ready = ep.get("conditions").and_then(|c| c.get("ready")).and_then(|r| r.as_bool()).unwrap_or(true);
        let node = ep
            .get("nodeName")
            .and_then(|n| n.as_str())
            .or_else(|| ep.get("topology").and_then(|t| t.get("kubernetes.io/hostname")).and_then(|h| h.as_str()));
        if let (true, Some(n)) = (ready, node) {
            ready_nodes.insert(n.to_owned());
        }
    }
    Some(SliceInfo { service, ready_nodes })
}

/// Every VIP in the status of our Services, with the Services that use it, and its facts.
/// A VIP shared by several Services is `etp_local` if any of them is, and then only nodes
/// with a ready endpoint of every such Service qualify.
pub fn vip_facts<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a SliceInfo>,
    policy: &ClassPolicy,
) -> BTreeMap<IpAddr, (VipFacts, Vec<ServiceKey>)> {
    let mut endpoints: HashMap<&ServiceKey, BTreeSet<&str>> = HashMap::new();
    for s in slices {
        endpoints.entry(&s.service).or_default().extend(s.ready_nodes.iter().map(String::as_str));
    }
    /// Facts, Services, and the nodes with endpoints of every Local Service so far.
    type Acc = (VipFacts, Vec<ServiceKey>, Option<BTreeSet<String>>);
    let mut out: BTreeMap<IpAddr, Acc> = BTreeMap::new();
    for svc in services {
        if !decide::is_ours(svc, policy) {
            continue;
        }
        let Some(key) = decide::service_key(svc) else { continue };
        let local = svc.spec.as_ref().and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local");
        let eps: BTreeSet<String> =
            endpoints.get(&key).map(|e| e.iter().map(|s| (*s).to_owned()).collect()).unwrap_or_default();
        for vip in decide::status_addresses(svc) {
            let entry = out
                .entry(vip)
                .or_insert_with(|| (VipFacts { vip, etp_local: false, local_endpoints: vec![] }, Vec::new(), None));
            entry.1.push(key.clone());
            if local {
                entry.0.etp_local = true;
                entry.2 = Some(match entry.2.take() {
                    None => eps.clone(),
                    Some(have) => have.intersection(&eps).cloned().collect(),
                });
            }
        }
    }
    out.into_iter()
        .map(|(vip, (mut f, keys, eps))| {
            f.local_endpoints = eps.unwrap_or_default().into_iter().collect();
            (vip, (f, keys))
        })
        .collect()
}

/// Ready (condition `Ready=True`) and not labelled out.
pub fn node_state(node: &Node) -> (bool, bool) {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let excluded = node.metadata.labels.as_ref().is_some_and(|l| l.contains_key(EXCLUDE_LABEL));
    (ready, excluded)
}

/// The node's first InternalIP (IPv4 preferred).
pub fn internal_ip(node: &Node) -> Option<IpAddr> {
    let addrs: Vec<IpAddr> = node
        .status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied()
}

/// Facts about every live member: a member without a Node object is not Ready.
pub fn node_facts<'a>(nodes: impl IntoIterator<Item = &'a Node>, members: &Live) -> Vec<NodeFacts> {
    let state: HashMap<&str, (bool, bool)> =
        nodes.into_iter().filter_map(|n| Some((n.metadata.name.as_deref()?, node_state(n)))).collect();
    members
        .keys()
        .map(|name| {
            let (ready, excluded) = state.get(name.as_str()).copied().unwrap_or((false, false));
            NodeFacts { name: name.clone(), live: true, ready, excluded }
        })
        .collect()
}

/// The gossip addresses of every Node but `me`: their InternalIP on `port`.
fn peer_addrs(nodes: &[Arc<Node>], me: &str, port: u16) -> Vec<SocketAddr> {
    nodes
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(me))
        .filter_map(|n| internal_ip(n))
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

// ---------------------------------------------------------------------------------------
// The runner.

fn endpointslice_resource(version: &str) -> ApiResource {
    ApiResource {
        group: "discovery.k8s.io".into(),
        version: version.into(),
        api_version: format!("discovery.k8s.io/{version}"),
        kind: "EndpointSlice".into(),
        plural: "endpointslices".into(),
    }
}

/// `v1` if the server serves `discovery.k8s.io/v1`, else `v1beta1`.
async fn endpointslice_version(client: &Client) -> &'static str {
    match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(l) if l.resources.iter().any(|r| r.name == "endpointslices") => "v1",
        _ => "v1beta1",
    }
}

type Slices = Arc<Mutex<HashMap<String, SliceInfo>>>;

/// A counter bumped on every watch event; each consumer has its own receiver, so none
/// misses a change another consumed.
type Changes = Arc<watch::Sender<u64>>;

fn note_change(changed: &Changes) {
    changed.send_modify(|g| *g = g.wrapping_add(1));
}

/// An event handler that notes a change.
fn bump<E>(changed: &Changes) -> impl FnMut(&E) + Send + 'static {
    let changed = changed.clone();
    move |_| note_change(&changed)
}

fn lock_slices(s: &Slices) -> std::sync::MutexGuard<'_, HashMap<String, SliceInfo>> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Keeps `slices` equal to the server's EndpointSlices; `synced` turns true after the
/// first list.
async fn watch_slices(api: Api<DynamicObject>, slices: Slices, changed: Changes, synced: watch::Sender<bool>) {
    let key = |o: &DynamicObject| {
        format!("{}/{}", o.metadata.namespace.as_deref().unwrap_or(""), o.metadata.name.as_deref().unwrap_or(""))
    };
    let info = |o: &DynamicObject| serde_json::to_value(o).ok().as_ref().and_then(slice_info);
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut fresh: HashMap<String, SliceInfo> = HashMap::new();
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(watcher::Event::Apply(o)) => {
                let mut s = lock_slices(&slices);
                match info(&o) {
                    Some(i) => s.insert(key(&o), i),
                    None => s.remove(&key(&o)),
                };
            }
            Ok(watcher::Event::Delete(o)) => {
                lock_slices(&slices).remove(&key(&o));
            }
            Ok(watcher::Event::Init) => fresh.clear(),
            Ok(watcher::Event::InitApply(o)) => {
                if let Some(i) = info(&o) {
                    fresh.insert(key(&o), i);
                }
            }
            Ok(watcher::Event::InitDone) => {
                *lock_slices(&slices) = std::mem::take(&mut fresh);
                synced.send_replace(true);
            }
            Err(e) => {
                warn!(error = %crate::Safe(&e), "endpointslice watch error");
                continue;
            }
        }
        note_change(&changed);
    }
}

/// What this node announces now: VIP → interface name, and its virtual MAC (virtual-MAC
/// mode).
type Announcing = BTreeMap<IpAddr, (String, Option<wire::Mac>)>;

#[derive(Debug, thiserror::Error)]
pub enum KubeSpeakerError {
    #[error(transparent)]
    Speaker(#[from] SpeakerError),
    #[error(transparent)]
    Link(#[from] link::LinkError),
    #[error("no interface that is up with an Ethernet MAC and a global address; expected --interface IF")]
    NoInterface,
    #[error("no address to bind gossip to; expected --gossip-bind or a Node InternalIP")]
    NoGossipAddress,
    #[error("{0}")]
    Watch(String),
}

/// The Kubernetes facts for the ownership loop: VIPs from Services, candidates from Nodes
/// and EndpointSlices; after each round it keeps the solicited-node groups and the
/// report of what this node announces in step.
struct KubeFacts {
    services: Reflector<Service>,
    nodes: Reflector<Node>,
    slices: Slices,
    changed: watch::Receiver<u64>,
    membership: Arc<Membership>,
    me: String,
    policy: ClassPolicy,
    port: u16,
    links: Vec<LinkInfo>,
    vips: BTreeSet<IpAddr>,
    no_iface_warned: BTreeSet<IpAddr>,
    groups: Groups,
    announcing: watch::Sender<Announcing>,
    /// The engine's virtual MACs ([`virtual_macs`] of the Services), set when they change.
    friends: vipvisor_l2::Friends,
    vmacs: HashMap<IpAddr, wire::Mac>,
    /// MACs claimed by two VIPs, warned about once.
    vmac_warned: BTreeSet<wire::Mac>,
}

/// A MAC two VIPs were given: the MAC, the VIP that keeps it, the VIP that does not.
pub type MacClash = (wire::Mac, IpAddr, IpAddr);

/// The virtual MAC of every VIP the controller marked (`vipvisor.io/virtual-macs` on our
/// Services, for the addresses in their status). A MAC claimed by two VIPs is kept for
/// the first only (the clash is returned, for a warning): one MAC, one owner.
pub fn virtual_macs<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    policy: &ClassPolicy,
) -> (HashMap<IpAddr, wire::Mac>, Vec<MacClash>) {
    let mut all: BTreeMap<IpAddr, wire::Mac> = BTreeMap::new();
    for svc in services {
        if !decide::is_ours(svc, policy) {
            continue;
        }
        let Some(Ok(m)) = decide::annotation(svc, decide::ANN_VIRTUAL_MACS).map(decide::parse_vip_macs) else {
            continue;
        };
        for vip in decide::status_addresses(svc) {
            if let Some(mac) = m.get(&vip) {
                all.insert(vip, *mac);
            }
        }
    }
    let mut by_mac: HashMap<wire::Mac, IpAddr> = HashMap::new();
    let mut clashes = Vec::new();
    let mut out = HashMap::new();
    for (vip, mac) in all {
        match by_mac.get(&mac) {
            Some(first) => clashes.push((mac, *first, vip)),
            None => {
                by_mac.insert(mac, vip);
                out.insert(vip, mac);
            }
        }
    }
    (out, clashes)
}

impl Facts for KubeFacts {
    fn round(&mut self, members: &Live) -> (Vec<VipFacts>, Vec<NodeFacts>) {
        let nodes = self.nodes.state();
        self.membership.set_peers(peer_addrs(&nodes, &self.me, self.port));
        let services = self.services.state();
        let slice_list: Vec<SliceInfo> = lock_slices(&self.slices).values().cloned().collect();
        let vips = vip_facts(services.iter().map(|s| s.as_ref()), &slice_list, &self.policy);
        self.vips = vips.keys().copied().collect();
        let (mut vmacs, clashes) = virtual_macs(services.iter().map(|s| s.as_ref()), &self.policy);
        // A virtual MAC must not be a node's own: a Service's author could otherwise pull a
        // node's traffic to the VIP's owner.
        let node_macs: BTreeSet<wire::Mac> = members
            .values()
            .flat_map(|m| m.macs.iter().map(|b| wire::Mac(*b)))
            .chain(self.links.iter().map(|l| l.mac))
            .collect();
        vmacs.retain(|vip, mac| {
            let ok = !node_macs.contains(mac);
            if !ok && self.vmac_warned.insert(*mac) {
                warn!(%vip, %mac, "a VIP is marked with a node's own MAC; announcing it with this node's MAC instead");
            }
            ok
        });
        for (mac, first, second) in clashes {
            if self.vmac_warned.insert(mac) {
                warn!(%mac, %first, %second, "two VIPs are given one virtual MAC; announcing the second with the node's MAC");
            }
        }
        if vmacs != self.vmacs {
            self.friends.set_virtual_macs(vmacs.clone());
            self.vmacs = vmacs;
        }
        self.no_iface_warned.retain(|v| self.vips.contains(v));
        let facts = node_facts(nodes.iter().map(|n| n.as_ref()), members);
        (vips.into_values().map(|(f, _)| f).collect(), facts)
    }

    fn place(&mut self, vip: &IpAddr) -> Option<usize> {
        if let Some((l, why)) = self.links.iter().find_map(|l| l.unusable_vip(vip).map(|w| (l, w))) {
            if self.no_iface_warned.insert(*vip) {
                warn!(%vip, iface = %l.name, reason = %why, "this node owns the VIP but must not announce it; not announcing");
            }
            return None;
        }
        let i = self.links.iter().position(|l| l.subnet_of(vip).is_some());
        if i.is_none() && self.no_iface_warned.insert(*vip) {
            warn!(%vip, "this node owns the VIP but has no interface in a subnet containing it; not announcing");
        }
        i
    }

    fn owned(&mut self, owned: &[Owned]) {
        // Solicited-node groups for exactly the IPv6 VIPs this node answers for.
        let placed: Vec<(IpAddr, usize)> = owned.iter().map(|o| (o.vip, o.iface)).collect();
        if let Err((vip, iface, e)) = self.groups.sync(&placed) {
            warn!(%vip, %iface, error = %e, "cannot join the solicited-node group");
        }
        let announcing: Announcing = owned
            .iter()
            .map(|o| (o.vip, (self.links[o.iface].name.clone(), self.vmacs.get(&o.vip).copied())))
            .collect();
        self.announcing.send_if_modified(|cur| {
            let changed = *cur != announcing;
            if changed {
                *cur = announcing;
            }
            changed
        });
    }

    async fn changed(&mut self) -> bool {
        self.changed.changed().await.is_ok()
    }
}

/// Runs the speaker in Kubernetes mode until `shutdown`.
pub async fn run(
    client: Client,
    cfg: KubeSpeakerConfig,
    metrics: Metrics,
    health: &Health,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), KubeSpeakerError> {
    let links: Vec<LinkInfo> = if cfg.interfaces.is_empty() {
        link::autodetect()?
    } else {
        cfg.interfaces.iter().map(|n| link::lookup(n)).collect::<Result<_, _>>()?
    };
    if links.is_empty() {
        return Err(KubeSpeakerError::NoInterface);
    }
    let (conflict_tx, conflict_rx) = tokio::sync::mpsc::channel(256);
    let Prepared { links, speaker, groups, .. } =
        Prepared::on_links(links, Vec::new(), cfg.timing, true, metrics, health)?;
    let speaker = speaker.report_conflicts(conflict_tx);
    let friends = speaker.friends();

    // Watches.
    let changed: Changes = Arc::new(watch::channel(0u64).0);
    let (svc_reader, svc_writer) = reflector::store::<Service>();
    let (node_reader, node_writer) = reflector::store::<Node>();
    let slices: Slices = Arc::default();
    let version = endpointslice_version(&client).await;
    let (slices_synced_tx, mut slices_synced) = watch::channel(false);
    let mut tasks = vec![
        reflect(Api::<Service>::all(client.clone()), svc_writer, "service", bump(&changed)),
        reflect(Api::<Node>::all(client.clone()), node_writer, "node", bump(&changed)),
        tokio::spawn(watch_slices(
            Api::all_with(client.clone(), &endpointslice_resource(version)),
            slices.clone(),
            changed.clone(),
            slices_synced_tx,
        )),
    ];
    svc_reader.wait_until_ready().await.map_err(|e| KubeSpeakerError::Watch(format!("service reflector: {e}")))?;
    node_reader.wait_until_ready().await.map_err(|e| KubeSpeakerError::Watch(format!("node reflector: {e}")))?;
    let _ = slices_synced.wait_for(|s| *s).await;
    info!(
        node = %cfg.node_name,
        interfaces = ?links.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
        endpointslices = version,
        services = svc_reader.state().len(),
        nodes = node_reader.state().len(),
        "speaker caches synced"
    );

    // Gossip with the speakers on the other nodes.
    let me_node = node_reader.get(&ObjectRef::new(&cfg.node_name));
    if me_node.is_none() {
        warn!(node = %cfg.node_name, "no Node object with this name: this speaker will own no VIP until it appears");
    }
    let bind_ip = cfg
        .gossip_bind
        .or_else(|| me_node.as_deref().and_then(internal_ip))
        .or_else(|| links.iter().flat_map(|l| l.subnets.iter()).find(|n| n.is_ipv4()).map(|n| n.ip()))
        .ok_or(KubeSpeakerError::NoGossipAddress)?;
    let bind = SocketAddr::new(bind_ip, cfg.gossip_port);
    let membership = Arc::new(
        Membership::start(MemberConfig {
            name: cfg.node_name.clone(),
            macs: links.iter().map(|l| l.mac.0).collect(),
            bind,
            peers: peer_addrs(&node_reader.state(), &cfg.node_name, cfg.gossip_port),
            sealer: cfg.sealer.clone(),
            timing: cfg.gossip_timing,
            hold: cfg.hold,
        })
        .await
        .map_err(|e| SpeakerError::Gossip(e.to_string()))?,
    );
    info!(%bind, "gossip started");
    let mut live = membership.live();
    // Give the group a moment to answer, so a joining node does not decide alone.
    if node_reader.state().len() > 1 {
        let _ = tokio::time::timeout(Duration::from_secs(1), live.wait_for(|l| l.len() > 1)).await;
    }

    let (announcing_tx, announcing_rx) = watch::channel(Announcing::new());
    let facts = KubeFacts {
        services: svc_reader.clone(),
        nodes: node_reader.clone(),
        slices: slices.clone(),
        changed: changed.subscribe(),
        membership: membership.clone(),
        me: cfg.node_name.clone(),
        policy: cfg.policy.clone(),
        port: cfg.gossip_port,
        links: links.clone(),
        vips: BTreeSet::new(),
        no_iface_warned: BTreeSet::new(),
        groups,
        announcing: announcing_tx,
        friends,
        vmacs: HashMap::new(),
        vmac_warned: BTreeSet::new(),
    };
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "vipvisor-speaker".into(), instance: Some(cfg.node_name.clone()) },
    );
    tasks.push(tokio::spawn(report(
        client.clone(),
        recorder.clone(),
        svc_reader.clone(),
        l2status::Report {
            node: cfg.node_name.clone(),
            macs: links.iter().map(|l| l.mac.to_string()).collect(),
            announcing: Vec::new(),
        },
        cfg.status_namespace.clone(),
        announcing_rx,
        changed.subscribe(),
    )));

    tasks.push(tokio::spawn(report_conflicts(
        recorder.clone(),
        svc_reader.clone(),
        cfg.node_name.clone(),
        conflict_rx,
    )));

    // The ownership loop holds the solicited-node groups (in the facts); when it ends they
    // are dropped, which leaves them.
    let result = group::serve(&speaker, &cfg.node_name, &membership, facts, health, shutdown).await;
    for t in tasks {
        t.abort();
    }
    info!("speaker stopped");
    result.map_err(Into::into)
}

/// Reports what this node announces in its own `ServiceL2Status` (server-side apply, in
/// `namespace`), with an `Announcing` Event on the Service whenever this node starts
/// announcing one of its VIPs. The speaker writes no Service: the controller reflects the
/// reports into the Services' status ([`crate::l2status`]). A failed write is retried.
async fn report(
    client: Client,
    recorder: Recorder,
    services: Reflector<Service>,
    // This node's name and MACs (its report with nothing announced).
    template: l2status::Report,
    namespace: String,
    mut announcing: watch::Receiver<Announcing>,
    mut changed: watch::Receiver<u64>,
) {
    let me = template.node.clone();
    let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &l2status::resource());
    let params = PatchParams::apply("vipvisor-speaker").force();
    // When this node began announcing each VIP; the newest claim wins in the controller.
    let mut since: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut written: Option<l2status::Report> = None;
    loop {
        let mine = announcing.borrow_and_update().clone();
        since.retain(|v, _| mine.contains_key(v));
        let now = vipvisor_model::Timestamp::now().rfc3339();
        let mut report = template.clone();
        let mut news = Vec::new();
        for svc in services.state() {
            let Some(key) = decide::service_key(&svc) else { continue };
            for vip in decide::status_addresses(&svc) {
                let Some((iface, vmac)) = mine.get(&vip) else { continue };
                let started = since.entry(vip).or_insert_with(|| now.clone()).clone();
                let entry = l2status::Entry {
                    service: key.to_string(),
                    vip,
                    interface: iface.clone(),
                    since: started,
                    mac: vmac.map(|m| m.to_string()),
                };
                let known = written.as_ref().is_some_and(|w| {
                    w.announcing.iter().any(|e| e.service == entry.service && e.vip == vip && e.mac == entry.mac)
                });
                if !known {
                    let with = vmac.map(|m| format!(" with virtual MAC {m}")).unwrap_or_default();
                    // Events are aggregated by reason and action (a series keeps its first
                    // note): the virtual-MAC announcement is its own action.
                    let action = if vmac.is_some() { "AnnounceVirtualMAC" } else { "Announce" };
                    news.push((svc.clone(), action, format!("Announcing {vip} from node {me} on {iface}{with}")));
                }
                report.announcing.push(entry);
            }
        }
        let mut pending = false;
        if written.as_ref() != Some(&report) {
            match api.patch(&me, &params, &Patch::Apply(&report.object())).await {
                Ok(_) => {
                    info!(vips = report.announcing.len(), "reported what this node announces");
                    written = Some(report);
                    for (svc, action, note) in news {
                        let ev = KEvent {
                            type_: EventType::Normal,
                            reason: "Announcing".into(),
                            note: Some(note),
                            action: action.into(),
                            secondary: None,
                        };
                        if let Err(e) = recorder.publish(&ev, &svc.object_ref(&())).await {
                            warn!(error = %crate::Safe(&e), "could not record an event");
                        }
                    }
                }
                Err(e) => {
                    warn!(error = %crate::Safe(&e), %namespace, "could not write this node's ServiceL2Status");
                    pending = true;
                }
            }
        }
        let retry = async {
            if pending {
                tokio::time::sleep(Duration::from_secs(1)).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            r = announcing.changed() => if r.is_err() { return },
            r = changed.changed() => {
                if r.is_err() { return }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            _ = retry => {}
        }
    }
}

/// Reports address conflicts as Warning Events on the Services that use the VIP, once per
/// VIP and other host (entries of VIPs no Service uses any more are forgotten).
async fn report_conflicts(
    recorder: Recorder,
    services: Reflector<Service>,
    me: String,
    mut rx: tokio::sync::mpsc::Receiver<ConflictReport>,
) {
    let mut seen: BTreeSet<(IpAddr, wire::Mac)> = BTreeSet::new();
    while let Some(c) = rx.recv().await {
        let state = services.state();
        let in_use: BTreeSet<IpAddr> = state.iter().flat_map(|s| decide::status_addresses(s)).collect();
        prune_seen(&mut seen, &in_use);
        if !seen.insert((c.vip, c.other)) {
            continue;
        }
        let note = if c.announced {
            format!("{} is also answered by {} on {} (seen by node {me}); defending it", c.vip, c.other, c.iface)
        } else {
            format!("{} is already in use by {} on {} (seen by node {me}); not announcing it", c.vip, c.other, c.iface)
        };
        for svc in state.iter().filter(|s| decide::status_addresses(s).contains(&c.vip)) {
            let ev = KEvent {
                type_: EventType::Warning,
                reason: "AddressConflict".into(),
                note: Some(note.clone()),
                action: "Announce".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, &svc.object_ref(&())).await {
                warn!(error = %e, "could not record an event");
            }
        }
    }
}

/// Forgets reported conflicts of VIPs that no Service uses any more.
fn prune_seen(seen: &mut BTreeSet<(IpAddr, wire::Mac)>, in_use: &BTreeSet<IpAddr>) {
    seen.retain(|(vip, _)| in_use.contains(vip));
}

#[cfg(test)]
mod tests {
    use super::*;
    use vipvisor_gossip::membership::MemberInfo;

    fn owners(
        vips: &BTreeMap<IpAddr, (VipFacts, Vec<ServiceKey>)>,
        nodes: &[NodeFacts],
        members: &Live,
    ) -> BTreeMap<IpAddr, Option<String>> {
        vipvisor_gossip::ownership::owners_among(vips.values().map(|(f, _)| f), nodes, members)
    }

    fn svc(v: serde_json::Value) -> Service {
        serde_json::from_value(v).unwrap()
    }
    fn lb(name: &str, ips: &[&str], etp: &str) -> Service {
        let ingress: Vec<_> = ips.iter().map(|i| serde_json::json!({"ip": i})).collect();
        svc(serde_json::json!({
            "metadata": {"namespace": "default", "name": name},
            "spec": {"type": "LoadBalancer", "externalTrafficPolicy": etp},
            "status": {"loadBalancer": {"ingress": ingress}}
        }))
    }
    fn node(name: &str, ready: bool, exclude: bool, ip: &str) -> Node {
        let labels = if exclude { serde_json::json!({EXCLUDE_LABEL: ""}) } else { serde_json::json!({}) };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "status": {
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "addresses": [{"type": "Hostname", "address": name}, {"type": "InternalIP", "address": ip}]
            }
        }))
        .unwrap()
    }
    fn members(names: &[&str]) -> Live {
        names.iter().map(|n| (n.to_string(), MemberInfo { settled: true, macs: vec![] })).collect()
    }

    #[test]
    fn marked_services_give_their_addresses_macs_and_one_mac_has_one_vip() {
        let mark = |mut s: Service, note: &str| {
            s.metadata.annotations = Some([(decide::ANN_VIRTUAL_MACS.to_string(), note.to_string())].into());
            s
        };
        let a =
            mark(lb("a", &["192.0.2.100"], "Cluster"), "192.0.2.100=42:00:c0:00:02:64,192.0.2.200=42:00:c0:00:02:c8");
        let b = mark(lb("b", &["192.0.2.101"], "Cluster"), "192.0.2.101=42:00:c0:00:02:64");
        let bad = mark(lb("c", &["192.0.2.102"], "Cluster"), "192.0.2.102=01:00:5e:00:00:01");
        let plain = lb("d", &["192.0.2.103"], "Cluster");
        let (m, clashes) = virtual_macs([&a, &b, &bad, &plain], &ClassPolicy::default());
        let v = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(m.len(), 1, "only status addresses, one MAC per VIP, no unusable MAC: {m:?}");
        assert_eq!(m[&v("192.0.2.100")].to_string(), "42:00:c0:00:02:64");
        assert_eq!(clashes, vec![(m[&v("192.0.2.100")], v("192.0.2.100"), v("192.0.2.101"))]);
    }

    #[test]
    fn slices_of_both_versions_are_read() {
        let v1 = serde_json::json!({
            "metadata": {"namespace": "web", "name": "s-1", "labels": {SERVICE_NAME_LABEL: "s"}},
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}, "nodeName": "n1"},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}, "nodeName": "n2"},
                {"addresses": ["10.0.0.3"], "nodeName": "n3"},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": true}}
            ]
        });
        let i = slice_info(&v1).unwrap();
        assert_eq!(i.service.to_string(), "web/s");
        assert_eq!(
            i.ready_nodes,
            BTreeSet::from(["n1".into(), "n3".into()]),
            "not-ready n2 out; unknown readiness counts"
        );
        let beta = serde_json::json!({
            "metadata": {"namespace": "web", "name": "s-2", "labels": {SERVICE_NAME_LABEL: "s"}},
            "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true}, "topology": {"kubernetes.io/hostname": "n4"}}]
        });
        assert_eq!(slice_info(&beta).unwrap().ready_nodes, BTreeSet::from(["n4".into()]));
        let orphan = serde_json::json!({"metadata": {"namespace": "web", "name": "x"}, "endpoints": []});
        assert_eq!(slice_info(&orphan), None, "a slice without a service-name label belongs to no Service");
        assert_eq!(slice_info(&serde_json::json!({"metadata": {}})), None);
    }

    #[test]
    fn vips_come_from_our_services_with_their_traffic_policy() {
        let mut other = lb("other", &["192.0.2.99"], "Cluster");
        other.spec.as_mut().unwrap().load_balancer_class = Some("someone.else/lb".into());
        let cluster_ip =
            svc(serde_json::json!({"metadata": {"namespace": "default", "name": "c"}, "spec": {"type": "ClusterIP"}}));
        let services = [
            lb("a", &["192.0.2.10", "2001:db8::10"], "Cluster"),
            lb("b", &["192.0.2.11"], "Local"),
            lb("shared", &["192.0.2.11"], "Local"),
            other,
            cluster_ip,
            lb("pending", &[], "Cluster"),
        ];
        let slices = [
            SliceInfo {
                service: ServiceKey::new("default", "b").unwrap(),
                ready_nodes: ["n1".into(), "n2".into()].into(),
            },
            SliceInfo { service: ServiceKey::new("default", "shared").unwrap(), ready_nodes: ["n2".into()].into() },
            SliceInfo { service: ServiceKey::new("default", "shared").unwrap(), ready_nodes: ["n3".into()].into() },
        ];
        let v = vip_facts(services.iter(), slices.iter(), &ClassPolicy::default());
        let keys: Vec<String> = v.keys().map(ToString::to_string).collect();
        assert_eq!(
            keys,
            ["192.0.2.10", "192.0.2.11", "2001:db8::10"],
            "other classes, ClusterIPs and pending ones are not ours"
        );
        let (f, svcs) = &v[&"192.0.2.11".parse().unwrap()];
        assert_eq!(svcs.len(), 2);
        assert!(f.etp_local);
        assert_eq!(f.local_endpoints, ["n2"], "shared VIP under Local: nodes with endpoints of both Services");
        assert!(!v[&"192.0.2.10".parse().unwrap()].0.etp_local);
    }

    #[test]
    fn members_need_a_ready_node_without_the_exclude_label() {
        let nodes = [
            node("n1", true, false, "192.0.2.11"),
            node("n2", false, false, "192.0.2.12"),
            node("n3", true, true, "192.0.2.13"),
        ];
        let f = node_facts(nodes.iter(), &members(&["n1", "n2", "n3", "ghost"]));
        let cands: Vec<&str> = f.iter().filter(|n| n.ready && !n.excluded).map(|n| n.name.as_str()).collect();
        assert_eq!(cands, ["n1"], "n2 NotReady, n3 excluded, ghost has no Node");
        assert_eq!(internal_ip(&nodes[1]), Some("192.0.2.12".parse().unwrap()));
        let services = [lb("a", &["192.0.2.10"], "Cluster")];
        let v = vip_facts(services.iter(), [].iter(), &ClassPolicy::default());
        let o = owners(&v, &f, &members(&["n1", "n2", "n3", "ghost"]));
        assert_eq!(o[&"192.0.2.10".parse().unwrap()], Some("n1".into()));
    }

    #[test]
    fn local_policy_moves_the_vip_with_its_endpoints() {
        let nodes: Vec<Node> = (1..=3).map(|i| node(&format!("n{i}"), true, false, &format!("192.0.2.1{i}"))).collect();
        let m = members(&["n1", "n2", "n3"]);
        let f = node_facts(nodes.iter(), &m);
        let services = [lb("web", &["192.0.2.10"], "Local")];
        let vip: IpAddr = "192.0.2.10".parse().unwrap();
        for only in ["n1", "n2", "n3"] {
            let slices =
                [SliceInfo { service: ServiceKey::new("default", "web").unwrap(), ready_nodes: [only.into()].into() }];
            let v = vip_facts(services.iter(), slices.iter(), &ClassPolicy::default());
            assert_eq!(owners(&v, &f, &m)[&vip].as_deref(), Some(only));
        }
        let v = vip_facts(services.iter(), [].iter(), &ClassPolicy::default());
        assert_eq!(owners(&v, &f, &m)[&vip], None, "no ready endpoint: nobody announces");
    }

    #[test]
    fn reported_conflicts_are_forgotten_with_their_vips() {
        let a: IpAddr = "192.0.2.10".parse().unwrap();
        let b: IpAddr = "192.0.2.11".parse().unwrap();
        let mac = wire::Mac([2, 0, 0, 0, 0, 1]);
        let mut seen: BTreeSet<(IpAddr, wire::Mac)> = [(a, mac), (b, mac)].into();
        prune_seen(&mut seen, &[a].into());
        assert_eq!(seen, [(a, mac)].into(), "b is no longer any Service's address");
    }
}
