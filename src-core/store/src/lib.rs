//! vipvisor-store: persistence of pools, reservations, allocations, quarantine and the
//! audit log.
//!
//! [`Store`] is written once over a [`Backend`] (SQLite today, [`sqlite`]). Every write is
//! one short transaction: it takes the database's write lock first, bumps the `generation`
//! counter, reloads the in-memory [`Ipam`] only if another connection or process wrote
//! since this process last did, lets [`Ipam`] (or [`vipvisor_ipam::plan`]) decide, writes
//! the decision with its typed [`Audit`] events, and commits. The schema's UNIQUE and
//! foreign-key constraints refuse a double allocation even if the decision were wrong.
//!
//! Owns: transactions, the cache and its generation, rows. Must not: hold business rules
//! (they are in ipam) or speak for a front end (no CLI or HTTP wording in errors).

pub mod audit;
pub mod backend;
pub mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Mutex, MutexGuard};
use vipvisor_ipam::{self as ipam, Action, Change, ConfigError, Ipam, IpamError, Outcome, PlanError, Released};
use vipvisor_model::config::Config;
use vipvisor_model::{AddressBlock, AllocRequest, Allocation, InvalidValue, Pool, PoolName, Reservation, ServiceKey};
use vipvisor_model::{Quarantined, Timestamp, Uid};

pub use audit::Audit;
pub use backend::{Backend, GrantRow, OwnerClaim, OwnerSpan, Rows, Sighting, SpanQuery, TokenRow, Write, WriteTx};
pub use sqlite::MIGRATOR;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    #[error("pool {0:?} already exists; expected a new name")]
    PoolExists(PoolName),
    #[error("unknown pool {0:?}; expected the name of an existing pool")]
    UnknownPool(PoolName),
    #[error("reservation {0} already exists")]
    ReservationExists(AddressBlock),
    #[error("unknown reservation {0}; expected a block exactly as it was reserved")]
    UnknownReservation(AddressBlock),
    #[error("{what} would strand {} allocation(s) ({}); refused, nothing was changed", .stranded.len(), stranded_text(.stranded))]
    InUse { what: String, stranded: Vec<Allocation> },
    /// The URL is shown with any password replaced by `***`.
    #[error("unsupported store URL {0}; expected sqlite://PATH (postgres:// comes later)")]
    BadUrl(String),
    #[error("cannot create the store directory {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    /// The store file could not be opened: the path and why (never its contents).
    #[error("cannot open the store {path}: {reason}")]
    Open { path: String, reason: String },
    /// The file is not a vipvisor store: another program's SQLite database, or an empty file.
    #[error("{path} is not a vipvisor store: {reason}; expected a store created by vipvisor (or a path that does not exist yet)")]
    Foreign { path: String, reason: String },
    #[error("store row is corrupt: {0}")]
    Corrupt(String),
    /// The database did not answer in time (locked by another writer, or gone).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Db(String),
    #[error("migration failed: {0}")]
    Migrate(String),
}

fn stranded_text(v: &[Allocation]) -> String {
    let mut parts: Vec<String> = v
        .iter()
        .take(5)
        .map(|a| {
            let addrs: Vec<String> = a.addresses.iter().map(ToString::to_string).collect();
            format!("{} holds {}", a.service, addrs.join(","))
        })
        .collect();
    if v.len() > 5 {
        parts.push(format!("and {} more", v.len() - 5));
    }
    parts.join("; ")
}

/// A URL fit for messages and logs: the password of `scheme://user:password@host` (and
/// any `password=` query parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..].find('/').map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") || k.eq_ignore_ascii_case("sslpassword") => {
                    format!("{k}=***")
                }
                _ => kv.to_owned(),
            })
            .collect();
        out = format!("{base}{}", redacted.join("&"));
    }
    out
}

/// How [`Store::put_pool`] writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct PutPool {
    /// Replace a pool of the same name (else that name is refused).
    pub replace: bool,
    /// Check and report only.
    pub dry_run: bool,
}

