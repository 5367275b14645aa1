//! The Kubernetes LoadBalancer controller, on kube-runtime's [`Controller`]: one
//! `reconcile(Service)` that is never told why it runs (each step checked and fixed on its
//! own), an `error_policy` with per-Service exponential backoff, per-key deduplication and
//! bounded concurrency from the runtime, and `reconcile_all_on` for the pools file. A
//! term starts with one batched pass over every Service; Services that changed while it
//! ran are reconciled right after.
//!
//! Only the Lease holder writes: the pools file is applied, allocations are made and
//! released, statuses and Events are written by the leader alone; standbys keep their
//! caches warm and their reconciles return at once. Each replica keeps its own store (an
//! SQLite file is never shared between hosts); a new leader keeps what its store holds
//! only where the cluster agrees, rebuilds the rest from the cluster — adopting every
//! address already in a Service status before allocating anything — and takes the
//! quarantine over from the Lease, where the leader keeps it ([`ANN_QUARANTINE`]).
//!
//! Deleted Services are released without finalizers: the deletion reaches the controller
//! as a key whose object is gone, and the release is guarded by the deleted object's UID.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Service};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerRuntimeConfig, Controller, Error as ControllerError};
use kube::runtime::events::{Event as KEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store as Reflector};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use vipvisor_api::apply::{read_pools_file, ApplyOptions};
use vipvisor_api::{ApiError, App, Change, ErrorCode};
use vipvisor_health::Health;
use vipvisor_ipam::{IpamError, Outcome};
use vipvisor_model::{Labels, Quarantined, ServiceKey, Timestamp, Uid};

use crate::decide::{self, decide, service_key, ClassPolicy, Decision};
use crate::lease::{self, Leadership, LeaseConfig, Notes};
use crate::reflect::reflect;

/// The Lease annotation where the leader keeps the quarantine for the next leader.
pub const ANN_QUARANTINE: &str = "vipvisor.io/quarantine";
/// The Lease annotation where the leader keeps the hypervisor grants it recorded, so the
/// next leader revokes exactly what was added (each replica has its own store).
pub const ANN_GRANTS: &str = "vipvisor.io/grants";
/// The grants note's bound (a Lease's annotations may hold 256 KiB in all).
const GRANTS_NOTE_MAX: usize = 128 * 1024;
/// At most this many quarantine entries travel in the Lease (the newest; the default
/// quarantine is 60 s, so this is a minute of releases).
const QUARANTINE_NOTE_MAX: usize = 1000;
/// A loop that has not turned for this long is stalled (`/healthz` fails).
const STALLED_AFTER: Duration = Duration::from_secs(30);
/// How often a controller still waiting for its first sync says so.
const SYNC_WARN_EVERY: Duration = Duration::from_secs(5);

/// Everything `vipvisor controller` needs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub store_url: String,
    pub pools_file: Option<PathBuf>,
    pub policy: ClassPolicy,
    pub lease: LeaseConfig,
    pub quarantine: Duration,
    /// Where the speakers' ServiceL2Status objects are ([`crate::l2status`]).
    pub speaker_namespace: String,
    /// The hypervisors to grant VIPs on (`--providers FILE`, [`crate::grants`]).
    pub providers: Option<Arc<vipvisor_hypervisor::Hypervisors>>,
    /// Serve the API on this address (`--serve`): the cluster's live store, read and
    /// written with this replica's tokens (`vipvisor --store … token create`).
    pub serve: Option<std::net::SocketAddr>,
    /// The served API takes Kubernetes tokens (TokenReview + SubjectAccessReview) instead
    /// of the store's own.
    pub serve_kubernetes_auth: bool,
    /// TLS for the served API (`--serve-tls-cert`, `--serve-tls-key`).
    pub serve_tls: Option<vipvisor_server::TlsFiles>,
    /// The group id in the virtual MACs this cluster derives (`--virtual-mac-group`), so
    /// two clusters on one LAN never use the same MAC.
    pub virtual_mac_group: u8,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabel {
    provider: String,
    call: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallResultLabel {
    provider: String,
    call: String,
    result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabel {
    provider: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

type CallHistogram = Family<CallLabel, Histogram, fn() -> Histogram>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabel {
    pool: String,
    family: String,
    state: String,
}

/// Controller metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    reconciles: Counter,
    failures: Family<ReasonLabel, Counter>,
    reconcile_seconds: Histogram,
    allocation_seconds: Histogram,
    addresses: Family<PoolLabel, Gauge>,
    /// The pool gauges set last time, so gauges of pools that went away are removed.
    pool_labels: Arc<Mutex<HashSet<PoolLabel>>>,
    leader: Gauge,
    provider_calls: Family<CallResultLabel, Counter>,
    provider_call_seconds: CallHistogram,
    hypervisor_writes: Family<ProviderLabel, Counter>,
    grants: Family<StateLabel, Gauge>,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("vipvisor_controller");
        let m = Metrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            allocation_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            addresses: Family::default(),
            pool_labels: Arc::default(),
            leader: Gauge::default(),
            provider_calls: Family::default(),
            provider_call_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
            hypervisor_writes: Family::default(),
            grants: Family::default(),
            registry: Arc::new(Registry::default()),
        };
        r.register("reconciles", "Service reconciliations", m.reconciles.clone());
        r.register("reconcile_failures", "Failed reconciliations by reason", m.failures.clone());
        r.register("reconcile_duration_seconds", "Time to reconcile one Service", m.reconcile_seconds.clone());
        r.register("allocation_duration_seconds", "Time to allocate through the store", m.allocation_seconds.clone());
        r.register("pool_addresses", "Addresses per pool, family and state", m.addresses.clone());
        r.register("leader", "1 while this replica holds the lease", m.leader.clone());
        r.register(
            "provider_calls",
            "Hypervisor provider calls by provider, call and result",
            m.provider_calls.clone(),
        );
        r.register(
            "provider_call_duration_seconds",
            "Time of one hypervisor provider call",
            m.provider_call_seconds.clone(),
        );
        r.register(
            "hypervisor_writes",
            "Grants and revokes that wrote to a hypervisor (a device update)",
            m.hypervisor_writes.clone(),
        );
        r.register("hypervisor_grants", "Granted NICs in the store by state", m.grants.clone());
        Metrics { registry: Arc::new(r), ..m }
    }
    /// An observer for [`vipvisor_hypervisor::Hypervisors::observed`].
    pub fn provider_observer(&self) -> vipvisor_hypervisor::Observer {
        let (calls, seconds) = (self.provider_calls.clone(), self.provider_call_seconds.clone());
        Arc::new(move |provider: &str, call: &'static str, took: Duration, ok: bool| {
            let result = if ok { "ok" } else { "error" };
            calls
                .get_or_create(&CallResultLabel { provider: provider.into(), call: call.into(), result: result.into() })
                .inc();
            seconds
                .get_or_create(&CallLabel { provider: provider.into(), call: call.into() })
                .observe(took.as_secs_f64());
        })
    }
    pub(crate) fn grant_written(&self, provider: &str, changed: bool) {
        if changed {
            self.hypervisor_writes.get_or_create(&ProviderLabel { provider: provider.into() }).inc();
        }
    }
    fn fail(&self, reason: &str) {
        self.failures.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }
    pub fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
    /// Sets the pool gauges to `rows` and removes the gauges of pools not in them.
    fn set_pools(&self, rows: Vec<(PoolLabel, i64)>) {
        let mut known = self.pool_labels.lock().unwrap_or_else(PoisonError::into_inner);
        let now: HashSet<PoolLabel> = rows.iter().map(|(l, _)| l.clone()).collect();
        for gone in known.difference(&now) {
            self.addresses.remove(gone);
        }
        for (l, n) in rows {
            self.addresses.get_or_create(&l).set(n);
        }
        *known = now;
    }
}

