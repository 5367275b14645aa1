//! vipvisor-health: is every main loop of a daemon still turning? Each loop holds a
//! [`Beat`] and calls [`Beat::beat`] on every turn (loops that wait long wake at least
//! once per deadline to beat); [`Health::check`] fails when any loop has not beaten within
//! its deadline, so a wedged loop fails `/healthz`.
//!
//! Owns: the heartbeat registry. Must not: know about HTTP or any daemon's logic.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct Entry {
    name: &'static str,
    deadline: Duration,
    last: Instant,
    /// A loop that ended on purpose (shutdown) is no longer checked.
    done: bool,
}

/// The registry of a process's main loops. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health {
    entries: Arc<Mutex<Vec<Entry>>>,
}

/// One loop's heartbeat.
#[derive(Debug, Clone)]
pub struct Beat {
    entries: Arc<Mutex<Vec<Entry>>>,
    index: usize,
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

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a loop that must beat at least every `deadline`.
    pub fn register(&self, name: &'static str, deadline: Duration) -> Beat {
        let mut e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        e.push(Entry { name, deadline, last: Instant::now(), done: false });
        Beat { entries: self.entries.clone(), index: e.len() - 1 }
    }

    /// `Ok` when every registered loop beat within its deadline at `now`.
    pub fn check_at(&self, now: Instant) -> Result<(), Unhealthy> {
        let e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let stalled: Vec<(&'static str, Duration)> = e
            .iter()
            .filter(|x| !x.done)
            .map(|x| (x.name, now.saturating_duration_since(x.last), x.deadline))
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
        let mut e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(x) = e.get_mut(self.index) {
            x.last = now;
        }
    }
    /// The loop ended on purpose; it is not checked any more.
    pub fn done(&self) {
        let mut e = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(x) = e.get_mut(self.index) {
            x.done = true;
        }
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
