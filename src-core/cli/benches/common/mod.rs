//! What the benches share: the nearest-rank percentile (the same rule as bench/stats.py).

use std::time::Duration;

/// The `q` percentile of `sorted` (nearest rank).
pub fn pct(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}