/// Whose ownership stretches a [`Store::set_owners`] call speaks for.
#[derive(Debug, Clone, Copy)]
pub enum OwnerScope<'a> {
    /// Every stretch of the source (the controller sees every node's report).
    All,
    /// Only this node's (a static group member knows its own share).
    Node(&'a str),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An audit event as read back.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Event {
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub id: i64,
    pub at: String,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub at_ms: i64,
    pub actor: String,
    pub kind: String,
    pub subject: String,
    pub detail: serde_json::Value,
}

/// What a configuration change did.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ConfigReport {
    pub changed: bool,
    pub pools: Vec<ItemChange>,
    pub reservations: Vec<ItemChange>,
    /// Allocations kept in another pool (a pool renamed or split).
    pub rehomed: Vec<Allocation>,
    /// Allocations released by `force`.
    pub released: Vec<Allocation>,
}

#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ItemChange {
    pub name: String,
    pub action: &'static str,
}

struct Cached {
    generation: i64,
    ipam: Ipam,
}

/// The IPAM store. Cheap to share behind an `Arc`; writes from one process are serialized
/// by an in-process lock, and between processes by the database's write lock.
pub struct Store {
    backend: Arc<dyn Backend>,
    actor: String,
    cache: Arc<Mutex<Option<Cached>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("actor", &self.actor).field("backend", &self.backend).finish_non_exhaustive()
    }
}

fn index_of(rows: Rows) -> Ipam {
    let mut ipam = Ipam::new(rows.pools, rows.reservations);
    for a in rows.allocations {
        ipam.restore(a);
    }
    for q in rows.quarantine {
        ipam.restore_quarantine(q);
    }
    ipam
}

impl Store {
    /// Opens (creating it on first use) and migrates the store at `url` (`sqlite://PATH`).
    pub async fn open(url: &str) -> Result<Store> {
        if url.starts_with("sqlite:") {
            return Ok(Store::new(Box::new(sqlite::SqliteBackend::open(url).await?)));
        }
        Err(StoreError::BadUrl(redact_url(url)))
    }

    /// Opens an existing store at `url` for reading only (so reading commands work on a
    /// read-only file); a store that does not exist yet is created as [`Store::open`] does.
    pub async fn open_read_only(url: &str) -> Result<Store> {
        if url.starts_with("sqlite:") {
            return Ok(Store::new(Box::new(sqlite::SqliteBackend::open_read_only(url).await?)));
        }
        Err(StoreError::BadUrl(redact_url(url)))
    }

    /// A store over `backend`.
    pub fn new(backend: Box<dyn Backend>) -> Store {
        Store { backend: Arc::from(backend), actor: "vipvisor".into(), cache: Arc::new(Mutex::new(None)) }
    }

    /// A store over an SQLite pool that is already migrated (tests use `#[sqlx::test]`).
    pub fn from_sqlite(pool: sqlx::SqlitePool) -> Store {
        Store::new(Box::new(sqlite::SqliteBackend::from_pool(pool)))
    }

    /// Who the audit log names for changes made through this store.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    /// The same store (database, cache) acting as `actor`: a server records each
    /// request's caller.
    pub fn as_actor(&self, actor: impl Into<String>) -> Store {
        Store { backend: self.backend.clone(), actor: actor.into(), cache: self.cache.clone() }
    }

    /// The audit events after id `after`, oldest first, at most `limit` (a change feed).
    pub async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>> {
        self.backend.events_after(after, limit).await
    }

    /// Every API token (names and roles; the hashes stay in the store).
    pub async fn tokens(&self) -> Result<Vec<TokenRow>> {
        self.backend.tokens().await
    }

