//! The Kubernetes LoadBalancer controller.
//!
//! Reflectors keep Services and Namespaces in memory; watcher events put Service keys on a
//! queue. Only the Lease holder works the queue. A key whose Service is gone is released;
//! otherwise [`decide`] says what the Service needs and the store allocates it, then the
//! status and Events are written. On (re)gaining leadership, Services whose status already
//! shows addresses are adopted first, then the others, then allocations of Services that no
//! longer exist are released.

pub mod decide;
pub mod lease;
pub mod speaker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use kube::api::{Api, Patch, PatchParams};
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
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::ipam::Change;
use crate::model::{ServiceKey, Timestamp};
use crate::store::{Store, StoreError};
use decide::{decide, ClassPolicy, Decision};
use lease::LeaseConfig;

/// Everything `vipvisor controller` needs.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    pub store_url: String,
    pub pools_file: Option<PathBuf>,
    pub policy: ClassPolicy,
    pub lease: LeaseConfig,
    pub metrics_addr: Option<SocketAddr>,
    pub quarantine: Duration,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

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
    allocation_seconds: Histogram,
    addresses: Family<PoolLabel, Gauge>,
    leader: Gauge,
    registry: Arc<Registry>,
}

impl Metrics {
    fn new() -> Self {
        let mut r = Registry::with_prefix("vipvisor_controller");
        let m = Metrics {
            reconciles: Counter::default(),
            failures: Family::default(),
            allocation_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            addresses: Family::default(),
            leader: Gauge::default(),
            registry: Arc::new(Registry::default()),
        };
        r.register("reconciles", "Service reconciliations", m.reconciles.clone());
        r.register("reconcile_failures", "Failed reconciliations by reason", m.failures.clone());
        r.register("allocation_duration_seconds", "Time to allocate through the store", m.allocation_seconds.clone());
        r.register("pool_addresses", "Addresses per pool, family and state", m.addresses.clone());
        r.register("leader", "1 while this replica holds the lease", m.leader.clone());
        Metrics { registry: Arc::new(r), ..m }
    }
    fn fail(&self, reason: &str) {
        self.failures.get_or_create(&ReasonLabel { reason: reason.into() }).inc();
    }
    fn encode(&self) -> String {
        let mut s = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Store(StoreError),
}

struct Ctx {
    client: Client,
    store: Store,
    services: Reflector<Service>,
    namespaces: Reflector<Namespace>,
    policy: ClassPolicy,
    recorder: Recorder,
    metrics: Metrics,
    quarantine: Duration,
    /// Last failure / warning note reported per Service and slot, so Events are not repeated.
    reported: tokio::sync::Mutex<HashMap<(ServiceKey, &'static str), String>>,
}

fn key_of(svc: &Service) -> Option<ServiceKey> {
    ServiceKey::new(svc.metadata.namespace.as_deref()?, svc.metadata.name.as_deref()?).ok()
}

impl Ctx {
    async fn event(&self, svc: &Service, type_: EventType, reason: &str, note: String) {
        let ev = KEvent { type_, reason: reason.into(), note: Some(note), action: "Allocate".into(), secondary: None };
        if let Err(e) = self.recorder.publish(&ev, &svc.object_ref(&())).await {
            warn!(error = %e, reason, "could not record an event");
        }
    }

    /// Reports `note` once per distinct value per Service and slot.
    async fn once(&self, svc: &Service, slot: &'static str, type_: EventType, reason: &str, note: String) {
        let Some(key) = key_of(svc) else { return };
        if self.reported.lock().await.insert((key, slot), note.clone()).as_ref() == Some(&note) {
            return;
        }
        self.event(svc, type_, reason, note).await;
    }

