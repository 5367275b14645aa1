//! What a database must do for the [`crate::Store`]: take the write lock, keep the
//! generation counter, read every row, and write typed changes. The store's logic (cache,
//! decisions, audit) is written once above this trait; SQLite implements it today
//! ([`crate::sqlite`]) and a PostgreSQL backend implements the same ~10 calls.

use std::net::IpAddr;

use async_trait::async_trait;
use vipvisor_model::{AddressBlock, Allocation, Pool, PoolName, Quarantined, Reservation, Timestamp};

use crate::audit::Audit;
use crate::{Event, Result};

/// Every row, read in one consistent transaction, at `generation`.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub generation: i64,
    pub pools: Vec<Pool>,
    pub reservations: Vec<Reservation>,
    pub allocations: Vec<Allocation>,
    pub quarantine: Vec<Quarantined>,
}

/// A hypervisor grant on one VM NIC (issue #11): the VIPs its node may announce and the
/// provider's record of what vipvisor added (opaque JSON to the store).
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct GrantRow {
    pub provider: String,
    pub vm: String,
    pub mac: String,
    pub node: String,
    #[cfg_attr(feature = "ts", ts(type = "Array<string>"))]
    #[schema(value_type = Vec<String>)]
    pub vips: Vec<IpAddr>,
    /// JSON text: the provider's record.
    pub record: String,
    /// `applied` or `failed`.
    pub state: String,
    pub error: String,
}

/// An API token as stored: its name, role and the SHA-256 of its secret (never the
/// secret itself).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TokenRow {
    pub name: String,
    /// `viewer` or `admin`.
    pub role: String,
    #[serde(skip)]
    pub hash: String,
    pub created: Timestamp,
}

/// One stretch of time a node was the elected owner of an address (issue #12): the
/// failover history. `end_ms` is `None` while it still is; `ended` says how it ended
/// (`released`: the owner stopped by itself; `taken`: another node took over, so the end
/// is when that was seen, not necessarily when the owner died).
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct OwnerSpan {
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub id: i64,
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    #[schema(value_type = String)]
    pub address: IpAddr,
    pub node: String,
    pub interface: String,
    pub mac: String,
    /// `kubernetes` or `group`.
    pub source: String,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub start_ms: i64,
    #[cfg_attr(feature = "ts", ts(type = "number | null"))]
    #[schema(value_type = Option<u64>)]
    pub end_ms: Option<i64>,
    /// `''` (still the owner), `released` or `taken`.
    pub ended: String,
}

/// A node now owns an address (what opens an [`OwnerSpan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerClaim {
    pub address: IpAddr,
    pub node: String,
    pub interface: String,
    pub mac: String,
    pub source: &'static str,
}

/// A MAC seen sending as an address (ARP sender, NDP advertisement), by one observer.
#[cfg_attr(feature = "ts", derive(ts_rs::TS))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Sighting {
    #[cfg_attr(feature = "ts", ts(type = "string"))]
    #[schema(value_type = String)]
    pub address: IpAddr,
    pub mac: String,
    /// The node whose speaker saw it.
    pub observer: String,
    pub interface: String,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub first_ms: i64,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub last_ms: i64,
    #[cfg_attr(feature = "ts", ts(type = "number"))]
    #[schema(value_type = u64)]
    pub count: i64,
}

/// Which ownership stretches to read.
#[derive(Debug, Clone, Default)]
pub struct SpanQuery {
    pub address: Option<IpAddr>,
    /// Only the open ones (the current owners).
    pub open_only: bool,
    /// Only stretches still open at or ending after this time.
    pub since_ms: Option<i64>,
    /// At most this many, newest first.
    pub limit: Option<u32>,
}

/// One change to the rows. The store issues them in an order the schema's foreign keys
/// accept (blocks of changed pools go before new blocks are written, allocations move
/// before old pools are deleted).
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    InsertAllocation(&'a Allocation),
    DeleteAllocation(&'a Allocation),
    /// The allocation keeps its addresses in another pool.
    MoveAllocation(&'a Allocation),
    InsertQuarantine(&'a [Quarantined]),
    DeleteQuarantine(&'a [IpAddr]),
    /// Deletes a pool's blocks (the row stays, for [`Write::UpsertPool`] or
    /// [`Write::DeletePool`]).
    DeletePoolBlocks(&'a PoolName),
    UpsertPool(&'a Pool),
    DeletePool(&'a PoolName),
    UpsertReservation(&'a Reservation),
    DeleteReservation(&'a AddressBlock),
    UpsertGrant(&'a GrantRow),
    DeleteGrant {
        provider: &'a str,
        vm: &'a str,
        mac: &'a str,
    },
    InsertToken(&'a TokenRow),
    OpenOwner(&'a OwnerClaim),
    /// Ends the open stretch of `node` for `address` (`ended`: `released` or `taken`).
    CloseOwner {
        address: IpAddr,
        node: &'a str,
        ended: &'static str,
    },
    /// Counts `count` more sightings, seen from `first_ms` to `last_ms`.
    AddSighting {
        address: IpAddr,
        mac: &'a str,
        observer: &'a str,
        interface: &'a str,
        count: i64,
        first_ms: i64,
        last_ms: i64,
    },
    DeleteToken(&'a str),
    Audit {
        actor: &'a str,
        event: &'a Audit,
    },
}

/// A database the store can run on.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Starts a write: takes the database's write lock before anything is read.
    async fn begin(&self) -> Result<Box<dyn WriteTx>>;
    /// The generation counter as committed now.
    async fn generation(&self) -> Result<i64>;
    /// Every row, consistently.
    async fn rows(&self) -> Result<Rows>;
    /// The audit log, oldest first, from `since` on, at most `limit` newest.
    async fn events(&self, since: Option<Timestamp>, limit: Option<u32>) -> Result<Vec<Event>>;
    /// The audit events after id `after`, oldest first, at most `limit`.
    async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>>;
    /// Every hypervisor grant, by provider, VM and NIC.
    async fn grants(&self) -> Result<Vec<GrantRow>>;
    /// Ownership stretches, oldest first (the newest `limit` when given).
    async fn ownership(&self, q: &SpanQuery) -> Result<Vec<OwnerSpan>>;
    /// Sightings (of `address`, or all), newest first.
    async fn sightings(&self, address: Option<IpAddr>) -> Result<Vec<Sighting>>;
    /// Every API token, by name.
    async fn tokens(&self) -> Result<Vec<TokenRow>>;
    /// The token whose secret hashes to `hash`.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRow>>;
    /// The database's own consistency checks; empty when all is well.
    async fn integrity_check(&self) -> Result<Vec<String>>;
    async fn close(&self);
}

/// A write transaction, holding the write lock until commit or rollback (or drop, which
/// rolls back).
#[async_trait]
pub trait WriteTx: Send {
    /// Bumps the generation counter (undone by a rollback) and returns the value before.
    async fn bump_generation(&mut self) -> Result<i64>;
    /// Every row as this transaction sees it.
    async fn rows(&mut self) -> Result<Rows>;
    /// The open ownership stretches as this transaction sees them (under the write lock,
    /// so two writers never both miss each other's).
    async fn open_owners(&mut self) -> Result<Vec<OwnerSpan>>;
    async fn write(&mut self, w: Write<'_>, now: Timestamp) -> Result<()>;
    async fn commit(self: Box<Self>) -> Result<()>;
    async fn rollback(self: Box<Self>) -> Result<()>;
}