    /// The token whose secret hashes to `hash`, if any.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        self.backend.token_by_hash(hash).await
    }

    /// Records a new token (its hash only), with an audit event.
    pub async fn add_token(&self, t: &TokenRow) -> Result<()> {
        let mut tx = self.backend.begin().await?;
        tx.write(Write::InsertToken(t), t.created).await?;
        self.audit(&mut tx, t.created, Audit::TokenCreated { name: t.name.clone(), role: t.role.clone() }).await?;
        tx.commit().await
    }

    /// Revokes the token `name`; false when there is none.
    pub async fn revoke_token(&self, name: &str, now: Timestamp) -> Result<bool> {
        if !self.tokens().await?.iter().any(|t| t.name == name) {
            return Ok(false);
        }
        let mut tx = self.backend.begin().await?;
        tx.write(Write::DeleteToken(name), now).await?;
        self.audit(&mut tx, now, Audit::TokenRevoked { name: name.to_owned() }).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// A consistent read of the whole state, fresh from the database.
    pub async fn snapshot(&self) -> Result<Ipam> {
        Ok(index_of(self.backend.rows().await?))
    }

    /// Runs `f` on the current index: the cached one when nobody wrote since (one cheap
    /// read of the generation), else a fresh load that becomes the cache.
    pub async fn read<T>(&self, f: impl FnOnce(&Ipam) -> T) -> Result<T> {
        let mut guard = self.cache.lock().await;
        let generation = self.backend.generation().await?;
        if guard.as_ref().map(|c| c.generation) != Some(generation) {
            let rows = self.backend.rows().await?;
            let generation = rows.generation;
            *guard = Some(Cached { generation, ipam: index_of(rows) });
        }
        let c = guard.as_ref().ok_or_else(|| StoreError::Corrupt("cache".into()))?;
        Ok(f(&c.ipam))
    }

    /// Starts a write: takes the write lock, bumps `generation` (undone by a rollback) and
    /// makes sure the cached index reflects the database as it was.
    async fn begin(&self) -> Result<(Box<dyn WriteTx>, MutexGuard<'_, Option<Cached>>, i64)> {
        let mut guard = self.cache.lock().await;
        let mut tx = self.backend.begin().await?;
        let generation = tx.bump_generation().await?;
        if guard.as_ref().map(|c| c.generation) != Some(generation) {
            let ipam = index_of(tx.rows().await?);
            *guard = Some(Cached { generation, ipam });
        }
        Ok((tx, guard, generation))
    }

    /// Ends a write. `Ok((v, true))` commits; `Ok((v, false))` (nothing written) and errors
    /// roll back. After an error the in-memory decision may be half applied, so the cache
    /// is dropped and rebuilt on next use.
    async fn finish<T>(
        &self,
        tx: Box<dyn WriteTx>,
        mut guard: MutexGuard<'_, Option<Cached>>,
        generation: i64,
        res: Result<(T, bool)>,
    ) -> Result<T> {
        match res {
            Ok((v, true)) => match tx.commit().await {
                Ok(()) => {
                    if let Some(c) = guard.as_mut() {
                        c.generation = generation + 1;
                    }
                    Ok(v)
                }
                Err(e) => {
                    *guard = None;
                    Err(e)
                }
            },
            Ok((v, false)) => {
                tx.rollback().await?;
                Ok(v)
            }
            Err(e) => {
                *guard = None;
                drop(tx);
                Err(e)
            }
        }
    }

    async fn audit(&self, tx: &mut Box<dyn WriteTx>, now: Timestamp, event: Audit) -> Result<()> {
        tx.write(Write::Audit { actor: &self.actor, event: &event }, now).await
    }

    /// Every hypervisor grant (issue #11).
    pub async fn grants(&self) -> Result<Vec<GrantRow>> {
        self.backend.grants().await
    }

    /// Ownership stretches (the current owners with `open_only`; the failover history).
    pub async fn ownership(&self, q: &SpanQuery) -> Result<Vec<OwnerSpan>> {
        self.backend.ownership(q).await
    }

    /// The MACs seen answering for `address` (or every address), newest first.
    pub async fn sightings(&self, address: Option<IpAddr>) -> Result<Vec<Sighting>> {
        self.backend.sightings(address).await
    }

    /// Makes the elected owners of `source` exactly `owners` (one per address): an owner
    /// that is new or moved opens a stretch (closing another node's as `taken`), one no
    /// longer listed is closed as `released`. Audited as `owner.changed` /
    /// `owner.released` (which is how UIs hear of it). Returns how many changed. The
    /// controller calls it with every report; a static group member with its own share.
    pub async fn set_owners(
        &self,
        source: &'static str,
        owners: &BTreeMap<IpAddr, OwnerClaim>,
        scope: OwnerScope<'_>,
        now: Timestamp,
    ) -> Result<usize> {
        let mut tx = self.backend.begin().await?;
        let open = tx.open_owners().await?;
        let mut changed = 0;
        // Stretches this writer is responsible for that are no longer wanted.
        for s in &open {
            let mine = match scope {
                OwnerScope::All => s.source == source,
                OwnerScope::Node(n) => s.node == n,
            };
            if !mine {
                continue;
            }
            match owners.get(&s.address) {
                Some(c) if c.node == s.node && c.interface == s.interface => {}
                Some(c) if c.node == s.node => {
                    // Same owner, another interface: a new stretch, no failover.
                    tx.write(Write::CloseOwner { address: s.address, node: &s.node, ended: "released" }, now).await?;
                }
                Some(_) => {}
                None => {
                    tx.write(Write::CloseOwner { address: s.address, node: &s.node, ended: "released" }, now).await?;
                    let event = Audit::OwnerReleased { address: s.address, node: s.node.clone() };
                    self.audit(&mut tx, now, event).await?;
                    changed += 1;
                }
            }
        }
        for (address, c) in owners {
            let here: Vec<&OwnerSpan> = open.iter().filter(|s| s.address == *address).collect();
            if here.iter().any(|s| s.node == c.node && s.interface == c.interface) {
                continue;
            }
            let previous = here.iter().find(|s| s.node != c.node).map(|s| s.node.clone());
            for s in here.iter().filter(|s| s.node != c.node) {
                tx.write(Write::CloseOwner { address: *address, node: &s.node, ended: "taken" }, now).await?;
            }
            tx.write(Write::OpenOwner(c), now).await?;
            let event = Audit::OwnerChanged {
                address: *address,
                node: c.node.clone(),
                interface: c.interface.clone(),
                previous,
            };
            self.audit(&mut tx, now, event).await?;
            changed += 1;
        }
        if changed == 0 {
            tx.rollback().await?;
            return Ok(0);
        }
        tx.commit().await?;
        Ok(changed)
    }

    /// Records that `observer` saw `mac` send as `address` `count` more times, between
    /// `first` and `last`.
    #[allow(clippy::too_many_arguments)]
    pub async fn add_sighting(
        &self,
        address: IpAddr,
        mac: &str,
        observer: &str,
        interface: &str,
        count: i64,
        (first, last): (Timestamp, Timestamp),
        now: Timestamp,
    ) -> Result<()> {
        let mut tx = self.backend.begin().await?;
        let w = Write::AddSighting { address, mac, observer, interface, count, first_ms: first.0, last_ms: last.0 };
        tx.write(w, now).await?;
        tx.commit().await
    }

    /// Records a grant's state after a provider call, with an audit event when the VIPs it
    /// grants changed (`granted`: VIPs newly granted).
    pub async fn put_grant(&self, g: &GrantRow, granted: &[IpAddr], now: Timestamp) -> Result<()> {
        let mut tx = self.backend.begin().await?;
        tx.write(Write::UpsertGrant(g), now).await?;
        if !granted.is_empty() {
            let event = Audit::HypervisorGranted {
                provider: g.provider.clone(),
                vm: g.vm.clone(),
                mac: g.mac.clone(),
                vips: granted.to_vec(),
            };
            self.audit(&mut tx, now, event).await?;
        }
        tx.commit().await
    }

    /// Forgets a grant whose additions were all taken back (`revoked`: those VIPs).
    pub async fn delete_grant(&self, g: &GrantRow, revoked: &[IpAddr], now: Timestamp) -> Result<()> {
        let mut tx = self.backend.begin().await?;
        tx.write(Write::DeleteGrant { provider: &g.provider, vm: &g.vm, mac: &g.mac }, now).await?;
        let event = Audit::HypervisorRevoked {
            provider: g.provider.clone(),
            vm: g.vm.clone(),
            mac: g.mac.clone(),
            vips: revoked.to_vec(),
        };
        self.audit(&mut tx, now, event).await?;
        tx.commit().await
    }

    /// Makes the grants exactly `rows` (what the previous leader recorded, handed over in
    /// the Lease), in one transaction: grants this store has and `rows` lacks are
    /// forgotten, not revoked (the hypervisor no longer has them).
    pub async fn replace_grants(&self, rows: &[GrantRow], now: Timestamp) -> Result<()> {
        let current = self.grants().await?;
        let mut tx = self.backend.begin().await?;
        for g in current
            .iter()
            .filter(|g| !rows.iter().any(|r| (&r.provider, &r.vm, &r.mac) == (&g.provider, &g.vm, &g.mac)))
        {
            tx.write(Write::DeleteGrant { provider: &g.provider, vm: &g.vm, mac: &g.mac }, now).await?;
        }
        for g in rows {
            tx.write(Write::UpsertGrant(g), now).await?;
        }
        tx.commit().await
    }

    /// Allocates addresses for a service (idempotent). `hold` is the quarantine applied to
    /// addresses the service gives up if the request makes it move.
    pub async fn allocate(&self, req: &AllocRequest, now: Timestamp, hold: Duration) -> Result<Outcome> {
        let mut out = self.allocate_many(std::slice::from_ref(req), now, hold).await?;
        Ok(out.pop().ok_or_else(|| StoreError::Corrupt("no outcome".into()))??)
    }

    /// Allocates for many services in one transaction (one commit): the controller adopts
    /// thousands of Services at start this way. Each request gets its own outcome; a refused
    /// request does not affect the others. Database errors fail the whole batch.
    pub async fn allocate_many(
        &self,
        reqs: &[AllocRequest],
        now: Timestamp,
        hold: Duration,
    ) -> Result<Vec<Result<Outcome, IpamError>>> {
        let (mut tx, mut guard, generation) = self.begin().await?;
        let res: Result<(Vec<Result<Outcome, IpamError>>, bool)> = async {
            let ipam = &mut guard.as_mut().ok_or_else(|| StoreError::Corrupt("cache".into()))?.ipam;
            let expired = ipam.expire(now);
            let mut wrote = !expired.is_empty();
            tx.write(Write::DeleteQuarantine(&expired), now).await?;
            let mut results = Vec::with_capacity(reqs.len());
            for req in reqs {
                let outcome = match ipam.allocate(req, now, hold) {
                    Ok(o) => o,
                    Err(e) => {
                        results.push(Err(e));
                        continue;
                    }
                };
                if outcome.change != Change::Unchanged {
                    wrote = true;
                    if let Some(prev) = &outcome.previous {
                        tx.write(Write::DeleteAllocation(prev), now).await?;
                    }
                    tx.write(Write::InsertAllocation(&outcome.allocation), now).await?;
                    tx.write(Write::DeleteQuarantine(&outcome.reclaimed), now).await?;
                    tx.write(Write::InsertQuarantine(&outcome.quarantined), now).await?;
                    let allocation = outcome.allocation.clone();
                    let event = match (&outcome.change, &outcome.previous) {
                        (Change::Created, _) => Audit::AddressAllocated { allocation },
                        (_, prev) => Audit::AddressUpdated {
                            allocation,
                            previous: prev.as_ref().map(|p| p.addresses.clone()).unwrap_or_default(),
                        },
                    };
                    self.audit(&mut tx, now, event).await?;
                }
                results.push(Ok(outcome));
            }
            Ok((results, wrote))
        }
        .await;
        self.finish(tx, guard, generation, res).await
    }

    /// Releases a service's addresses into quarantine for `hold`. `Ok(None)`: it held none.
    pub async fn release(
        &self,
        service: &ServiceKey,
        uid: Option<&Uid>,
        now: Timestamp,
        hold: Duration,
    ) -> Result<Option<Released>> {
        let (mut tx, mut guard, generation) = self.begin().await?;
        let res: Result<(Option<Released>, bool)> = async {
            let ipam = &mut guard.as_mut().ok_or_else(|| StoreError::Corrupt("cache".into()))?.ipam;
            let expired = ipam.expire(now);
            let released = ipam.release(service, uid, now, hold)?;
            tx.write(Write::DeleteQuarantine(&expired), now).await?;
            if let Some(r) = &released {
                tx.write(Write::DeleteAllocation(&r.allocation), now).await?;
                tx.write(Write::InsertQuarantine(&r.quarantined), now).await?;
                let event = Audit::AddressReleased {
                    allocation: r.allocation.clone(),
                    quarantined_until: r.quarantined.first().map(|q| q.until),
                };
                self.audit(&mut tx, now, event).await?;
            }
            let wrote = released.is_some() || !expired.is_empty();
            Ok((released, wrote))
        }
        .await;
        self.finish(tx, guard, generation, res).await
    }

    /// Adds a pool; refuses an existing name or any overlap.
    pub async fn add_pool(&self, pool: Pool, now: Timestamp) -> Result<ConfigReport> {
        self.put_pool(pool, PutPool { replace: false, dry_run: false }, now).await
    }

    /// Creates a pool, or with `replace` creates or replaces it (an edit: allocations it
    /// no longer covers refuse the change); with `dry_run` only checks and reports what
    /// would change, writing nothing.
    pub async fn put_pool(&self, pool: Pool, how: PutPool, now: Timestamp) -> Result<ConfigReport> {
        self.reconfigure_with(now, false, how.dry_run, |cur| {
            match cur.pools.iter_mut().find(|p| p.name == pool.name) {
                Some(_) if !how.replace => return Err(StoreError::PoolExists(pool.name.clone())),
                Some(p) => *p = pool,
                None => cur.pools.push(pool),
            }
            Ok(if how.replace { "changing a pool" } else { "adding a pool" }.to_string())
        })
        .await
    }

    /// Removes a pool; with `force`, releases the allocations it holds (recorded).
    pub async fn remove_pool(&self, name: &PoolName, force: bool, now: Timestamp) -> Result<ConfigReport> {
        self.reconfigure(now, force, |cur| {
            let before = cur.pools.len();
            cur.pools.retain(|p| &p.name != name);
            if cur.pools.len() == before {
                return Err(StoreError::UnknownPool(name.clone()));
            }
            Ok(format!("removing pool {name:?}"))
        })
        .await
    }

    pub async fn add_reservation(&self, r: Reservation, force: bool, now: Timestamp) -> Result<ConfigReport> {
        self.reconfigure(now, force, |cur| {
            if cur.reservations.iter().any(|x| x.block == r.block) {
                return Err(StoreError::ReservationExists(r.block));
            }
            let what = format!("reserving {}", r.block);
            cur.reservations.push(r);
            Ok(what)
        })
        .await
    }

    pub async fn remove_reservation(&self, block: &AddressBlock, now: Timestamp) -> Result<ConfigReport> {
        self.reconfigure(now, false, |cur| {
            let before = cur.reservations.len();
            cur.reservations.retain(|r| &r.block != block);
            if cur.reservations.len() == before {
                return Err(StoreError::UnknownReservation(*block));
            }
            Ok(format!("removing reservation {block}"))
        })
        .await
    }

    /// Makes the store hold `desired`: creates and updates pools and reservations, and with
    /// `prune` removes those not in it. Idempotent; nothing is written on any error.
    pub async fn apply(&self, desired: Config, prune: bool, force: bool, now: Timestamp) -> Result<ConfigReport> {
        self.reconfigure(now, force, |cur| {
            let mut pools = desired.pools.clone();
            let mut res = desired.reservations.clone();
            if !prune {
                let named: std::collections::HashSet<&PoolName> = desired.pools.iter().map(|d| &d.name).collect();
                let blocks: std::collections::HashSet<&AddressBlock> =
                    desired.reservations.iter().map(|d| &d.block).collect();
                pools.extend(cur.pools.iter().filter(|p| !named.contains(&p.name)).cloned());
                res.extend(cur.reservations.iter().filter(|r| !blocks.contains(&r.block)).cloned());
            }
            cur.pools = pools;
            cur.reservations = res;
            Ok("applying this configuration".into())
        })
        .await
    }

    /// Forgets, without quarantine, every allocation for which `keep` is false, and every
    /// quarantine entry; pools and reservations stay. A controller that becomes leader
    /// keeps what agrees with the cluster and rebuilds the rest from it. Returns how many
    /// allocations and quarantine entries went.
    pub async fn forget(&self, keep: impl Fn(&Allocation) -> bool, now: Timestamp) -> Result<usize> {
        let (mut tx, mut guard, generation) = self.begin().await?;
        let res: Result<(usize, bool)> = async {
            let ipam = &mut guard.as_mut().ok_or_else(|| StoreError::Corrupt("cache".into()))?.ipam;
            let gone: Vec<Allocation> = ipam.allocations().into_iter().filter(|a| !keep(a)).cloned().collect();
            let quarantined: Vec<IpAddr> = ipam.quarantined().iter().map(|q| q.address).collect();
            if gone.is_empty() && quarantined.is_empty() {
                return Ok((0, false));
            }
            for a in &gone {
                tx.write(Write::DeleteAllocation(a), now).await?;
                ipam.forget(&a.service);
            }
            tx.write(Write::DeleteQuarantine(&quarantined), now).await?;
            for ip in &quarantined {
                ipam.unquarantine(ip);
            }
            Ok((gone.len() + quarantined.len(), true))
        }
        .await;
        self.finish(tx, guard, generation, res).await
    }

    /// Puts quarantine entries recorded elsewhere back (see
    /// [`Ipam::quarantine_if_free`]); returns the entries restored.
    pub async fn restore_quarantine(&self, entries: Vec<Quarantined>, now: Timestamp) -> Result<Vec<Quarantined>> {
        let (mut tx, mut guard, generation) = self.begin().await?;
        let res: Result<(Vec<Quarantined>, bool)> = async {
            let ipam = &mut guard.as_mut().ok_or_else(|| StoreError::Corrupt("cache".into()))?.ipam;
            let restored: Vec<Quarantined> =
                entries.into_iter().filter(|q| ipam.quarantine_if_free(q.clone(), now)).collect();
            tx.write(Write::InsertQuarantine(&restored), now).await?;
            let wrote = !restored.is_empty();
            Ok((restored, wrote))
        }
        .await;
        self.finish(tx, guard, generation, res).await
    }

    /// One configuration change: `edit` turns the current configuration into the next
    /// (and names the change for errors); [`vipvisor_ipam::plan`] decides what happens to
    /// each allocation (kept, re-homed, or stranded: refused, or released with `force`),
    /// and the difference is written with its audit events.
    async fn reconfigure(
        &self,
        now: Timestamp,
        force: bool,
        edit: impl FnOnce(&mut Config) -> Result<String>,
    ) -> Result<ConfigReport> {
        self.reconfigure_with(now, force, false, edit).await
    }

    async fn reconfigure_with(
        &self,
        now: Timestamp,
        force: bool,
        dry_run: bool,
        edit: impl FnOnce(&mut Config) -> Result<String>,
    ) -> Result<ConfigReport> {
        let (mut tx, mut guard, generation) = self.begin().await?;
        let res: Result<(ConfigReport, Option<Ipam>)> = async {
            let ipam = &guard.as_ref().ok_or_else(|| StoreError::Corrupt("cache".into()))?.ipam;
            let mut cur =
                Config { pools: ipam.pools().cloned().collect(), reservations: ipam.reservations().cloned().collect() };
            let what = edit(&mut cur)?;
            let plan = match ipam::plan(ipam, cur, force) {
                Ok(p) => p,
                Err(PlanError::Config(e)) => return Err(e.into()),
                Err(PlanError::WouldStrand(stranded)) => return Err(StoreError::InUse { what, stranded }),
            };
            let mut report = ConfigReport {
                changed: plan.changes(),
                pools: plan.pools.iter().map(|(n, a)| change(n, *a)).collect(),
                reservations: plan.reservations.iter().map(|(b, a)| change(b, *a)).collect(),
                ..ConfigReport::default()
            };
            if !report.changed || dry_run {
                report.released = plan.stranded.clone();
                report.rehomed = plan.rehomed.iter().map(|r| r.allocation.clone()).collect();
                return Ok((report, None));
            }
            for a in &plan.stranded {
                tx.write(Write::DeleteAllocation(a), now).await?;
                let event = Audit::AddressForceReleased { allocation: a.clone(), reason: what.clone() };
                self.audit(&mut tx, now, event).await?;
            }
            // Blocks of changed and removed pools go first, so blocks may move between
            // pools in one change; pool rows go last, after the allocations moved off them.
            for (name, action) in &plan.pools {
                if matches!(action, Action::Updated | Action::Removed) {
                    tx.write(Write::DeletePoolBlocks(name), now).await?;
                }
            }
            let actions: HashMap<&PoolName, Action> = plan.pools.iter().map(|(n, a)| (n, *a)).collect();
            for p in &plan.config.pools {
                let action = actions.get(&p.name).copied().unwrap_or(Action::Unchanged);
                match action {
                    Action::Created | Action::Updated => {
                        tx.write(Write::UpsertPool(p), now).await?;
                        let event = if action == Action::Created {
                            Audit::PoolCreated(p.clone())
                        } else {
                            Audit::PoolUpdated(p.clone())
                        };
                        self.audit(&mut tx, now, event).await?;
                    }
                    _ => {}
                }
            }
            for r in &plan.rehomed {
                tx.write(Write::MoveAllocation(&r.allocation), now).await?;
                let event = Audit::AddressRehomed { allocation: r.allocation.clone(), from: r.from.clone() };
                self.audit(&mut tx, now, event).await?;
            }
            for (name, action) in &plan.pools {
                if *action == Action::Removed {
                    tx.write(Write::DeletePool(name), now).await?;
                    if let Some(old) = ipam.pool(name) {
                        self.audit(&mut tx, now, Audit::PoolRemoved(old.clone())).await?;
                    }
                }
            }
            let wanted: HashMap<&AddressBlock, &Reservation> =
                plan.config.reservations.iter().map(|r| (&r.block, r)).collect();
            for (block, action) in &plan.reservations {
                let note = |r: Option<&Reservation>| r.map(|r| r.note.clone()).unwrap_or_default();
                let new = wanted.get(block).copied();
                match action {
                    Action::Created | Action::Updated => {
                        if let Some(r) = new {
                            tx.write(Write::UpsertReservation(r), now).await?;
                        }
                        let (block, note) = (*block, note(new));
                        let event = if *action == Action::Created {
                            Audit::ReservationAdded { block, note }
                        } else {
                            Audit::ReservationUpdated { block, note }
                        };
                        self.audit(&mut tx, now, event).await?;
                    }
                    Action::Removed => {
                        tx.write(Write::DeleteReservation(block), now).await?;
                        let old = ipam.reservation_of(&block.range().first()).filter(|r| &r.block == block);
                        self.audit(&mut tx, now, Audit::ReservationRemoved { block: *block, note: note(old) }).await?;
                    }
                    Action::Unchanged => {}
                }
            }
            tx.write(Write::DeleteQuarantine(&plan.dropped_quarantine), now).await?;
            report.rehomed = plan.rehomed.iter().map(|r| r.allocation.clone()).collect();
            report.released = plan.stranded.clone();
            Ok((report, Some(plan.next)))
        }
        .await;
        // On commit the plan's index is the cache (finish bumps its generation); on any
        // failure finish drops the cache.
        let res = res.map(|(report, next)| match next {
            Some(next) => {
                if let Some(c) = guard.as_mut() {
                    c.ipam = next;
                }
                (report, true)
            }
            None => (report, false),
        });
        self.finish(tx, guard, generation, res).await
    }

    /// The audit log, oldest first, optionally from `since` on, at most `limit` newest.
    pub async fn events(&self, since: Option<Timestamp>, limit: Option<u32>) -> Result<Vec<Event>> {
        self.backend.events(since, limit).await
    }

    /// Runs the database's own consistency checks; empty when all is well.
    pub async fn integrity_check(&self) -> Result<Vec<String>> {
        self.backend.integrity_check().await
    }

    pub async fn close(&self) {
        self.backend.close().await;
    }
}

fn change(name: &impl std::fmt::Display, a: Action) -> ItemChange {
    ItemChange { name: name.to_string(), action: a.as_str() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_messages_carry_no_password() {
        let cases = [
            ("postgres://vip:s3cret@db.example/ipam", "postgres://vip:***@db.example/ipam"),
            ("postgres://db.example/ipam?user=vip&password=s3cret", "postgres://db.example/ipam?user=vip&password=***"),
            ("postgres://vip@db/x", "postgres://vip@db/x"),
            ("postgres://db/x", "postgres://db/x"),
            ("sqlite:///var/lib/vipvisor/vipvisor.db", "sqlite:///var/lib/vipvisor/vipvisor.db"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url} must be shown without its password");
        }
    }

    #[tokio::test]
    async fn a_bad_url_error_does_not_echo_the_password() {
        let e = Store::open("postgres://vip:s3cret@db.example/ipam").await.unwrap_err().to_string();
        assert!(!e.contains("s3cret"), "the password leaked into {e:?}");
        assert!(e.contains("postgres://vip:***@db.example/ipam"), "{e}");
    }
}