    /// The labels of the Service's namespace, from the Namespace cache.
    fn namespace_labels(&self, svc: &Service) -> crate::model::Labels {
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

    async fn reconcile(&self, svc: &Service) -> Result<(), ReconcileError> {
        self.metrics.reconciles.inc();
        match decide(svc, &self.namespace_labels(svc), &self.policy) {
            Decision::Invalid(why) => {
                warn!(%why, "skipping a Service");
                Ok(())
            }
            Decision::Release { service, uid, clear_status } => {
                let now = Timestamp::now();
                let released = self
                    .store
                    .release(&service, uid.as_ref(), now, self.quarantine)
                    .await
                    .map_err(ReconcileError::Store)?;
                if let Some(r) = released {
                    let addrs: Vec<String> = r.allocation.addresses.iter().map(ToString::to_string).collect();
                    info!(%service, addresses = ?addrs, "released");
                    if clear_status && !decide::status_addresses(svc).is_empty() {
                        self.set_status(svc, &[]).await?;
                    }
                    self.event(svc, EventType::Normal, "IPReleased", format!("Released {}", addrs.join(", "))).await;
                }
                Ok(())
            }
            Decision::Allocate { request, status_addresses, warnings } => {
                let started = Instant::now();
                let res = self.store.allocate(&request, Timestamp::now(), self.quarantine).await;
                self.metrics.allocation_seconds.observe(started.elapsed().as_secs_f64());
                let res = match res {
                    Ok(o) => Ok(o),
                    Err(StoreError::Ipam(e)) => Err(e),
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
        res: Result<crate::ipam::Outcome, crate::ipam::IpamError>,
    ) -> Result<(), ReconcileError> {
        let note: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        if !note.is_empty() {
            self.once(svc, "warn", EventType::Warning, "InvalidAnnotation", note.join("; ")).await;
        }
        match res {
            Ok(o) => {
                let mut have = status_addresses.to_vec();
                have.sort();
                let status_changes = have != o.allocation.addresses;
                if status_changes {
                    self.set_status(svc, &o.allocation.addresses).await?;
                }
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
                // Exhaustion, conflicts, addresses outside every pool: an Event, not an
                // error loop. A status address is kept, not renumbered.
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

    /// The Service is gone: release its addresses (guarded by its uid).
    async fn release_deleted(&self, key: &ServiceKey, uid: Option<&crate::model::Uid>) -> Result<(), ReconcileError> {
        let released =
            self.store.release(key, uid, Timestamp::now(), self.quarantine).await.map_err(ReconcileError::Store)?;
        if let Some(r) = released {
            info!(service = %key, addresses = ?r.allocation.addresses, "released (service deleted)");
        }
        self.reported.lock().await.retain(|(k, _), _| k != key);
        Ok(())
    }

    async fn refresh_pool_metrics(&self) {
        if let Ok(ipam) = self.store.snapshot().await {
            for p in ipam.pools() {
                for f in ipam.stats(&p.name).unwrap_or_default() {
                    for (state, n) in
                        [("used", f.used), ("free", f.free), ("quarantined", f.quarantined), ("reserved", f.reserved)]
                    {
                        let l = PoolLabel {
                            pool: p.name.to_string(),
                            family: f.family.as_str().into(),
                            state: state.into(),
                        };
                        self.metrics.addresses.get_or_create(&l).set(i64::try_from(n).unwrap_or(i64::MAX));
                    }
                }
            }
        }
    }
}

/// A queued unit of work: a Service key, with the uid of a deleted object.
#[derive(Debug, Clone)]
struct Work {
    key: ServiceKey,
    deleted_uid: Option<crate::model::Uid>,
}

/// Readiness as `/readyz` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Standby,
    Leading,
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    cfg: ControllerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let store = Store::open(&cfg.store_url).await?.with_actor(format!("controller:{}", cfg.lease.identity));
    if let Some(path) = &cfg.pools_file {
        apply_pools(&store, path).await?;
    }
    let metrics = Metrics::new();
    let (phase_tx, phase_rx) = watch::channel(Phase::Starting);
    if let Some(addr) = cfg.metrics_addr {
        serve(addr, metrics.clone(), phase_rx.clone()).await?;
    }

    let (svc_reader, svc_writer) = reflector::store::<Service>();
    let (ns_reader, ns_writer) = reflector::store::<Namespace>();
    let (work_tx, mut work_rx) = mpsc::unbounded_channel::<Work>();
    let svc_api: Api<Service> = Api::all(client.clone());
    let ns_api: Api<Namespace> = Api::all(client.clone());
    let mut tasks = Vec::new();
    {
        let tx = work_tx.clone();
        tasks.push(reflect(svc_api, svc_writer, "service", move |ev| match ev {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) => {
                if let Some(key) = key_of(s) {
                    let _ = tx.send(Work { key, deleted_uid: None });
                }
            }
            watcher::Event::Delete(s) => {
                if let Some(key) = key_of(s) {
                    let uid = s.metadata.uid.as_deref().and_then(|u| u.parse().ok());
                    let _ = tx.send(Work { key, deleted_uid: uid });
                }
            }
            _ => {}
        }));
    }
    tasks.push(reflect(ns_api, ns_writer, "namespace", |_| {}));
    let (leader_tx, mut leader_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let lease_task = tokio::spawn(lease::run(client.clone(), cfg.lease.clone(), leader_tx, stop_rx));
    if let Some(path) = cfg.pools_file.clone() {
        let (store_url, tx, reader) = (cfg.store_url.clone(), work_tx.clone(), svc_reader.clone());
        tasks.push(tokio::spawn(watch_pools_file(path, store_url, tx, reader)));
    }

    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "vipvisor-controller".into(), instance: Some(cfg.lease.identity.clone()) },
    );
    let ctx = Arc::new(Ctx {
        client,
        store,
        services: svc_reader,
        namespaces: ns_reader,
        policy: cfg.policy.clone(),
        recorder,
        metrics: metrics.clone(),
        quarantine: cfg.quarantine,
        reported: tokio::sync::Mutex::new(HashMap::new()),
    });
    let started = Instant::now();
    ctx.services.wait_until_ready().await.map_err(|e| anyhow::anyhow!("service reflector: {e}"))?;
    ctx.namespaces.wait_until_ready().await.map_err(|e| anyhow::anyhow!("namespace reflector: {e}"))?;
    info!(services = ctx.services.state().len(), elapsed_ms = started.elapsed().as_millis() as u64, "caches synced");
    let _ = phase_tx.send(Phase::Standby);

    tokio::pin!(shutdown);
    let mut retry_at: BTreeMap<Instant, Vec<Work>> = BTreeMap::new();
    let mut metrics_tick = tokio::time::interval(Duration::from_secs(10));
    'outer: loop {
        // Standby: wait for the lease, draining the queue (the leader's first pass covers all).
        while !*leader_rx.borrow() {
            metrics.leader.set(0);
            let _ = phase_tx.send(Phase::Standby);
            tokio::select! {
                () = &mut shutdown => break 'outer,
                r = leader_rx.changed() => if r.is_err() { break 'outer },
                _ = work_rx.recv() => {}
            }
        }
        metrics.leader.set(1);
        let pass = Instant::now();
        let adopted = full_pass(&ctx).await;
        info!(services = adopted, elapsed_ms = pass.elapsed().as_millis() as u64, "leading: initial pass done");
        let _ = phase_tx.send(Phase::Leading);
        loop {
            let next_retry = retry_at.keys().next().copied();
            tokio::select! {
                () = &mut shutdown => break 'outer,
                r = leader_rx.changed() => {
                    if r.is_err() { break 'outer }
                    if !*leader_rx.borrow() { info!("lost the lease: standing by"); continue 'outer; }
                }
                w = work_rx.recv() => {
                    let Some(w) = w else { break 'outer };
                    if let Err(e) = handle(&ctx, &w).await {
                        warn!(service = %w.key, error = %e, "reconcile failed; retrying");
                        ctx.metrics.fail(match e { ReconcileError::Kube(_) => "kubernetes", ReconcileError::Store(_) => "store" });
                        retry_at.entry(Instant::now() + Duration::from_secs(2)).or_default().push(w);
                    }
                }
                _ = async { match next_retry { Some(t) => tokio::time::sleep_until(t.into()).await, None => std::future::pending().await } } => {
                    if let Some((_, ws)) = retry_at.pop_first() {
                        for w in ws { let _ = work_tx.send(w); }
                    }
                }
                _ = metrics_tick.tick() => ctx.refresh_pool_metrics().await,
            }
        }
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), lease_task).await;
    for t in tasks {
        t.abort();
    }
    ctx.store.close().await;
    info!("controller stopped");
    Ok(())
}

/// Keeps `writer`'s cache of every `K` up to date (without managedFields: most of a cached
/// object, never read here), logs watch errors, and calls `on_event` for every event after
/// the cache has applied it. Shared by the controller and the speaker.
pub(crate) fn reflect<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    what: &'static str,
    mut on_event: impl FnMut(&watcher::Event<K>) + Send + 'static,
) -> tokio::task::JoinHandle<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|o: &mut K| o.meta_mut().managed_fields = None)
            .reflect(writer);
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => on_event(&ev),
                Err(e) => warn!(error = %e, "{what} watch error"),
            }
        }
    })
}

async fn handle(ctx: &Ctx, w: &Work) -> Result<(), ReconcileError> {
    let r = ObjectRef::<Service>::new(w.key.name()).within(w.key.namespace());
    match ctx.services.get(&r) {
        Some(svc) => {
            // A re-created Service with the same name is a new object: serve it.
            ctx.reconcile(&svc).await
        }
        None => ctx.release_deleted(&w.key, w.deleted_uid.as_ref()).await,
    }
}

/// Adopts Services whose status shows addresses, then serves the others, then releases
/// allocations whose Service no longer exists. All allocations of the pass go through the
/// store in one transaction. Returns how many Services were seen.
async fn full_pass(ctx: &Ctx) -> usize {
    let all = ctx.services.state();
    let (with_status, without): (Vec<_>, Vec<_>) = all.iter().partition(|s| !decide::status_addresses(s).is_empty());
    let mut batch = Vec::new();
    for svc in with_status.into_iter().chain(without) {
        match decide(svc, &ctx.namespace_labels(svc), &ctx.policy) {
            Decision::Allocate { request, status_addresses, warnings } => {
                batch.push((svc, request, status_addresses, warnings))
            }
            _ => {
                if let Err(e) = ctx.reconcile(svc).await {
                    warn!(service = ?key_of(svc), error = %e, "reconcile failed during the initial pass");
                }
            }
        }
    }
    let requests: Vec<_> = batch.iter().map(|(_, r, _, _)| r.clone()).collect();
    let started = Instant::now();
    match ctx.store.allocate_many(&requests, Timestamp::now(), ctx.quarantine).await {
        Ok(results) => {
            ctx.metrics.allocation_seconds.observe(started.elapsed().as_secs_f64());
            for ((svc, _, status, warnings), res) in batch.iter().zip(results) {
                ctx.metrics.reconciles.inc();
                if let Err(e) = ctx.apply_outcome(svc, status, warnings, res).await {
                    warn!(service = ?key_of(svc), error = %e, "could not write the outcome during the initial pass");
                }
            }
        }
        Err(e) => {
            warn!(error = %e, "the batched initial pass failed; reconciling services one by one");
            for (svc, _, _, _) in &batch {
                if let Err(e) = ctx.reconcile(svc).await {
                    warn!(service = ?key_of(svc), error = %e, "reconcile failed during the initial pass");
                }
            }
        }
    }
    let existing: HashSet<ServiceKey> = all.iter().filter_map(|s| key_of(s)).collect();
    if let Ok(ipam) = ctx.store.snapshot().await {
        let gone: Vec<ServiceKey> =
            ipam.allocations().into_iter().map(|a| a.service.clone()).filter(|k| !existing.contains(k)).collect();
        for key in gone {
            if let Err(e) = ctx.release_deleted(&key, None).await {
                warn!(service = %key, error = %e, "could not release the allocation of a deleted service");
            }
        }
    }
    ctx.refresh_pool_metrics().await;
    all.len()
}

async fn apply_pools(store: &Store, path: &std::path::Path) -> anyhow::Result<()> {
    let desired = crate::config::read_pools_file(&path.display().to_string())?;
    let report = store.apply(desired, true, false, Timestamp::now()).await?;
    if report.changed {
        info!(file = %path.display(), "pools applied");
    }
    Ok(())
}

/// Re-applies the pools file when it changes, then re-queues every Service.
async fn watch_pools_file(
    path: PathBuf,
    store_url: String,
    tx: mpsc::UnboundedSender<Work>,
    services: Reflector<Service>,
) {
    let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = mtime(&path);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let now = mtime(&path);
        if now == last {
            continue;
        }
        last = now;
        let res = async {
            let store = Store::open(&store_url).await?.with_actor("controller:pools-file");
            apply_pools(&store, &path).await
        }
        .await;
        match res {
            Ok(()) => {
                for s in services.state() {
                    if let Some(key) = key_of(&s) {
                        let _ = tx.send(Work { key, deleted_uid: None });
                    }
                }
            }
            Err(e) => {
                warn!(file = %path.display(), error = %format!("{e:#}"), "pools file not applied; keeping the current pools")
            }
        }
    }
}

async fn serve(addr: SocketAddr, metrics: Metrics, phase: watch::Receiver<Phase>) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    let router = crate::server::metrics_router(move || metrics.encode()).route(
        "/readyz",
        axum::routing::get(move || {
            let p = *phase.borrow();
            async move {
                match p {
                    Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
                    Phase::Standby => (StatusCode::OK, "standby\n"),
                    Phase::Leading => (StatusCode::OK, "leading\n"),
                }
            }
        }),
    );
    crate::server::spawn(addr, router).await.map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    debug!(%addr, "serving metrics");
    Ok(())
}
