//! vipvisor-api: the application layer under every front end (the CLI today, the HTTP
//! server and the desktop app next, the controller's store calls too).
//!
//! One [`App`] (store, clock, quarantine) with plain async functions per noun —
//! [`pools`], [`reservations`], [`allocations`], [`apply`], [`events`] — typed inputs and
//! results (serde), and one error type, [`ApiError`], with a stable [`ErrorCode`], the HTTP
//! status it maps to and a message naming the bad value.
//!
//! Owns: use cases and their results. Must not: know about transports (no flags, no
//! HTTP, no IPC), render anything, or link the L2, gossip or Kubernetes crates.

pub mod allocations;
pub mod apply;
pub mod error;
pub mod events;
pub mod files;
pub mod pools;
pub mod reservations;
pub mod tokens;
pub mod views;

use std::sync::Arc;
use std::time::Duration;

pub use error::{ApiError, ErrorCode};
pub use vipvisor_ipam::{Change, FamilyStats};
pub use vipvisor_store::{ConfigReport, Event, ItemChange, OwnerClaim, OwnerScope, OwnerSpan, Sighting, Store};

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Where time comes from: the system clock, or a fixed one in tests.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> vipvisor_model::Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> vipvisor_model::Timestamp {
        vipvisor_model::Timestamp::now()
    }
}

/// The application: every use case is a method of this (one module per noun).
#[derive(Debug, Clone)]
pub struct App {
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    quarantine: Duration,
}

impl App {
    /// An app over `store` (whose actor the audit log records), releasing addresses into
    /// quarantine for `quarantine`.
    pub fn new(store: Arc<Store>, quarantine: Duration) -> App {
        App { store, clock: Arc::new(SystemClock), quarantine }
    }

    /// Opens the store at `url` as `actor`.
    pub async fn open(url: &str, actor: &str, quarantine: Duration) -> Result<App> {
        vipvisor_model::check_actor(actor)?;
        let store = Store::open(url).await?.with_actor(actor);
        Ok(App::new(Arc::new(store), quarantine))
    }

    /// Opens the store at `url` for reading only (see [`Store::open_read_only`]): the
    /// listing commands work on a read-only store.
    pub async fn open_read_only(url: &str, quarantine: Duration) -> Result<App> {
        let store = Store::open_read_only(url).await?;
        Ok(App::new(Arc::new(store), quarantine))
    }

    /// The same app with another clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> App {
        self.clock = clock;
        self
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn now(&self) -> vipvisor_model::Timestamp {
        self.clock.now()
    }

    pub async fn close(&self) {
        self.store.close().await;
    }
}

/// The types the UI reads have TypeScript declarations (`--features ts`); exporting and
/// committing them is the web UI's business.
#[cfg(all(test, feature = "ts"))]
mod ts_tests {
    use ts_rs::{Config, TS};

    #[test]
    fn the_ui_types_declare_their_json_shape() {
        let cfg = Config::default();
        let pool = crate::pools::PoolView::decl(&cfg);
        for field in ["name: string", "addresses: Array<string>", "auto_assign: boolean", "families"] {
            assert!(pool.contains(field), "PoolView should declare {field}: {pool}");
        }
        let err = crate::ApiError::decl(&cfg);
        assert!(err.contains("code: ErrorCode") && err.contains("message: string"), "{err}");
        let code = crate::ErrorCode::decl(&cfg);
        assert!(code.contains("\"would_strand\""), "codes are the stable strings: {code}");
        let a = crate::allocations::Allocated::decl(&cfg);
        assert!(a.contains("service: string") && a.contains("change: Change"), "{a}");
        let e = vipvisor_store::Event::decl(&cfg);
        assert!(e.contains("at_ms: number"), "{e}");
    }

    /// The UI's types, as one committed file (ui/src/api/types.ts) that must be what the
    /// Rust types declare now (`VIPVISOR_UPDATE_TS=1 cargo test -p vipvisor-api --features
    /// ts` rewrites it).
    pub fn ui_types() -> String {
        let cfg = Config::default();
        let decls = [
            crate::ErrorCode::decl(&cfg),
            crate::ApiError::decl(&cfg),
            vipvisor_model::Family::decl(&cfg),
            vipvisor_model::MacMode::decl(&cfg),
            vipvisor_model::PoolOptions::decl(&cfg),
            vipvisor_model::Pool::decl(&cfg),
            vipvisor_ipam::FamilyStats::decl(&cfg),
            crate::pools::PoolView::decl(&cfg),
            vipvisor_model::Allocation::decl(&cfg),
            crate::allocations::Page::<vipvisor_model::Allocation>::decl(&cfg),
            vipvisor_ipam::Change::decl(&cfg),
            crate::allocations::Allocated::decl(&cfg),
            crate::allocations::ReleaseResult::decl(&cfg),
            vipvisor_store::ItemChange::decl(&cfg),
            vipvisor_store::ConfigReport::decl(&cfg),
            vipvisor_store::Event::decl(&cfg),
            crate::tokens::Role::decl(&cfg),
            crate::tokens::Caller::decl(&cfg),
            crate::tokens::TokenView::decl(&cfg),
            vipvisor_store::OwnerSpan::decl(&cfg),
            vipvisor_store::Sighting::decl(&cfg),
            vipvisor_store::GrantRow::decl(&cfg),
            vipvisor_model::Reservation::decl(&cfg),
            crate::views::Failover::decl(&cfg),
            crate::views::VipView::decl(&cfg),
            crate::views::FreeRange::decl(&cfg),
            crate::views::Cell::decl(&cfg),
            crate::views::UsagePoint::decl(&cfg),
            crate::views::PoolDetail::decl(&cfg),
            crate::views::PoolReason::decl(&cfg),
            crate::views::Pending::decl(&cfg),
            crate::views::GrantView::decl(&cfg),
        ];
        let mut out = String::from(
            "// Generated from vipvisor's Rust types by ts-rs (src-core/api/src/lib.rs, ui_types):\n// do not edit. VIPVISOR_UPDATE_TS=1 cargo test -p vipvisor-api --features ts rewrites it.\n\nexport type JsonValue = number | string | boolean | Array<JsonValue> | { [key in string]?: JsonValue } | null;\n\n",
        );
        for d in decls {
            out.push_str("export ");
            out.push_str(&d);
            out.push_str("\n\n");
        }
        out.trim_end().to_string() + "\n"
    }

    #[test]
    fn the_committed_ui_types_are_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ui/src/api/types.ts");
        let now = ui_types();
        if std::env::var_os("VIPVISOR_UPDATE_TS").is_some() {
            std::fs::create_dir_all(std::path::Path::new(path).parent().unwrap()).unwrap();
            std::fs::write(path, &now).unwrap();
        }
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            committed == now,
            "ui/src/api/types.ts is stale: VIPVISOR_UPDATE_TS=1 cargo test -p vipvisor-api --features ts"
        );
    }
}
