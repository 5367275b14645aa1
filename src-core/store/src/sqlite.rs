//! The SQLite backend, through sqlx: WAL, `synchronous=FULL` (an acknowledged write
//! survives power loss), foreign keys on, a 30 s busy timeout, and `BEGIN IMMEDIATE` for
//! every write so the lock is taken before anything is read. An SQLite file belongs to one
//! host: WAL needs that host's shared memory, and network file systems lock badly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, Sqlite, Transaction};
use vipvisor_model::{
    AddressBlock, Allocation, Labels, Pool, PoolName, PoolOptions, Port, Quarantined, Reservation, ServiceKey,
    SharingKey, Timestamp, Uid,
};

use crate::backend::{Backend, GrantRow, OwnerSpan, Rows, Sighting, SpanQuery, TokenRow, Write, WriteTx};
use crate::{redact_url, Event, Result, StoreError};

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => StoreError::Unavailable(e.to_string()),
            sqlx::Error::Database(d) if d.message().contains("locked") || d.message().contains("busy") => {
                StoreError::Unavailable(d.message().to_owned())
            }
            e => StoreError::Db(e.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e.to_string())
    }
}

/// `PRAGMA application_id` of a vipvisor store ("VIPV"): a file with another id, or with
/// tables but no id, is someone else's database and is refused, never migrated.
pub const APPLICATION_ID: i32 = 0x5649_5056;

/// The file a store URL names.
fn store_file(url: &str) -> Result<&str> {
    let bad = || StoreError::BadUrl(redact_url(url));
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).ok_or_else(bad)?;
    let file = path.split('?').next().unwrap_or_default();
    if file.is_empty() || file == ":memory:" {
        return Err(bad());
    }
    Ok(file)
}

/// Creates a new store at `file`, atomically: built under a temporary name (directory
/// `0700`, file `0600`: it holds who has which address, and the audit log), stamped and
/// migrated, then linked into place; if another process got there first, its store is kept.
async fn create_store(file: &str) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let open_err = |reason: String| StoreError::Open { path: file.to_owned(), reason };
    let target = Path::new(file);
    if let Some(dir) = target.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::CreateDir { path: dir.display().to_string(), source })?;
    }
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = target.with_file_name(format!(".{name}.new-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| open_err(e.to_string()))?;
    let built = async {
        let opts = SqliteConnectOptions::new().filename(&tmp).journal_mode(SqliteJournalMode::Delete);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
        sqlx::query(&format!("PRAGMA application_id = {APPLICATION_ID}")).execute(&pool).await?;
        MIGRATOR.run(&pool).await?;
        pool.close().await;
        Ok::<(), StoreError>(())
    }
    .await;
    let linked = built.and_then(|()| match std::fs::hard_link(&tmp, target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(open_err(e.to_string())),
    });
    let _ = std::fs::remove_file(&tmp);
    linked
}

/// Connect options for the store file of `url`: read-write (WAL, `synchronous=FULL`) or
/// read-only. A file that exists but is empty is refused: SQLite would take it for a new
/// database, and it is a mistake or a truncated store.
fn connect(url: &str, read_only: bool) -> Result<SqliteConnectOptions> {
    let file = store_file(url)?;
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or_default();
    match std::fs::metadata(file) {
        Ok(m) if !m.is_file() => {
            return Err(StoreError::Open { path: file.to_owned(), reason: "not a regular file".into() })
        }
        Ok(m) if m.len() == 0 => {
            return Err(StoreError::Foreign {
                path: file.to_owned(),
                reason: "the file is empty (remove it to start a new store)".into(),
            })
        }
        Ok(_) => {}
        Err(e) => return Err(StoreError::Open { path: file.to_owned(), reason: e.to_string() }),
    }
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
        .map_err(|_| StoreError::BadUrl(redact_url(url)))?
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(30));
    Ok(if read_only {
        opts.read_only(true)
    } else {
        opts.journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Full)
    })
}

