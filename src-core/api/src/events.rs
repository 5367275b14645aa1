//! The audit log: every change with time and actor.

use vipvisor_model::Timestamp;
use vipvisor_store::Event;

use crate::{App, Result};

/// Which events: since a time, at most the `limit` newest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventQuery {
    pub since: Option<Timestamp>,
    pub limit: Option<u32>,
}

impl App {
    /// Events oldest first.
    pub async fn events(&self, q: EventQuery) -> Result<Vec<Event>> {
        Ok(self.store.events(q.since, q.limit).await?)
    }

    /// The time `ago` before now (for "since 1h").
    pub fn ago(&self, ago: std::time::Duration) -> Timestamp {
        let now = self.now();
        Timestamp(now.0.saturating_sub(i64::try_from(ago.as_millis()).unwrap_or(i64::MAX)))
    }
}
