//! SQLite through sqlx: pools, reservations, allocations, quarantine and the audit log.
//!
//! Every write is one short `BEGIN IMMEDIATE` transaction: it takes the write lock first,
//! checks the `generation` counter, reloads the in-memory [`Ipam`] only if another
//! connection or process wrote since this process last did, lets [`Ipam`] decide, writes
//! the decision, bumps `generation` and commits. The schema's UNIQUE and foreign-key
//! constraints refuse a double allocation even if the decision were wrong.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, Transaction};
use tokio::sync::{Mutex, MutexGuard};

use crate::ipam::{self, Change, ConfigError, Ipam, IpamError, Outcome, Released};
use crate::model::{
    AddressBlock, AllocRequest, Allocation, InvalidValue, Labels, Pool, PoolName, PoolOptions, Port, Quarantined,
    Reservation, ServiceKey, SharingKey, Timestamp, Uid,
};

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
    #[error("pool {0:?} already exists; expected a new name (use `vipvisor apply` to change a pool)")]
    PoolExists(PoolName),
    #[error("unknown pool {0:?}; expected the name of an existing pool (see `vipvisor pool list`)")]
    UnknownPool(PoolName),
    #[error("reservation {0} already exists")]
    ReservationExists(AddressBlock),
    #[error("unknown reservation {0}; expected a block exactly as `vipvisor reserve list` shows it")]
    UnknownReservation(AddressBlock),
    #[error("{what} would strand {} allocation(s) ({}); refused, nothing was changed. Pass --force to release them", .stranded.len(), stranded_text(.stranded))]
    InUse { what: String, stranded: Vec<Allocation> },
    #[error("unsupported store URL {0:?}; expected sqlite://PATH (postgres:// comes later)")]
    BadUrl(String),
    #[error("cannot create the store directory {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error("store row is corrupt: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
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

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An audit event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub id: i64,
    pub at: String,
    pub at_ms: i64,
    pub actor: String,
    pub kind: String,
    pub subject: String,
    pub detail: serde_json::Value,
}

/// What a configuration change did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConfigReport {
    pub changed: bool,
    pub pools: Vec<ItemChange>,
    pub reservations: Vec<ItemChange>,
    /// Allocations released by `--force`.
    pub released: Vec<Allocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemChange {
    pub name: String,
    pub action: &'static str,
}

/// The desired configuration, as in a pools file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub pools: Vec<Pool>,
    pub reservations: Vec<Reservation>,
}

struct Cached {
    generation: i64,
    ipam: Ipam,
}

/// The IPAM store. Cheap to share behind an `Arc`; writes from one process are serialized
/// by an in-process lock, and between processes by SQLite's write lock.
pub struct Store {
    pool: SqlitePool,
    actor: String,
    cache: Mutex<Option<Cached>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("actor", &self.actor).finish_non_exhaustive()
    }
}

/// Parses a store URL into connect options, creating the parent directory of the file.
pub fn connect_options(url: &str) -> Result<SqliteConnectOptions> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .ok_or_else(|| StoreError::BadUrl(url.to_owned()))?;
    let file = path.split('?').next().unwrap_or_default();
    if file.is_empty() || file == ":memory:" {
        return Err(StoreError::BadUrl(url.to_owned()));
    }
    if let Some(dir) = Path::new(file).parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::CreateDir { path: dir.display().to_string(), source })?;
    }
    let opts =
        SqliteConnectOptions::from_str(&format!("sqlite://{path}")).map_err(|_| StoreError::BadUrl(url.to_owned()))?;
    Ok(opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(30)))
}

impl Store {
    /// Opens (creating it on first use) and migrates the store at `url`.
    pub async fn open(url: &str) -> Result<Store> {
        let opts = connect_options(url)?;
        let pool = SqlitePoolOptions::new().max_connections(2).connect_with(opts).await?;
        let store = Store::from_pool(pool);
        store.migrate().await?;
        Ok(store)
    }

    /// Wraps an existing pool (already migrated, or call [`Store::migrate`]).
    pub fn from_pool(pool: SqlitePool) -> Store {
        Store { pool, actor: "vipvisor".into(), cache: Mutex::new(None) }
    }

