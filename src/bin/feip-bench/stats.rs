//! Time and figures: the proxy's clock on the wall, seconds between timestamps, percentiles.

use std::time::Instant;

use jiff::{SignedDuration, Timestamp};

/// Maps the proxy's `Instant`s to wall-clock time (the controller reports wall-clock times).
pub struct Clock {
    inst: Instant,
    wall: Timestamp,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            inst: Instant::now(),
            wall: Timestamp::now(),
        }
    }

    pub fn wall(&self, at: Instant) -> Timestamp {
        let d = if at >= self.inst {
            SignedDuration::try_from(at - self.inst).unwrap_or_default()
        } else {
            -SignedDuration::try_from(self.inst - at).unwrap_or_default()
        };
        self.wall.checked_add(d).unwrap_or(self.wall)
    }
}

pub fn secs(later: Timestamp, earlier: Timestamp) -> f64 {
    later.duration_since(earlier).as_secs_f64()
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Stats {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentiles (with 20 samples, p99 is the maximum).
pub fn stats(values: &[f64]) -> Stats {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return Stats::default();
    }
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Stats {
        n: v.len(),
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        max: v[v.len() - 1],
        mean: v.iter().sum::<f64>() / v.len() as f64,
    }
}

pub fn print_stats(label: &str, s: &Stats, unit_ms: bool) {
    let k = if unit_ms { 1000.0 } else { 1.0 };
    let u = if unit_ms { "ms" } else { "s" };
    println!(
        "    {label:<34} n={:<3} p50 {:8.3}{u}  p90 {:8.3}{u}  p99 {:8.3}{u}  max {:8.3}{u}",
        s.n,
        s.p50 * k,
        s.p90 * k,
        s.p99 * k,
        s.max * k
    );
}