/// Readiness as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Standby,
    /// Leading, but the term's initial pass is still running.
    Passing,
    Leading,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("store: {0}")]
    Store(ApiError),
}

impl ReconcileError {
    fn reason(&self) -> &'static str {
        match self {
            ReconcileError::Kube(_) => "kubernetes",
            ReconcileError::Store(_) => "store",
        }
    }
}

/// A refusal (exhaustion, conflicts, addresses outside every pool) is the Service's
/// problem and becomes an Event; anything else is ours and is retried.
fn is_refusal(e: &ApiError) -> bool {
    !matches!(e.code, ErrorCode::StoreUnavailable | ErrorCode::Internal | ErrorCode::Unreadable)
}

/// A quarantine entry as the Lease carries it. `until_ms` is the releasing leader's wall
/// clock; replicas' clocks are expected to agree within seconds (NTP), much less than a
/// quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct QuarantineNote {
    address: IpAddr,
    service: ServiceKey,
    until_ms: i64,
}

fn quarantine_note(q: &[Quarantined]) -> String {
    let mut v: Vec<QuarantineNote> = q
        .iter()
        .map(|q| QuarantineNote { address: q.address, service: q.service.clone(), until_ms: q.until.0 })
        .collect();
    v.sort_by_key(|n| std::cmp::Reverse(n.until_ms));
    v.truncate(QUARANTINE_NOTE_MAX);
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())
}

fn parse_quarantine_note(s: &str) -> Vec<Quarantined> {
    match serde_json::from_str::<Vec<QuarantineNote>>(s) {
        Ok(v) => v
            .into_iter()
            .map(|n| Quarantined { address: n.address, service: n.service, until: Timestamp(n.until_ms) })
            .collect(),
        Err(e) => {
            warn!(error = %e, "the quarantine kept in the Lease is unreadable; starting without it");
            Vec::new()
        }
    }
}