    /// Who the audit log names for changes made through this store.
    pub fn with_actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = actor.into();
        self
    }

    pub fn sqlite(&self) -> &SqlitePool {
        &self.pool
    }

    /// Applies pending migrations. A second process migrating at the same moment may lose
    /// the race; then the migrations are simply found applied on the retry.
    pub async fn migrate(&self) -> Result<()> {
        match MIGRATOR.run(&self.pool).await {
            Ok(()) => Ok(()),
            Err(first) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                MIGRATOR.run(&self.pool).await.map_err(|_| first.into())
            }
        }
    }

    /// A consistent read of the whole state.
    pub async fn snapshot(&self) -> Result<Ipam> {
        let mut tx = self.pool.begin().await?;
        let ipam = load(&mut tx).await?;
        tx.rollback().await?;
        Ok(ipam)
    }

    /// Starts a write: takes SQLite's write lock, bumps `generation` (undone by a
    /// rollback) and makes sure the cached index reflects the database as it was.
    async fn begin(&self) -> Result<(Transaction<'static, Sqlite>, MutexGuard<'_, Option<Cached>>, i64)> {
        let mut guard = self.cache.lock().await;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let bumped: i64 =
            sqlx::query_scalar("UPDATE meta SET value = value + 1 WHERE key = 'generation' RETURNING value")
                .fetch_one(&mut *tx)
                .await?;
        let generation = bumped - 1;
        if guard.as_ref().map(|c| c.generation) != Some(generation) {
            let ipam = load(&mut tx).await?;
            *guard = Some(Cached { generation, ipam });
        }
        Ok((tx, guard, generation))
    }

    /// Ends a write. `Ok((v, true))` commits; `Ok((v, false))` (nothing written) and errors
    /// roll back. After an error the in-memory decision may be half applied, so the cache
    /// is dropped and rebuilt on next use.
    async fn finish<T>(
        &self,
        tx: Transaction<'static, Sqlite>,
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
                    Err(e.into())
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
            delete_quarantine(&mut tx, &expired).await?;
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
                        delete_allocation(&mut tx, prev).await?;
                    }
                    insert_allocation(&mut tx, &outcome.allocation, now).await?;
                    delete_quarantine(&mut tx, &outcome.reclaimed).await?;
                    insert_quarantine(&mut tx, &outcome.quarantined).await?;
                    let kind = match outcome.change {
                        Change::Created => "address.allocated",
                        _ => "address.updated",
                    };
                    let detail = serde_json::json!({
                        "addresses": outcome.allocation.addresses,
                        "pool": outcome.allocation.pool,
                        "previous": outcome.previous.as_ref().map(|p| &p.addresses),
                        "sharing_key": outcome.allocation.sharing_key,
                        "ports": outcome.allocation.ports,
                        "uid": outcome.allocation.uid,
                    });
                    self.audit(&mut tx, now, kind, &outcome.allocation.service.to_string(), detail).await?;
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
            delete_quarantine(&mut tx, &expired).await?;
            if let Some(r) = &released {
                delete_allocation(&mut tx, &r.allocation).await?;
                insert_quarantine(&mut tx, &r.quarantined).await?;
                let detail = serde_json::json!({
                    "addresses": r.allocation.addresses,
                    "pool": r.allocation.pool,
                    "quarantined_until": r.quarantined.first().map(|q| q.until.rfc3339()),
                });
                self.audit(&mut tx, now, "address.released", &service.to_string(), detail).await?;
            }
            let wrote = released.is_some() || !expired.is_empty();
            Ok((released, wrote))
        }
        .await;
        self.finish(tx, guard, generation, res).await
    }

    /// Adds a pool; refuses an existing name or any overlap.
    pub async fn add_pool(&self, pool: Pool, now: Timestamp) -> Result<ConfigReport> {
        self.reconfigure(now, false, |cur| {
            if cur.pools.iter().any(|p| p.name == pool.name) {
                return Err(StoreError::PoolExists(pool.name.clone()));
            }
            cur.pools.push(pool);
            Ok("adding a pool".to_string())
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
    pub async fn apply(&self, desired: Desired, prune: bool, force: bool, now: Timestamp) -> Result<ConfigReport> {
        self.reconfigure(now, force, |cur| {
            let mut pools = desired.pools.clone();
            let mut res = desired.reservations.clone();
            if !prune {
                pools.extend(cur.pools.iter().filter(|p| !desired.pools.iter().any(|d| d.name == p.name)).cloned());
                res.extend(
                    cur.reservations
                        .iter()
                        .filter(|r| !desired.reservations.iter().any(|d| d.block == r.block))
                        .cloned(),
                );
            }
            cur.pools = pools;
            cur.reservations = res;
            Ok("applying this configuration".into())
        })
        .await
    }

    /// One configuration change: `edit` turns the current configuration into the next
    /// (and names the change for errors); the whole next configuration is validated, the
    /// allocations it would strand are refused or (with `force`) released, and the
    /// difference is written with its audit events.
    async fn reconfigure(
        &self,
        now: Timestamp,
        force: bool,
        edit: impl FnOnce(&mut Desired) -> Result<String>,
    ) -> Result<ConfigReport> {
        let (mut tx, mut guard, generation) = self.begin().await?;
        let res: Result<ConfigReport> = async {
            let ipam = &guard.as_ref().ok_or_else(|| StoreError::Corrupt("cache".into()))?.ipam;
            let mut cur = Desired {
                pools: ipam.pools().cloned().collect(),
                reservations: ipam.reservations().cloned().collect(),
            };
            let old = cur.clone();
            let what = edit(&mut cur)?;
            ipam::check_config(&cur.pools, &cur.reservations)?;
            // The next configuration's index, built once: for stranded allocations and
            // for quarantine entries that no pool holds any more.
            let next = Ipam::new(cur.pools.clone(), cur.reservations.clone());
            let stranded: Vec<Allocation> = ipam::stranded(ipam, &next).into_iter().cloned().collect();
            if !stranded.is_empty() && !force {
                return Err(StoreError::InUse { what, stranded });
            }
            let mut report = ConfigReport::default();
            for a in &stranded {
                delete_allocation(&mut tx, a).await?;
                let detail = serde_json::json!({"addresses": a.addresses, "pool": a.pool, "reason": what});
                self.audit(&mut tx, now, "address.force_released", &a.service.to_string(), detail).await?;
            }
            report.released = stranded;
            // Blocks of updated and removed pools go first, so that blocks may move
            // between pools in one change.
            for o in &old.pools {
                match cur.pools.iter().find(|p| p.name == o.name) {
                    None => {
                        delete_pool(&mut tx, &o.name, false).await?;
                        self.audit(&mut tx, now, "pool.removed", o.name.as_str(), pool_detail(o)).await?;
                        report.pools.push(ItemChange { name: o.name.to_string(), action: "removed" });
                    }
                    Some(p) if p != o => delete_pool(&mut tx, &o.name, true).await?,
                    Some(_) => {}
                }
            }
            for p in &cur.pools {
                let (kind, action) = match old.pools.iter().find(|o| o.name == p.name) {
                    None => ("pool.created", "created"),
                    Some(o) if o != p => ("pool.updated", "updated"),
                    Some(_) => {
                        report.pools.push(ItemChange { name: p.name.to_string(), action: "unchanged" });
                        continue;
                    }
                };
                insert_pool(&mut tx, p, now).await?;
                self.audit(&mut tx, now, kind, p.name.as_str(), pool_detail(p)).await?;
                report.pools.push(ItemChange { name: p.name.to_string(), action });
            }
            for r in &cur.reservations {
                let name = r.block.to_string();
                match old.reservations.iter().find(|o| o.block == r.block) {
                    None => {
                        sqlx::query("INSERT INTO reservations (block, note, created_ms) VALUES (?1, ?2, ?3)")
                            .bind(&name)
                            .bind(&r.note)
                            .bind(now.0)
                            .execute(&mut *tx)
                            .await?;
                        self.audit(&mut tx, now, "reservation.added", &name, serde_json::json!({"note": r.note}))
                            .await?;
                        report.reservations.push(ItemChange { name, action: "created" });
                    }
                    Some(o) if o != r => {
                        sqlx::query("UPDATE reservations SET note = ?2 WHERE block = ?1")
                            .bind(&name)
                            .bind(&r.note)
                            .execute(&mut *tx)
                            .await?;
                        self.audit(&mut tx, now, "reservation.updated", &name, serde_json::json!({"note": r.note}))
                            .await?;
                        report.reservations.push(ItemChange { name, action: "updated" });
                    }
                    Some(_) => report.reservations.push(ItemChange { name, action: "unchanged" }),
                }
            }
            for o in &old.reservations {
                if !cur.reservations.iter().any(|r| r.block == o.block) {
                    let name = o.block.to_string();
                    sqlx::query("DELETE FROM reservations WHERE block = ?1").bind(&name).execute(&mut *tx).await?;
                    self.audit(&mut tx, now, "reservation.removed", &name, serde_json::json!({"note": o.note})).await?;
                    report.reservations.push(ItemChange { name, action: "removed" });
                }
            }
            // Quarantine entries of addresses that no pool holds any more mean nothing.
            let orphans: Vec<IpAddr> =
                ipam.quarantined().iter().filter(|q| next.pool_of(&q.address).is_none()).map(|q| q.address).collect();
            delete_quarantine(&mut tx, &orphans).await?;
            report.changed = !report.released.is_empty()
                || report.pools.iter().chain(&report.reservations).any(|c| c.action != "unchanged");
            Ok(report)
        }
        .await;
        let changed = matches!(&res, Ok(r) if r.changed);
        if changed {
            // The configuration changed: rebuild the index on next use.
            *guard = None;
        }
        self.finish(tx, guard, generation, res.map(|r| (r, changed))).await
    }

    async fn audit(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        now: Timestamp,
        kind: &str,
        subject: &str,
        detail: serde_json::Value,
    ) -> Result<()> {
        sqlx::query("INSERT INTO events (at_ms, actor, kind, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)")
            .bind(now.0)
            .bind(&self.actor)
            .bind(kind)
            .bind(subject)
            .bind(detail.to_string())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The audit log, oldest first, optionally from `since` on, at most `limit` newest.
    pub async fn events(&self, since: Option<Timestamp>, limit: Option<u32>) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT id, at_ms, actor, kind, subject, detail FROM events WHERE at_ms >= ?1 \
             ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )
        .bind(since.map_or(i64::MIN, |t| t.0))
        .bind(limit.map_or(-1, i64::from))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let at_ms: i64 = r.get("at_ms");
                let detail: String = r.get("detail");
                Ok(Event {
                    id: r.get("id"),
                    at: Timestamp(at_ms).rfc3339(),
                    at_ms,
                    actor: r.get("actor"),
                    kind: r.get("kind"),
                    subject: r.get("subject"),
                    detail: serde_json::from_str(&detail)
                        .map_err(|e| StoreError::Corrupt(format!("event detail: {e}")))?,
                })
            })
            .collect()
    }

    /// Runs SQLite's own consistency checks (`integrity_check` and `foreign_key_check`).
    pub async fn integrity_check(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check").fetch_all(&self.pool).await?;
        out.retain(|s| s != "ok");
        let fk = sqlx::query("PRAGMA foreign_key_check").fetch_all(&self.pool).await?;
        for r in fk {
            let table: String = r.get(0);
            out.push(format!("foreign key violation in {table}"));
        }
        Ok(out)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn pool_detail(p: &Pool) -> serde_json::Value {
    serde_json::to_value(p).unwrap_or(serde_json::Value::Null)
}

fn json_vec<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn corrupt(what: impl std::fmt::Display, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

async fn insert_pool(tx: &mut Transaction<'static, Sqlite>, p: &Pool, now: Timestamp) -> Result<()> {
    sqlx::query(
        "INSERT INTO pools (name, auto_assign, avoid_buggy_ips, namespaces, namespace_selector, service_selector, priority, created_ms, updated_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) \
         ON CONFLICT (name) DO UPDATE SET auto_assign = ?2, avoid_buggy_ips = ?3, namespaces = ?4, \
         namespace_selector = ?5, service_selector = ?6, priority = ?7, updated_ms = ?8",
    )
    .bind(p.name.as_str())
    .bind(p.auto_assign)
    .bind(p.avoid_buggy_ips)
    .bind(json_vec(&p.namespaces))
    .bind(json_vec(&p.namespace_selector))
    .bind(json_vec(&p.service_selector))
    .bind(p.priority.map(i64::from))
    .bind(now.0)
    .execute(&mut **tx)
    .await?;
    for (i, b) in p.addresses.iter().enumerate() {
        sqlx::query("INSERT INTO pool_blocks (pool, position, block) VALUES (?1, ?2, ?3)")
            .bind(p.name.as_str())
            .bind(i64::try_from(i).unwrap_or(i64::MAX))
            .bind(b.to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Deletes a pool's blocks, and the pool itself unless `keep_row` (an update rewrites it).
async fn delete_pool(tx: &mut Transaction<'static, Sqlite>, name: &PoolName, keep_row: bool) -> Result<()> {
    sqlx::query("DELETE FROM pool_blocks WHERE pool = ?1").bind(name.as_str()).execute(&mut **tx).await?;
    if !keep_row {
        sqlx::query("DELETE FROM pools WHERE name = ?1").bind(name.as_str()).execute(&mut **tx).await?;
    }
    Ok(())
}

async fn insert_allocation(tx: &mut Transaction<'static, Sqlite>, a: &Allocation, now: Timestamp) -> Result<()> {
    let key = a.sharing_key.as_ref().map_or("", SharingKey::as_str);
    sqlx::query(
        "INSERT INTO services (namespace, name, uid, pool, sharing_key, ports, created_ms, updated_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
    )
    .bind(a.service.namespace())
    .bind(a.service.name())
    .bind(a.uid.as_ref().map(Uid::as_str))
    .bind(a.pool.as_str())
    .bind(key)
    .bind(json_vec(&a.ports))
    .bind(now.0)
    .execute(&mut **tx)
    .await?;
    for ip in &a.addresses {
        let ip = ip.to_string();
        sqlx::query(
            "INSERT INTO addresses (address, pool, sharing_key) VALUES (?1, ?2, ?3) ON CONFLICT (address) DO NOTHING",
        )
        .bind(&ip)
        .bind(a.pool.as_str())
        .bind(key)
        .execute(&mut **tx)
        .await?;
        sqlx::query("INSERT INTO holders (address, sharing_key, namespace, name) VALUES (?1, ?2, ?3, ?4)")
            .bind(&ip)
            .bind(key)
            .bind(a.service.namespace())
            .bind(a.service.name())
            .execute(&mut **tx)
            .await?;
        for p in &a.ports {
            sqlx::query("INSERT INTO ports (address, port, namespace, name) VALUES (?1, ?2, ?3, ?4)")
                .bind(&ip)
                .bind(p.to_string())
                .bind(a.service.namespace())
                .bind(a.service.name())
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

async fn delete_allocation(tx: &mut Transaction<'static, Sqlite>, a: &Allocation) -> Result<()> {
    sqlx::query("DELETE FROM services WHERE namespace = ?1 AND name = ?2")
        .bind(a.service.namespace())
        .bind(a.service.name())
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "DELETE FROM addresses WHERE address IN (SELECT value FROM json_each(?1)) \
         AND NOT EXISTS (SELECT 1 FROM holders h WHERE h.address = addresses.address)",
    )
    .bind(json_vec(&a.addresses))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_quarantine(tx: &mut Transaction<'static, Sqlite>, q: &[Quarantined]) -> Result<()> {
    for q in q {
        sqlx::query("INSERT OR REPLACE INTO quarantine (address, namespace, name, until_ms) VALUES (?1, ?2, ?3, ?4)")
            .bind(q.address.to_string())
            .bind(q.service.namespace())
            .bind(q.service.name())
            .bind(q.until.0)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

async fn delete_quarantine(tx: &mut Transaction<'static, Sqlite>, addrs: &[IpAddr]) -> Result<()> {
    if addrs.is_empty() {
        return Ok(());
    }
    sqlx::query("DELETE FROM quarantine WHERE address IN (SELECT value FROM json_each(?1))")
        .bind(json_vec(&addrs))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, s: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

/// Reads the whole state into a fresh [`Ipam`].
async fn load(tx: &mut Transaction<'static, Sqlite>) -> Result<Ipam> {
    let mut blocks: BTreeMap<String, Vec<AddressBlock>> = BTreeMap::new();
    for r in sqlx::query("SELECT pool, block FROM pool_blocks ORDER BY pool, position").fetch_all(&mut **tx).await? {
        let block: String = r.get("block");
        let b = block.parse().map_err(|e| corrupt(format!("block {block}"), e))?;
        blocks.entry(r.get("pool")).or_default().push(b);
    }
    let mut pools = Vec::new();
    for r in sqlx::query("SELECT * FROM pools ORDER BY name").fetch_all(&mut **tx).await? {
        let name: String = r.get("name");
        let pname: PoolName = name.parse().map_err(|e| corrupt("pool name", e))?;
        let priority: Option<i64> = r.get("priority");
        let opts = PoolOptions {
            auto_assign: r.get("auto_assign"),
            avoid_buggy_ips: r.get("avoid_buggy_ips"),
            namespaces: parse_json::<BTreeSet<String>>("namespaces", r.get("namespaces"))?,
            namespace_selector: parse_json::<Labels>("namespace selector", r.get("namespace_selector"))?,
            service_selector: parse_json::<Labels>("service selector", r.get("service_selector"))?,
            priority: priority.map(|p| u32::try_from(p).unwrap_or(u32::MAX)),
        };
        let pool = Pool::new(pname, blocks.remove(&name).unwrap_or_default(), opts)
            .map_err(|e| corrupt(format!("pool {name}"), e))?;
        pools.push(pool);
    }
    let mut reservations = Vec::new();
    for r in sqlx::query("SELECT block, note FROM reservations ORDER BY block").fetch_all(&mut **tx).await? {
        let block: String = r.get("block");
        reservations.push(Reservation {
            block: block.parse().map_err(|e| corrupt(format!("reservation {block}"), e))?,
            note: r.get("note"),
        });
    }
    let mut ipam = Ipam::new(pools, reservations);
    let rows = sqlx::query(
        "SELECT s.namespace, s.name, s.uid, s.pool, s.sharing_key, s.ports, h.address \
         FROM services s JOIN holders h ON h.namespace = s.namespace AND h.name = s.name \
         ORDER BY s.namespace, s.name, h.address",
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut cur: Option<Allocation> = None;
    for r in rows {
        let ns: String = r.get("namespace");
        let name: String = r.get("name");
        let service = ServiceKey::new(&ns, &name).map_err(|e| corrupt("service", e))?;
        let addr: String = r.get("address");
        let ip: IpAddr = addr.parse().map_err(|e| corrupt(format!("address {addr}"), e))?;
        if let Some(c) = cur.as_mut().filter(|c| c.service == service) {
            c.addresses.push(ip);
            continue;
        }
        if let Some(done) = cur.take() {
            ipam.restore(done);
        }
        let uid: Option<String> = r.get("uid");
        let key: String = r.get("sharing_key");
        let pool: String = r.get("pool");
        cur = Some(Allocation {
            service,
            uid: uid.map(|u| u.parse()).transpose().map_err(|e| corrupt("uid", e))?,
            pool: pool.parse().map_err(|e| corrupt("pool", e))?,
            addresses: vec![ip],
            sharing_key: if key.is_empty() { None } else { Some(key.parse().map_err(|e| corrupt("sharing key", e))?) },
            ports: parse_json::<BTreeSet<Port>>("ports", r.get("ports"))?,
        });
    }
    if let Some(done) = cur.take() {
        ipam.restore(done);
    }
    for r in sqlx::query("SELECT address, namespace, name, until_ms FROM quarantine").fetch_all(&mut **tx).await? {
        let addr: String = r.get("address");
        let ns: String = r.get("namespace");
        let name: String = r.get("name");
        ipam.restore_quarantine(Quarantined {
            address: addr.parse().map_err(|e| corrupt(format!("quarantined address {addr}"), e))?,
            service: ServiceKey::new(&ns, &name).map_err(|e| corrupt("service", e))?,
            until: Timestamp(r.get("until_ms")),
        });
    }
    Ok(ipam)
}