/// The reason `pool` is not a vipvisor store, if it is not. With `stamp`, a store from
/// before the id was set (it has exactly our tables) gets the id.
async fn check_identity(pool: &SqlitePool, stamp: bool) -> std::result::Result<(), String> {
    let id: i32 = sqlx::query_scalar("PRAGMA application_id").fetch_one(pool).await.map_err(|e| e.to_string())?;
    if id == APPLICATION_ID {
        return Ok(());
    }
    if id != 0 {
        return Err(format!("it is another program's database (application_id {id:#x})"));
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| e.to_string())?;
    // A store from before the id was set has exactly our tables (meta among them).
    let ours = tables.iter().any(|t| t == "_sqlx_migrations") && tables.iter().any(|t| t == "meta");
    if !ours {
        let shown: Vec<&str> = tables.iter().take(5).map(String::as_str).collect();
        return Err(if tables.is_empty() {
            "it is an SQLite database without vipvisor's tables".into()
        } else {
            format!("it holds other tables ({})", shown.join(", "))
        });
    }
    if stamp {
        sqlx::query(&format!("PRAGMA application_id = {APPLICATION_ID}"))
            .execute(pool)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// SQLite as the store's backend.
#[derive(Debug, Clone)]
pub struct SqliteBackend {
    pool: SqlitePool,
}

impl SqliteBackend {
    /// Opens (creating it on first use) and migrates the database at `url`. Refuses a
    /// file that is not a vipvisor store. Errors name the path.
    pub async fn open(url: &str) -> Result<SqliteBackend> {
        let file = store_file(url)?.to_owned();
        if !Path::new(&file).exists() {
            create_store(&file).await?;
        }
        let named = |e: sqlx::Error| match StoreError::from(e) {
            StoreError::Db(reason) => StoreError::Open { path: file.clone(), reason },
            other => other,
        };
        // Look before touching: opening read-write switches the file to WAL.
        let foreign = |reason| StoreError::Foreign { path: file.clone(), reason };
        let look =
            SqlitePoolOptions::new().max_connections(1).connect_with(connect(url, true)?).await.map_err(named)?;
        let seen = check_identity(&look, false).await;
        look.close().await;
        seen.map_err(foreign)?;
        let pool =
            SqlitePoolOptions::new().max_connections(2).connect_with(connect(url, false)?).await.map_err(named)?;
        check_identity(&pool, true).await.map_err(foreign)?;
        let b = SqliteBackend { pool };
        b.migrate().await?;
        Ok(b)
    }

    /// Opens an existing store for reading only: nothing is created or migrated, so a
    /// read-only file (or directory) is enough. A store that does not exist yet is created
    /// with [`SqliteBackend::open`]; one that needs migrating must be opened for writing.
    pub async fn open_read_only(url: &str) -> Result<SqliteBackend> {
        let file = store_file(url)?.to_owned();
        if !Path::new(&file).exists() {
            return SqliteBackend::open(url).await;
        }
        let opts = connect(url, true)?;
        let named = |e: sqlx::Error| match StoreError::from(e) {
            StoreError::Db(reason) => StoreError::Open { path: file.clone(), reason },
            other => other,
        };
        // In WAL mode a reader needs the -shm file; in a directory it cannot write, and with
        // no writer around, the file is opened immutable (nobody can change it meanwhile).
        let pool = match SqlitePoolOptions::new().max_connections(2).connect_with(opts.clone()).await {
            Ok(p) if sqlx::query("SELECT 1 FROM sqlite_master LIMIT 1").execute(&p).await.is_ok() => p,
            _ => SqlitePoolOptions::new().max_connections(2).connect_with(opts.immutable(true)).await.map_err(named)?,
        };
        check_identity(&pool, false).await.map_err(|reason| StoreError::Foreign { path: file.clone(), reason })?;
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success")
            .fetch_one(&pool)
            .await
            .map_err(named)?;
        if applied < MIGRATOR.iter().count() as i64 {
            return Err(StoreError::Open {
                path: file,
                reason: "the store needs migrating; run a command that writes (e.g. `vipvisor apply`) first".into(),
            });
        }
        Ok(SqliteBackend { pool })
    }

    /// Wraps an existing pool (already migrated, or call [`SqliteBackend::migrate`]).
    pub fn from_pool(pool: SqlitePool) -> SqliteBackend {
        SqliteBackend { pool }
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
}

struct SqliteTx(Transaction<'static, Sqlite>);

#[async_trait]
impl Backend for SqliteBackend {
    async fn begin(&self) -> Result<Box<dyn WriteTx>> {
        Ok(Box::new(SqliteTx(self.pool.begin_with("BEGIN IMMEDIATE").await?)))
    }

    async fn generation(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT value FROM meta WHERE key = 'generation'").fetch_one(&self.pool).await?)
    }

    async fn rows(&self) -> Result<Rows> {
        let mut tx = self.pool.begin().await?;
        let rows = load(&mut tx).await?;
        tx.rollback().await?;
        Ok(rows)
    }

    async fn events(&self, since: Option<Timestamp>, limit: Option<u32>) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT * FROM (SELECT id, at_ms, actor, kind, subject, detail FROM events WHERE at_ms >= ?1 \
             ORDER BY id DESC LIMIT ?2) ORDER BY id",
        )
        .bind(since.map_or(i64::MIN, |t| t.0))
        .bind(limit.map_or(-1, i64::from))
        .fetch_all(&self.pool)
        .await?;
        events_of(rows)
    }

    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, kind, subject, detail FROM events WHERE id > ?1 ORDER BY id LIMIT ?2",
        )
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        events_of(rows)
    }

    async fn grants(&self) -> Result<Vec<GrantRow>> {
        let rows = sqlx::query(
            "SELECT provider, vm, mac, node, vips, record, state, error FROM grants ORDER BY provider, vm, mac",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(GrantRow {
                    provider: r.get("provider"),
                    vm: r.get("vm"),
                    mac: r.get("mac"),
                    node: r.get("node"),
                    vips: parse_json("grant vips", &r.get::<String, _>("vips"))?,
                    record: r.get("record"),
                    state: r.get("state"),
                    error: r.get("error"),
                })
            })
            .collect()
    }

    async fn ownership(&self, q: &SpanQuery) -> Result<Vec<OwnerSpan>> {
        let mut conn = self.pool.acquire().await?;
        ownership_of(&mut conn, q).await
    }

    async fn sightings(&self, address: Option<IpAddr>) -> Result<Vec<Sighting>> {
        let rows = sqlx::query(
            "SELECT address, mac, observer, interface, first_ms, last_ms, count FROM sightings \
             WHERE (?1 IS NULL OR address = ?1) ORDER BY last_ms DESC LIMIT 1000",
        )
        .bind(address.map(|a| a.to_string()))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let address: String = r.get("address");
                Ok(Sighting {
                    address: address.parse().map_err(|e| corrupt(format!("sighting address {address:?}"), e))?,
                    mac: r.get("mac"),
                    observer: r.get("observer"),
                    interface: r.get("interface"),
                    first_ms: r.get("first_ms"),
                    last_ms: r.get("last_ms"),
                    count: r.get("count"),
                })
            })
            .collect()
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>> {
        let rows =
            sqlx::query("SELECT name, role, hash, created_ms FROM tokens ORDER BY name").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|r| token_row(&r)).collect())
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>> {
        let row = sqlx::query("SELECT name, role, hash, created_ms FROM tokens WHERE hash = ?1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(token_row))
    }

    async fn integrity_check(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = sqlx::query_scalar("PRAGMA integrity_check").fetch_all(&self.pool).await?;
        out.retain(|s| s != "ok");
        let fk = sqlx::query("PRAGMA foreign_key_check").fetch_all(&self.pool).await?;
        for r in fk {
            let table: String = r.get(0);
            out.push(format!("foreign key violation in {table}"));
        }
        Ok(out)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

#[async_trait]
impl WriteTx for SqliteTx {
    async fn bump_generation(&mut self) -> Result<i64> {
        let bumped: i64 =
            sqlx::query_scalar("UPDATE meta SET value = value + 1 WHERE key = 'generation' RETURNING value")
                .fetch_one(&mut *self.0)
                .await?;
        Ok(bumped - 1)
    }

    async fn rows(&mut self) -> Result<Rows> {
        load(&mut self.0).await
    }

    async fn open_owners(&mut self) -> Result<Vec<OwnerSpan>> {
        ownership_of(&mut self.0, &SpanQuery { open_only: true, ..SpanQuery::default() }).await
    }

    async fn write(&mut self, w: Write<'_>, now: Timestamp) -> Result<()> {
        let tx = &mut self.0;
        match w {
            Write::InsertAllocation(a) => insert_allocation(tx, a, now).await,
            Write::DeleteAllocation(a) => delete_allocation(tx, a).await,
            Write::MoveAllocation(a) => {
                sqlx::query("UPDATE services SET pool = ?3, updated_ms = ?4 WHERE namespace = ?1 AND name = ?2")
                    .bind(a.service.namespace())
                    .bind(a.service.name())
                    .bind(a.pool.as_str())
                    .bind(now.0)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query("UPDATE addresses SET pool = ?2 WHERE address IN (SELECT value FROM json_each(?1))")
                    .bind(json_vec(&a.addresses))
                    .bind(a.pool.as_str())
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }
            Write::InsertQuarantine(q) => insert_quarantine(tx, q).await,
            Write::DeleteQuarantine(addrs) => delete_quarantine(tx, addrs).await,
            Write::DeletePoolBlocks(name) => {
                sqlx::query("DELETE FROM pool_blocks WHERE pool = ?1").bind(name.as_str()).execute(&mut **tx).await?;
                Ok(())
            }
            Write::UpsertPool(p) => upsert_pool(tx, p, now).await,
            Write::DeletePool(name) => {
                sqlx::query("DELETE FROM pools WHERE name = ?1").bind(name.as_str()).execute(&mut **tx).await?;
                Ok(())
            }
            Write::UpsertReservation(r) => {
                sqlx::query(
                    "INSERT INTO reservations (block, note, created_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (block) DO UPDATE SET note = ?2",
                )
                .bind(r.block.to_string())
                .bind(&r.note)
                .bind(now.0)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }
            Write::DeleteReservation(b) => {
                sqlx::query("DELETE FROM reservations WHERE block = ?1").bind(b.to_string()).execute(&mut **tx).await?;
                Ok(())
            }
            Write::UpsertGrant(g) => {
                sqlx::query(
                    "INSERT INTO grants (provider, vm, mac, node, vips, record, state, error, created_ms, updated_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9) \
                     ON CONFLICT (provider, vm, mac) DO UPDATE SET node = ?4, vips = ?5, record = ?6, state = ?7, \
                     error = ?8, updated_ms = ?9",
                )
                .bind(&g.provider)
                .bind(&g.vm)
                .bind(&g.mac)
                .bind(&g.node)
                .bind(serde_json::to_string(&g.vips).map_err(|e| StoreError::Corrupt(e.to_string()))?)
                .bind(&g.record)
                .bind(&g.state)
                .bind(&g.error)
                .bind(now.0)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }
            Write::InsertToken(t) => {
                sqlx::query("INSERT INTO tokens (name, role, hash, created_ms) VALUES (?1, ?2, ?3, ?4)")
                    .bind(&t.name)
                    .bind(&t.role)
                    .bind(&t.hash)
                    .bind(t.created.0)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }
            Write::OpenOwner(c) => {
                sqlx::query(
                    "INSERT INTO ownership (address, node, interface, mac, source, start_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .bind(c.address.to_string())
                .bind(&c.node)
                .bind(&c.interface)
                .bind(&c.mac)
                .bind(c.source)
                .bind(now.0)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }
            Write::CloseOwner { address, node, ended } => {
                sqlx::query(
                    "UPDATE ownership SET end_ms = ?3, ended = ?4 WHERE address = ?1 AND node = ?2 AND end_ms IS NULL",
                )
                .bind(address.to_string())
                .bind(node)
                .bind(now.0)
                .bind(ended)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }
            Write::AddSighting { address, mac, observer, interface, count, first_ms, last_ms } => {
                sqlx::query(
                    "INSERT INTO sightings (address, mac, observer, interface, first_ms, last_ms, count) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (address, mac, observer) \
                     DO UPDATE SET interface = ?4, last_ms = max(last_ms, ?6), count = count + ?7",
                )
                .bind(address.to_string())
                .bind(mac)
                .bind(observer)
                .bind(interface)
                .bind(first_ms)
                .bind(last_ms)
                .bind(count)
                .execute(&mut **tx)
                .await?;
                Ok(())
            }
            Write::DeleteToken(name) => {
                sqlx::query("DELETE FROM tokens WHERE name = ?1").bind(name).execute(&mut **tx).await?;
                Ok(())
            }
            Write::DeleteGrant { provider, vm, mac } => {
                sqlx::query("DELETE FROM grants WHERE provider = ?1 AND vm = ?2 AND mac = ?3")
                    .bind(provider)
                    .bind(vm)
                    .bind(mac)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }
            Write::Audit { actor, event } => {
                sqlx::query("INSERT INTO events (at_ms, actor, kind, subject, detail) VALUES (?1, ?2, ?3, ?4, ?5)")
                    .bind(now.0)
                    .bind(actor)
                    .bind(event.kind())
                    .bind(event.subject())
                    .bind(event.detail().to_string())
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }
        }
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        Ok(self.0.commit().await?)
    }

    async fn rollback(self: Box<Self>) -> Result<()> {
        Ok(self.0.rollback().await?)
    }
}

async fn ownership_of(conn: &mut sqlx::SqliteConnection, q: &SpanQuery) -> Result<Vec<OwnerSpan>> {
    let rows = sqlx::query(
        "SELECT * FROM (SELECT id, address, node, interface, mac, source, start_ms, end_ms, ended FROM ownership \
         WHERE (?1 IS NULL OR address = ?1) AND (?2 = 0 OR end_ms IS NULL) \
         AND (?3 IS NULL OR end_ms IS NULL OR end_ms >= ?3) ORDER BY start_ms DESC, id DESC LIMIT ?4) \
         ORDER BY start_ms, id",
    )
    .bind(q.address.map(|a| a.to_string()))
    .bind(q.open_only)
    .bind(q.since_ms)
    .bind(q.limit.map_or(-1, i64::from))
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|r| {
            let address: String = r.get("address");
            Ok(OwnerSpan {
                id: r.get("id"),
                address: address.parse().map_err(|e| corrupt(format!("ownership address {address:?}"), e))?,
                node: r.get("node"),
                interface: r.get("interface"),
                mac: r.get("mac"),
                source: r.get("source"),
                start_ms: r.get("start_ms"),
                end_ms: r.get("end_ms"),
                ended: r.get("ended"),
            })
        })
        .collect()
}

fn json_vec<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}

fn corrupt(what: impl std::fmt::Display, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

async fn upsert_pool(tx: &mut Transaction<'static, Sqlite>, p: &Pool, now: Timestamp) -> Result<()> {
    let o = &p.options;
    sqlx::query(
        "INSERT INTO pools (name, auto_assign, avoid_buggy_ips, namespaces, namespace_selector, service_selector, priority, created_ms, updated_ms, mac) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9) \
         ON CONFLICT (name) DO UPDATE SET auto_assign = ?2, avoid_buggy_ips = ?3, namespaces = ?4, \
         namespace_selector = ?5, service_selector = ?6, priority = ?7, updated_ms = ?8, mac = ?9",
    )
    .bind(p.name.as_str())
    .bind(o.auto_assign)
    .bind(o.avoid_buggy_ips)
    .bind(json_vec(&o.namespaces))
    .bind(json_vec(&o.namespace_selector))
    .bind(json_vec(&o.service_selector))
    .bind(o.priority.map(i64::from))
    .bind(now.0)
    .bind(o.mac.as_str())
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

/// Reads every row.
async fn load(tx: &mut Transaction<'static, Sqlite>) -> Result<Rows> {
    let generation: i64 =
        sqlx::query_scalar("SELECT value FROM meta WHERE key = 'generation'").fetch_one(&mut **tx).await?;
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
            mac: r.get::<String, _>("mac").parse().map_err(|e| corrupt(format!("pool {name} MAC mode"), e))?,
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
    let rows = sqlx::query(
        "SELECT s.namespace, s.name, s.uid, s.pool, s.sharing_key, s.ports, h.address \
         FROM services s JOIN holders h ON h.namespace = s.namespace AND h.name = s.name \
         ORDER BY s.namespace, s.name, h.address",
    )
    .fetch_all(&mut **tx)
    .await?;
    let mut allocations: Vec<Allocation> = Vec::new();
    for r in rows {
        let ns: String = r.get("namespace");
        let name: String = r.get("name");
        let service = ServiceKey::new(&ns, &name).map_err(|e| corrupt("service", e))?;
        let addr: String = r.get("address");
        let ip: IpAddr = addr.parse().map_err(|e| corrupt(format!("address {addr}"), e))?;
        if let Some(c) = allocations.last_mut().filter(|c| c.service == service) {
            c.addresses.push(ip);
            continue;
        }
        let uid: Option<String> = r.get("uid");
        let key: String = r.get("sharing_key");
        let pool: String = r.get("pool");
        allocations.push(Allocation {
            service,
            uid: uid.map(|u| u.parse()).transpose().map_err(|e| corrupt("uid", e))?,
            pool: pool.parse().map_err(|e| corrupt("pool", e))?,
            addresses: vec![ip],
            sharing_key: if key.is_empty() { None } else { Some(key.parse().map_err(|e| corrupt("sharing key", e))?) },
            ports: parse_json::<BTreeSet<Port>>("ports", r.get("ports"))?,
        });
    }
    let mut quarantine = Vec::new();
    for r in sqlx::query("SELECT address, namespace, name, until_ms FROM quarantine").fetch_all(&mut **tx).await? {
        let addr: String = r.get("address");
        let ns: String = r.get("namespace");
        let name: String = r.get("name");
        quarantine.push(Quarantined {
            address: addr.parse().map_err(|e| corrupt(format!("quarantined address {addr}"), e))?,
            service: ServiceKey::new(&ns, &name).map_err(|e| corrupt("service", e))?,
            until: Timestamp(r.get("until_ms")),
        });
    }
    Ok(Rows { generation, pools, reservations, allocations, quarantine })
}

fn events_of(rows: Vec<sqlx::sqlite::SqliteRow>) -> Result<Vec<Event>> {
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
                detail: serde_json::from_str(&detail).map_err(|e| corrupt("event detail", e))?,
            })
        })
        .collect()
}

fn token_row(r: &sqlx::sqlite::SqliteRow) -> TokenRow {
    TokenRow { name: r.get("name"), role: r.get("role"), hash: r.get("hash"), created: Timestamp(r.get("created_ms")) }
}