/// Everything a reconcile needs (built by [`run`], and by tests with a scripted API).
pub struct Ctx {
    pub client: Client,
    pub app: App,
    pub namespaces: Reflector<Namespace>,
    pub policy: ClassPolicy,
    pub recorder: Recorder,
    pub metrics: Metrics,
    phase: watch::Sender<Phase>,
    /// The quarantine as the Lease should carry it.
    notes: watch::Sender<Notes>,
    /// Last failure / warning note reported per Service and slot, so Events are not repeated.
    reported: Mutex<HashMap<(ServiceKey, &'static str), String>>,
    /// Consecutive failures per Service, for the backoff.
    attempts: Mutex<HashMap<ServiceKey, u32>>,
    /// UIDs of deleted Services whose release is due.
    deleted: Mutex<HashMap<ServiceKey, Option<Uid>>>,
    /// Services seen during a term's initial pass (looked at again after it).
    pending: Mutex<HashSet<ServiceKey>>,
    /// Woken when allocations change (the hypervisor grants follow at once).
    pub(crate) kick: Arc<tokio::sync::Notify>,
    /// The group id of the virtual MACs this cluster derives ([`ControllerConfig`]).
    pub virtual_mac_group: u8,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("policy", &self.policy).finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Ctx {
    /// A context; `phase` says whether reconciles act (only while [`Phase::Leading`]).
    pub fn new(
        client: Client,
        app: App,
        namespaces: Reflector<Namespace>,
        policy: ClassPolicy,
        identity: &str,
        metrics: Metrics,
    ) -> Ctx {
        let recorder = Recorder::new(
            client.clone(),
            Reporter { controller: "vipvisor-controller".into(), instance: Some(identity.into()) },
        );
        Ctx {
            client,
            app,
            namespaces,
            policy,
            recorder,
            metrics,
            phase: watch::channel(Phase::Starting).0,
            notes: watch::channel(Notes::new()).0,
            reported: Mutex::default(),
            attempts: Mutex::default(),
            deleted: Mutex::default(),
            pending: Mutex::default(),
            kick: Arc::default(),
            virtual_mac_group: 0,
        }
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.send_replace(p);
    }
    pub(crate) fn leading(&self) -> bool {
        *self.phase.borrow() == Phase::Leading
    }

    pub(crate) async fn event(&self, svc: &Service, type_: EventType, reason: &str, note: String) {
        let action = if reason.starts_with("Hypervisor") { "Grant" } else { "Allocate" };
        let ev = KEvent { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &svc.object_ref(&())).await {
            warn!(error = %crate::Safe(&e), reason, "could not record an event");
        }
    }

    /// Reports `note` once per distinct value per Service and slot.
    pub(crate) async fn once(&self, svc: &Service, slot: &'static str, type_: EventType, reason: &str, note: String) {
        let Some(key) = service_key(svc) else { return };
        if locked(&self.reported).insert((key, slot), note.clone()).as_ref() == Some(&note) {
            return;
        }
        self.event(svc, type_, reason, note).await;
    }

    /// Forgets the note last reported in `slot` (the next one is reported even if equal).
    pub(crate) fn forget(&self, key: &ServiceKey, slot: &'static str) {
        locked(&self.reported).remove(&(key.clone(), slot));
    }

    /// After a grants pass: the grant gauges, and the Lease's note of the grants (the next
    /// leader inherits them; a note over its bound is left out with an error, and the next
    /// leader then trusts no record). One read of the store for both.
    pub(crate) async fn grants_recorded(&self) {
        let rows = match self.app.store().grants().await {
            Ok(r) => r,
            Err(e) => return warn!(error = %e, "cannot read the grants"),
        };
        for state in ["applied", "failed"] {
            let n = rows.iter().filter(|r| r.state == state).count();
            self.metrics.grants.get_or_create(&StateLabel { state: state.into() }).set(n as i64);
        }
        let mut note = serde_json::to_string(&rows).unwrap_or_default();
        if note.len() > GRANTS_NOTE_MAX {
            tracing::error!(
                bytes = note.len(),
                max = GRANTS_NOTE_MAX,
                "the grants are too many for the Lease: a next leader will not know which IP parameters vipvisor added, and will leave them in place when their VIPs go"
            );
            note.clear();
        }
        self.notes.send_if_modified(|n| {
            let changed = n.get(ANN_GRANTS) != Some(&note);
            if changed {
                n.insert(ANN_GRANTS.into(), note);
            }
            changed
        });
    }

    /// Takes over the grants the previous leader left in the Lease.
    async fn inherit_grants(&self, note: &str) {
        // An empty note: the previous leader had too many to hand over. Our own rows are
        // older than its, so none are trusted (what it added stays; what the operator
        // listed is never removed).
        let parsed =
            if note.is_empty() { Ok(Vec::new()) } else { serde_json::from_str::<Vec<vipvisor_store::GrantRow>>(note) };
        match parsed {
            Ok(rows) => match self.app.store().replace_grants(&rows, Timestamp::now()).await {
                Ok(()) => info!(grants = rows.len(), "took the hypervisor grants over from the Lease"),
                Err(e) => warn!(error = %e, "cannot take the grants over"),
            },
            Err(e) => warn!(error = %e, "the Lease's grants note is unreadable; adopting what the hypervisors have"),
        }
    }

    /// The labels of the Service's namespace, from the Namespace cache.
    fn namespace_labels(&self, svc: &Service) -> Labels {
        svc.metadata
            .namespace
            .as_deref()
            .and_then(|ns| self.namespaces.get(&ObjectRef::new(ns)))
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    async fn set_status(&self, svc: &Service, addrs: &[IpAddr]) -> Result<(), kube::Error> {
        let (Some(ns), Some(name)) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref()) else {
            return Ok(());
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": decide::ingress(addrs)}}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }

    /// Keeps the Service's `vipvisor.io/virtual-macs` equal to what its pool asks for:
    /// each address's virtual MAC when the pool has `mac: virtual`, else no note. The
    /// speakers announce with what it says.
    async fn sync_virtual_macs(&self, svc: &Service, a: &vipvisor_model::Allocation) -> Result<(), ReconcileError> {
        let mode = match self.app.store().read(|ipam| ipam.pool(&a.pool).map(|p| p.options.mac)).await {
            Ok(m) => m.unwrap_or_default(),
            Err(e) => return Err(ReconcileError::Store(e.into())),
        };
        let given = decide::annotation(svc, decide::ANN_VIRTUAL_MAC);
        let explicit = match given.map(|v| (v, decide::parse_vip_macs(v))) {
            None => Default::default(),
            Some((_, Ok(m))) => {
                self.forget_if_reported(svc, "vmac");
                m
            }
            Some((value, Err(expected))) => {
                let w = decide::Warning { key: decide::ANN_VIRTUAL_MAC.into(), value: value.to_owned(), expected };
                self.once(svc, "vmac", EventType::Warning, "InvalidAnnotation", w.to_string()).await;
                Default::default()
            }
        };
        let want = decide::virtual_macs_note(&a.addresses, mode, self.virtual_mac_group, &explicit);
        if decide::annotation(svc, decide::ANN_VIRTUAL_MACS) == want.as_deref() {
            return Ok(());
        }
        let (Some(ns), Some(name)) = (svc.metadata.namespace.as_deref(), svc.metadata.name.as_deref()) else {
            return Ok(());
        };
        let api: Api<Service> = Api::namespaced(self.client.clone(), ns);
        let patch = serde_json::json!({"metadata": {"annotations": {decide::ANN_VIRTUAL_MACS: want}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        match &want {
            Some(note) => info!(service = %a.service, virtual_macs = %note, "announced with virtual MACs"),
            None => info!(service = %a.service, "announced with the node's MAC"),
        }
        Ok(())
    }

    fn forget_if_reported(&self, svc: &Service, slot: &'static str) {
        if let Some(key) = service_key(svc) {
            self.forget(&key, slot);
        }
    }

    /// Tells the Lease about the current quarantine (the next leader inherits it).
    async fn publish_quarantine(&self) {
        match self.app.quarantined().await {
            Ok(q) => {
                let note = quarantine_note(&q);
                self.notes.send_if_modified(|n| {
                    let changed = n.get(ANN_QUARANTINE) != Some(&note);
                    if changed {
                        n.insert(ANN_QUARANTINE.into(), note);
                    }
                    changed
                });
            }
            Err(e) => warn!(error = %e, "cannot read the quarantine"),
        }
    }

    /// Makes the cluster and the store agree about one Service.
    pub async fn reconcile_service(&self, svc: &Service) -> Result<(), ReconcileError> {
        self.metrics.reconciles.inc();
        match decide(svc, &self.namespace_labels(svc), &self.policy) {
            Decision::Invalid(why) => {
                warn!(%why, "skipping a Service");
                Ok(())
            }
            Decision::Release { service, uid, clear_status } => {
                let r = self.app.release(&service, uid.as_ref()).await.map_err(ReconcileError::Store)?;
                if !r.released.is_empty() {
                    self.kick.notify_one();
                    let addrs: Vec<String> = r.released.iter().map(ToString::to_string).collect();
                    info!(%service, addresses = ?addrs, "released");
                    self.publish_quarantine().await;
                    if clear_status && !decide::status_addresses(svc).is_empty() {
                        self.set_status(svc, &[]).await?;
                    }
                    self.event(svc, EventType::Normal, "IPReleased", format!("Released {}", addrs.join(", "))).await;
                }
                Ok(())
            }
            Decision::Allocate { request, status_addresses, warnings } => {
                let started = Instant::now();
                let res = self.app.allocate_outcome(&request).await;
                self.metrics.allocation_seconds.observe(started.elapsed().as_secs_f64());
                let res = match res {
                    Ok(o) => Ok(o),
                    Err(e) if is_refusal(&e) => Err(e),
                    Err(e) => return Err(ReconcileError::Store(e)),
                };
                self.apply_outcome(svc, &status_addresses, &warnings, res).await
            }
        }
    }

    /// Writes what an allocation means for the Service: status, Events, warnings.
    async fn apply_outcome(
        &self,
        svc: &Service,
        status_addresses: &[IpAddr],
        warnings: &[decide::Warning],
        res: Result<Outcome, ApiError>,
    ) -> Result<(), ReconcileError> {
        let note: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        if !note.is_empty() {
            self.once(svc, "warn", EventType::Warning, "InvalidAnnotation", note.join("; ")).await;
        }
        match res {
            Ok(o) => {
                if !o.quarantined.is_empty() || !o.reclaimed.is_empty() {
                    self.publish_quarantine().await;
                }
                let mut have = status_addresses.to_vec();
                have.sort();
                let status_changes = have != o.allocation.addresses;
                if o.change != Change::Unchanged || status_changes {
                    self.kick.notify_one();
                }
                if status_changes {
                    self.set_status(svc, &o.allocation.addresses).await?;
                }
                self.sync_virtual_macs(svc, &o.allocation).await?;
                // Adopting what the status already shows is not news: no Event for it.
                if o.change != Change::Unchanged && status_changes {
                    let addrs: Vec<String> = o.allocation.addresses.iter().map(ToString::to_string).collect();
                    info!(service = %o.allocation.service, addresses = ?addrs, pool = %o.allocation.pool, "allocated");
                    self.event(
                        svc,
                        EventType::Normal,
                        "IPAllocated",
                        format!("Assigned {} from pool {}", addrs.join(", "), o.allocation.pool),
                    )
                    .await;
                }
                Ok(())
            }
            Err(e) => {
                // An Event, not an error loop. A status address is kept, not renumbered.
                self.metrics.fail("allocation");
                let note = if status_addresses.is_empty() {
                    e.to_string()
                } else {
                    format!("{e}; keeping the address in the status unmanaged")
                };
                self.once(svc, "fail", EventType::Warning, "AllocationFailed", note).await;
                Ok(())
            }
        }
    }

    /// The Service is gone: release its addresses (guarded by its uid when known).
    async fn release_deleted(&self, key: &ServiceKey, uid: Option<&Uid>) -> Result<(), ReconcileError> {
        let r = self.app.release(key, uid).await.map_err(ReconcileError::Store)?;
        if !r.released.is_empty() {
            self.kick.notify_one();
            info!(service = %key, addresses = ?r.released, "released (service deleted)");
            self.publish_quarantine().await;
        }
        locked(&self.reported).retain(|(k, _), _| k != key);
        Ok(())
    }

    async fn refresh_pool_metrics(&self) {
        let rows = self
            .app
            .store()
            .read(|ipam| {
                let mut rows = Vec::new();
                for p in ipam.pools() {
                    for f in ipam.stats(&p.name).unwrap_or_default() {
                        for (state, n) in [
                            ("used", f.used),
                            ("free", f.free),
                            ("quarantined", f.quarantined),
                            ("reserved", f.reserved),
                        ] {
                            let l = PoolLabel {
                                pool: p.name.to_string(),
                                family: f.family.as_str().into(),
                                state: state.into(),
                            };
                            rows.push((l, i64::try_from(n).unwrap_or(i64::MAX)));
                        }
                    }
                }
                rows
            })
            .await;
        match rows {
            Ok(rows) => self.metrics.set_pools(rows),
            Err(e) => warn!(error = %e, "cannot read the pools for metrics"),
        }
    }
}

/// kube-runtime's reconcile: acts only while leading; never told why it runs. A standby
/// does nothing (the next term's pass covers what it saw); a Service seen while a term's
/// pass runs is noted and looked at after the pass if it changed since the pass saw it.
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let phase = *ctx.phase.borrow();
    match phase {
        Phase::Leading => {}
        Phase::Passing => {
            if let Some(key) = service_key(&svc) {
                locked(&ctx.pending).insert(key);
            }
            return Ok(Action::await_change());
        }
        Phase::Starting | Phase::Standby => return Ok(Action::await_change()),
    }
    let started = Instant::now();
    let res = ctx.reconcile_service(&svc).await;
    ctx.metrics.reconcile_seconds.observe(started.elapsed().as_secs_f64());
    res?;
    if let Some(key) = service_key(&svc) {
        locked(&ctx.attempts).remove(&key);
    }
    Ok(Action::await_change())
}

/// The retry delay after `attempts` consecutive failures: 0.5 s doubling up to 60 s.
pub fn backoff(attempts: u32) -> Duration {
    let ms = 500u64.saturating_mul(1u64 << attempts.saturating_sub(1).min(7));
    Duration::from_millis(ms.min(60_000))
}

/// kube-runtime's error policy: count the failure, retry with per-Service backoff.
pub fn error_policy(svc: Arc<Service>, err: &ReconcileError, ctx: Arc<Ctx>) -> Action {
    ctx.metrics.fail(err.reason());
    let n = match service_key(&svc) {
        Some(key) => {
            let mut a = locked(&ctx.attempts);
            let n = a.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        None => 1,
    };
    let delay = backoff(n);
    warn!(service = ?service_key(&svc), error = %err, attempt = n, retry_in_ms = delay.as_millis() as u64, "reconcile failed");
    Action::requeue(delay)
}

/// The start of a term: keeps the store's allocations that agree with the Services'
/// statuses (forgetting the others and the store's quarantine), adopts every address in a
/// status, takes the quarantine over (`inherited`), serves the Services without an
/// address, and releases allocations whose Service no longer exists. Each batch is one
/// store transaction. Returns the resourceVersion of every Service it saw.
async fn full_pass(
    ctx: &Ctx,
    services: &Reflector<Service>,
    inherited: Vec<Quarantined>,
) -> HashMap<ServiceKey, Option<String>> {
    let all = services.state();
    let statuses: HashMap<ServiceKey, Vec<IpAddr>> = all
        .iter()
        .filter_map(|s| {
            let mut a = decide::status_addresses(s);
            a.sort();
            Some((service_key(s)?, a)).filter(|(_, a)| !a.is_empty())
        })
        .collect();
    match ctx.app.forget_allocations(|a| statuses.get(&a.service) == Some(&a.addresses)).await {
        Ok(n) if n > 0 => info!(entries = n, "forgot store entries the cluster does not show; rebuilding them"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot reconcile the store with the cluster"),
    }
    let (with_status, without): (Vec<_>, Vec<_>) = all.iter().partition(|s| !decide::status_addresses(s).is_empty());
    serve_batch(ctx, &with_status).await;
    if !inherited.is_empty() {
        match ctx.app.restore_quarantine(inherited).await {
            Ok(r) => info!(entries = r.len(), "took the quarantine over from the Lease"),
            Err(e) => warn!(error = %e, "cannot restore the quarantine"),
        }
    }
    serve_batch(ctx, &without).await;
    let existing: HashSet<ServiceKey> = all.iter().filter_map(|s| service_key(s)).collect();
    match ctx.app.allocations().await {
        Ok(allocs) => {
            for key in allocs.into_iter().map(|a| a.service).filter(|k| !existing.contains(k)) {
                if let Err(e) = ctx.release_deleted(&key, None).await {
                    warn!(service = %key, error = %e, "could not release the allocation of a deleted service");
                }
            }
        }
        Err(e) => warn!(error = %e, "cannot list allocations"),
    }
    ctx.refresh_pool_metrics().await;
    all.iter().filter_map(|s| Some((service_key(s)?, s.metadata.resource_version.clone()))).collect()
}

/// Reconciles `svcs`, their allocations in one store transaction.
async fn serve_batch(ctx: &Ctx, svcs: &[&Arc<Service>]) {
    let mut batch = Vec::new();
    for svc in svcs {
        match decide(svc, &ctx.namespace_labels(svc), &ctx.policy) {
            Decision::Allocate { request, status_addresses, warnings } => {
                batch.push((svc, request, status_addresses, warnings))
            }
            _ => {
                if let Err(e) = ctx.reconcile_service(svc).await {
                    warn!(service = ?service_key(svc), error = %e, "reconcile failed during the initial pass");
                }
            }
        }
    }
    if batch.is_empty() {
        return;
    }
    let requests: Vec<_> = batch.iter().map(|(_, r, _, _)| r.clone()).collect();
    let started = Instant::now();
    match ctx.app.allocate_many(&requests).await {
        Ok(results) => {
            ctx.metrics.allocation_seconds.observe(started.elapsed().as_secs_f64());
            for ((svc, _, status, warnings), res) in batch.iter().zip(results) {
                ctx.metrics.reconciles.inc();
                let res = res.map_err(|e: IpamError| ApiError::from(e));
                if let Err(e) = ctx.apply_outcome(svc, status, warnings, res).await {
                    warn!(service = ?service_key(svc), error = %e, "could not write the outcome during the initial pass");
                }
            }
        }
        Err(e) => {
            warn!(error = %e, "the batched initial pass failed; reconciling services one by one");
            for (svc, _, _, _) in &batch {
                if let Err(e) = ctx.reconcile_service(svc).await {
                    warn!(service = ?service_key(svc), error = %e, "reconcile failed during the initial pass");
                }
            }
        }
    }
}

/// Applies the pools file (prune, no force). Leader only.
async fn apply_pools(app: &App, path: &std::path::Path) -> Result<(), ApiError> {
    let p = path.display().to_string();
    let config = tokio::task::spawn_blocking(move || read_pools_file(&p))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("reading the pools file: {e}")))??;
    let report = app.apply(config, ApplyOptions { prune: true, force: false, allow_empty: false }).await?;
    if report.changed {
        info!(file = %path.display(), "pools applied");
    }
    Ok(())
}

async fn mtime(p: &std::path::Path) -> Option<SystemTime> {
    tokio::fs::metadata(p).await.and_then(|m| m.modified()).ok()
}

/// Runs the controller until `shutdown` completes; `phase` tells the binary's `/readyz`
/// where it is.
pub async fn run(
    client: Client,
    cfg: ControllerConfig,
    health: Health,
    metrics: Metrics,
    phase: watch::Sender<Phase>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ApiError> {
    // This replica's own store; nothing is written to it before this replica leads.
    let app = App::open(&cfg.store_url, &format!("controller:{}", cfg.lease.identity), cfg.quarantine).await?;
    let (ns_reader, ns_writer) = reflector::store::<Namespace>();
    let ns_task = reflect(Api::<Namespace>::all(client.clone()), ns_writer, "namespace", |_| {});
    let mut ctx = Ctx::new(client.clone(), app, ns_reader, cfg.policy.clone(), &cfg.lease.identity, metrics.clone());
    ctx.virtual_mac_group = cfg.virtual_mac_group;
    ctx.phase = phase;
    let ctx = Arc::new(ctx);

    // The Service watch feeds the runtime; deletions are noted with their UIDs.
    let (svc_reader, svc_writer) = reflector::store::<Service>();
    let server = match cfg.serve {
        Some(addr) => {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let (services, c) = (svc_reader.clone(), ctx.clone());
            // "Why pending": the Services of ours that want an address, as decided now.
            let pending: vipvisor_server::PendingSource = Arc::new(move || {
                services
                    .state()
                    .iter()
                    .filter_map(|svc| match decide(svc, &c.namespace_labels(svc), &c.policy) {
                        Decision::Allocate { request, status_addresses, warnings } if status_addresses.is_empty() => {
                            Some((request, warnings.iter().map(|w| w.to_string()).collect()))
                        }
                        _ => None,
                    })
                    .collect()
            });
            let auth = cfg.serve_kubernetes_auth.then(|| {
                std::sync::Arc::new(crate::auth::KubeAuth::new(client.clone()))
                    as std::sync::Arc<dyn vipvisor_server::ExternalAuth>
            });
            let sources = vipvisor_server::Sources {
                pending: Some(pending),
                auth,
                hypervisor: cfg.providers.clone(),
                metrics: None,
                print_login: false,
            };
            let task = tokio::spawn(vipvisor_server::serve(
                addr,
                ctx.app.clone(),
                axum::Router::new(),
                cfg.serve_tls.clone(),
                sources,
                async {
                    let _ = rx.await;
                },
            ));
            Some((tx, task))
        }
        None => None,
    };
    let deletions = ctx.clone();
    let stream = watcher(Api::<Service>::all(client.clone()), watcher::Config::default())
        .default_backoff()
        .modify(|o: &mut Service| o.meta_mut().managed_fields = None)
        .reflect(svc_writer)
        .inspect(move |ev| {
            if let Ok(watcher::Event::Delete(s)) = ev {
                if let Some(key) = service_key(s) {
                    let uid = s.metadata.uid.as_deref().and_then(|u| u.parse().ok());
                    locked(&deletions.deleted).insert(key, uid);
                }
            }
        })
        .touched_objects();
    let (all_tx, all_rx) = mpsc::channel::<()>(4);
    let (stop_tx, stop_rx) = watch::channel(false);
    let runtime_stop = {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let runner = {
        let ctx = ctx.clone();
        let results_ctx = ctx.clone();
        Controller::for_stream(stream, svc_reader.clone())
            .with_config(ControllerRuntimeConfig::default().concurrency(8))
            .reconcile_all_on(tokio_stream_from(all_rx))
            .graceful_shutdown_on(runtime_stop)
            .run(reconcile, error_policy, ctx)
            .for_each(move |res| {
                let ctx = results_ctx.clone();
                async move {
                    match res {
                        Ok(_) => {}
                        Err(ControllerError::ObjectNotFound(r)) => {
                            let Some(key) = r.namespace.as_deref().and_then(|ns| ServiceKey::new(ns, &r.name).ok())
                            else {
                                return;
                            };
                            // Not leading: the entry waits for the next term's pass.
                            if ctx.leading() {
                                let uid = locked(&ctx.deleted).remove(&key).flatten();
                                if let Err(e) = ctx.release_deleted(&key, uid.as_ref()).await {
                                    warn!(service = %key, error = %e, "could not release a deleted service");
                                }
                            }
                        }
                        Err(ControllerError::ReconcilerFailed(..)) => {}
                        Err(e) => warn!(error = %e, "controller"),
                    }
                }
            })
    };
    let runner = tokio::spawn(runner);

    let (lead_tx, mut lead_rx) = watch::channel(Leadership::default());
    let lease_task = tokio::spawn(lease::run(
        client.clone(),
        cfg.lease.clone(),
        lead_tx,
        ctx.notes.subscribe(),
        stop_rx.clone(),
        health.register("lease", STALLED_AFTER),
        // Healthy while the apiserver answers lease requests (a lease's worth of silence).
        health.register("apiserver", cfg.lease.duration.max(Duration::from_secs(2))),
    ));

    let started = Instant::now();
    let synced = async {
        cache_ready(&svc_reader).await.map_err(|e| format!("service reflector: {e}"))?;
        cache_ready(&ctx.namespaces).await.map_err(|e| format!("namespace reflector: {e}"))
    };
    tokio::pin!(shutdown);
    tokio::pin!(synced);
    let mut waiting = tokio::time::interval_at(tokio::time::Instant::now() + SYNC_WARN_EVERY, SYNC_WARN_EVERY);
    loop {
        tokio::select! {
            r = &mut synced => {
                r.map_err(|e| ApiError::new(ErrorCode::Internal, e))?;
                break;
            }
            _ = waiting.tick() => {
                warn!(waited_s = started.elapsed().as_secs(), "the Service and Namespace caches are not synced yet: is the apiserver answering?");
            }
            () = &mut shutdown => {
                let _ = stop_tx.send(true);
                return Ok(());
            }
        }
    }
    info!(services = svc_reader.state().len(), elapsed_ms = started.elapsed().as_millis() as u64, "caches synced");
    ctx.set_phase(Phase::Standby);
    let (reports_tx, reports_rx) = watch::channel(None::<crate::grants::Reports>);
    let announced = {
        let c = ctx.clone();
        tokio::spawn(crate::l2status::reflect_into_services(
            client.clone(),
            svc_reader.clone(),
            cfg.speaker_namespace.clone(),
            cfg.policy.clone(),
            move || c.leading(),
            reports_tx,
        ))
    };
    let owners = {
        let c = ctx.clone();
        tokio::spawn(crate::l2status::record_owners(ctx.app.clone(), move || c.leading(), reports_rx.clone()))
    };
    // Hypervisor grants (`--providers`): the Nodes say which report's node is excluded.
    let grants = cfg.providers.clone().map(|hv| {
        let (node_reader, node_writer) = reflector::store::<Node>();
        let nodes = reflect(Api::<Node>::all(client.clone()), node_writer, "node", |_| {});
        let task = tokio::spawn(crate::grants::run(ctx.clone(), hv, svc_reader.clone(), node_reader, reports_rx));
        (nodes, task)
    });

    let beat = health.register("leader", STALLED_AFTER);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut metrics_every = 0u32;
    'outer: loop {
        // Standby: keep the caches warm, write nothing. Our grants note is stale now: the
        // next acquisition must not write it over the current leader's.
        metrics.leader.set(0);
        ctx.set_phase(Phase::Standby);
        ctx.notes.send_if_modified(|n| n.remove(ANN_GRANTS).is_some());
        while !lead_rx.borrow_and_update().leading {
            beat.beat();
            tokio::select! {
                () = &mut shutdown => break 'outer,
                r = lead_rx.changed() => if r.is_err() { break 'outer },
                _ = tick.tick() => {}
            }
        }
        let term = lead_rx.borrow().clone();
        metrics.leader.set(1);
        ctx.set_phase(Phase::Passing);
        let pass = Instant::now();
        // A new term starts over: the pools file, then the allocations as the cluster
        // shows them and the quarantine the previous leader left in the Lease.
        let mut pools_mtime = None;
        if let Some(path) = &cfg.pools_file {
            pools_mtime = mtime(path).await;
            if let Err(e) = apply_pools(&ctx.app, path).await {
                warn!(file = %path.display(), error = %e, "pools file not applied; keeping the current pools");
            }
        }
        // Deletions seen while standing by are covered by the pass's sweep.
        locked(&ctx.deleted).clear();
        let inherited = term.inherited.get(ANN_QUARANTINE).map(|n| parse_quarantine_note(n)).unwrap_or_default();
        if let (Some(_), Some(note)) = (&cfg.providers, term.inherited.get(ANN_GRANTS)) {
            ctx.inherit_grants(note).await;
        }
        locked(&ctx.pending).clear();
        let seen = full_pass(&ctx, &svc_reader, inherited).await;
        ctx.set_phase(Phase::Leading);
        // Services that changed while the pass ran (not those it saw as they are now).
        let touched: Vec<ServiceKey> = locked(&ctx.pending).drain().collect();
        for key in touched {
            let Some(svc) = svc_reader.get(&ObjectRef::new(key.name()).within(key.namespace())) else { continue };
            if seen.get(&key) != Some(&svc.metadata.resource_version) {
                if let Err(e) = ctx.reconcile_service(&svc).await {
                    warn!(service = %key, error = %e, "reconcile failed right after the initial pass");
                }
            }
        }
        // Deletions that arrived during the pass.
        let late: Vec<(ServiceKey, Option<Uid>)> = locked(&ctx.deleted).drain().collect();
        for (key, uid) in late {
            let present = svc_reader.get(&ObjectRef::new(key.name()).within(key.namespace())).is_some();
            if !present {
                if let Err(e) = ctx.release_deleted(&key, uid.as_ref()).await {
                    warn!(service = %key, error = %e, "could not release a deleted service");
                }
            }
        }
        ctx.publish_quarantine().await;
        info!(services = seen.len(), elapsed_ms = pass.elapsed().as_millis() as u64, "leading: initial pass done");
        loop {
            beat.beat();
            tokio::select! {
                () = &mut shutdown => break 'outer,
                r = lead_rx.changed() => {
                    if r.is_err() { break 'outer }
                    let now = lead_rx.borrow().clone();
                    if !now.leading || now.term != term.term {
                        info!("lost the lease: standing by");
                        continue 'outer;
                    }
                }
                _ = tick.tick() => {
                    if let Some(path) = &cfg.pools_file {
                        let m = mtime(path).await;
                        if m != pools_mtime {
                            pools_mtime = m;
                            match apply_pools(&ctx.app, path).await {
                                Ok(()) => { let _ = all_tx.try_send(()); }
                                Err(e) => warn!(file = %path.display(), error = %e, "pools file not applied; keeping the current pools"),
                            }
                        }
                    }
                    metrics_every += 1;
                    if metrics_every % 5 == 0 {
                        ctx.refresh_pool_metrics().await;
                    }
                }
            }
        }
    }
    beat.done();
    ctx.set_phase(Phase::Standby);
    announced.abort();
    owners.abort();
    if let Some((nodes, task)) = grants {
        task.abort();
        nodes.abort();
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), runner).await;
    ns_task.abort();
    if let Some((stop, task)) = server {
        let _ = stop.send(());
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), task).await {
            warn!(error = %e.message, "the API server stopped with an error");
        }
    }
    ctx.app.close().await;
    info!("controller stopped");
    Ok(())
}

/// Waits until `store` has its first full list. kube-runtime's readiness wakes only the
/// last task that polled it (one oneshot receiver behind a mutex), and the Controller's
/// runner waits on the same store, so this asks again every 50 ms instead of relying on a
/// wake-up that may go to the runner.
async fn cache_ready<K>(store: &Reflector<K>) -> Result<(), reflector::store::WriterDropped>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    loop {
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(50), store.wait_until_ready()).await {
            return r;
        }
    }
}

/// An mpsc receiver as a stream of `()`.
fn tokio_stream_from(mut rx: mpsc::Receiver<()>) -> impl futures::Stream<Item = ()> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(30), Duration::from_secs(60), "capped at a minute");
    }

    /// Before, the gauges of a pool that was removed stayed in /metrics for ever.
    #[test]
    fn gauges_of_removed_pools_go() {
        let m = Metrics::new();
        let l = |pool: &str| PoolLabel { pool: pool.into(), family: "ipv4".into(), state: "used".into() };
        m.set_pools(vec![(l("web"), 3), (l("lab"), 1)]);
        assert!(m.encode().contains("pool=\"lab\""), "{}", m.encode());
        m.set_pools(vec![(l("web"), 4)]);
        let text = m.encode();
        assert!(!text.contains("pool=\"lab\""), "the removed pool's gauges are gone: {text}");
        assert!(text.contains("pool=\"web\""));
    }

    #[test]
    fn the_quarantine_note_round_trips_and_is_bounded() {
        let q: Vec<Quarantined> = (0..1500u32)
            .map(|i| Quarantined {
                address: IpAddr::V6(std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(i))),
                service: format!("ns/s{i}").parse().unwrap(),
                until: Timestamp(i64::from(i)),
            })
            .collect();
        let note = quarantine_note(&q);
        let back = parse_quarantine_note(&note);
        assert_eq!(back.len(), QUARANTINE_NOTE_MAX, "at most {QUARANTINE_NOTE_MAX} entries travel");
        assert_eq!(back[0].until, Timestamp(1499), "the newest are kept");
        assert!(parse_quarantine_note("not json").is_empty(), "a broken note is ignored, not fatal");
    }
}
