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
    /// The events after id `after`, oldest first, at most `limit`: the change feed (any
    /// process writing the same store adds to it).
    pub async fn events_after(&self, after: i64, limit: u32) -> Result<Vec<Event>> {
        Ok(self.store.events_after(after, limit).await?)
    }

    /// The id of the newest event (0 when there is none).
    pub async fn last_event_id(&self) -> Result<i64> {
        Ok(self.store.events(None, Some(1)).await?.last().map_or(0, |e| e.id))
    }

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
