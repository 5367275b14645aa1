//! vipvisor-health: is every main loop of a daemon still turning? Each loop holds a
//! [`Beat`] and calls [`Beat::beat`] on every turn (loops that wait long wake at least
//! once per deadline to beat); [`Health::check`] fails when any loop has not beaten within
//! its deadline, so a wedged loop fails `/healthz`.
//!
//! Owns: the heartbeat registry. Must not: know about HTTP or any daemon's logic.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// One loop's state. A beat is one atomic store (receive loops beat on every frame).
#[derive(Debug)]
struct Entry {
    name: &'static str,
    deadline: Duration,
    /// Nanoseconds since the registry's `start` at the last beat.
    last: AtomicU64,
    /// A loop that ended on purpose (shutdown) is no longer checked.
    done: AtomicBool,
}

#[derive(Debug)]
struct Registry {
    start: Instant,
    entries: Mutex<Vec<Arc<Entry>>>,
}

/// The registry of a process's main loops. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Health {
    registry: Arc<Registry>,
}

impl Default for Health {
    fn default() -> Self {
        Health { registry: Arc::new(Registry { start: Instant::now(), entries: Mutex::default() }) }
    }
}

/// One loop's heartbeat.
#[derive(Debug, Clone)]
pub struct Beat {
    start: Instant,
    entry: Arc<Entry>,
}

/// Loops that missed their deadline, with how long ago each last beat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unhealthy(pub Vec<(&'static str, Duration)>);

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> =
            self.0.iter().map(|(n, ago)| format!("{n} last turned {} ms ago", ago.as_millis())).collect();
        write!(f, "stalled: {}", parts.join("; "))
    }
}

fn nanos_since(start: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX)
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a loop that must beat at least every `deadline`.
    pub fn register(&self, name: &'static str, deadline: Duration) -> Beat {
        let start = self.registry.start;
        let entry = Arc::new(Entry {
            name,
            deadline,
            last: AtomicU64::new(nanos_since(start, Instant::now())),
            done: AtomicBool::new(false),
        });
        self.registry.entries.lock().unwrap_or_else(PoisonError::into_inner).push(entry.clone());
        Beat { start, entry }
    }

    /// `Ok` when every registered loop beat within its deadline at `now`.
    pub fn check_at(&self, now: Instant) -> Result<(), Unhealthy> {
        let now = nanos_since(self.registry.start, now);
        let e = self.registry.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let stalled: Vec<(&'static str, Duration)> = e
            .iter()
            .filter(|x| !x.done.load(Ordering::Relaxed))
            .map(|x| (x.name, Duration::from_nanos(now.saturating_sub(x.last.load(Ordering::Relaxed))), x.deadline))
            .filter(|(_, ago, deadline)| ago > deadline)
            .map(|(n, ago, _)| (n, ago))
            .collect();
        if stalled.is_empty() {
            Ok(())
        } else {
            Err(Unhealthy(stalled))
        }
    }

    pub fn check(&self) -> Result<(), Unhealthy> {
        self.check_at(Instant::now())
    }
}

impl Beat {
    /// The loop turned.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }
    pub fn beat_at(&self, now: Instant) {
        self.entry.last.store(nanos_since(self.start, now), Ordering::Relaxed);
    }
    /// The loop ended on purpose; it is not checked any more.
    pub fn done(&self) {
        self.entry.done.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stops_beating_fails_the_check() {
        let h = Health::new();
        let t0 = Instant::now();
        let a = h.register("ownership", Duration::from_secs(2));
        let b = h.register("lease", Duration::from_secs(5));
        a.beat_at(t0);
        b.beat_at(t0);
        assert!(h.check_at(t0 + Duration::from_secs(1)).is_ok(), "both beat within their deadlines");
        let e = h.check_at(t0 + Duration::from_secs(3)).unwrap_err();
        assert_eq!(e.0.len(), 1, "only the loop past its 2 s deadline is stalled: {e}");
        assert!(e.to_string().contains("ownership last turned 3000 ms ago"), "{e}");
        a.beat_at(t0 + Duration::from_secs(3));
        assert!(h.check_at(t0 + Duration::from_secs(4)).is_ok(), "a beat makes it healthy again");
        b.done();
        assert!(h.check_at(t0 + Duration::from_millis(4500)).is_ok(), "a loop that is done is not checked");
        assert!(h.check_at(t0 + Duration::from_secs(60)).is_err(), "a stopped loop that did not say done fails");
    }
}
