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

use std::sync::Arc;
use std::time::Duration;

pub use error::{ApiError, ErrorCode};
pub use vipvisor_ipam::{Change, FamilyStats};
pub use vipvisor_store::{ConfigReport, Event, ItemChange, Store};

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
}
