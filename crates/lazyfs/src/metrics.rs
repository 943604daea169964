//! Process-wide figures of the fetch path for operators: request latency
//! histograms (foreground and background), bounded failures (requests and
//! reads that hit the fetch timeout), and the chunk cache's hits, misses,
//! evictions and bytes per tier. Plain atomics, read by the daemon's metrics
//! endpoint through [`crate::Scheduler::figures`]; no metrics library here.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets: a LAN answer lands in the
/// first few, a WAN one around 0.05-0.5 s, a stalled one at the timeout.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of durations (lock-free).
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Non-cumulative counts; the last one is above every bound.
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// A histogram at one moment, cumulative as Prometheus wants it.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HistogramSnapshot {
    /// (upper bound in seconds, observations at or below it).
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub(crate) fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut acc = 0;
        let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len());
        for (i, &b) in LATENCY_BUCKETS.iter().enumerate() {
            acc += self.counts[i].load(Relaxed);
            buckets.push((b, acc));
        }
        let count = acc + self.counts[LATENCY_BUCKETS.len()].load(Relaxed);
        HistogramSnapshot {
            buckets,
            count,
            sum_seconds: self.sum_micros.load(Relaxed) as f64 / 1e6,
        }
    }
}

/// What the scheduler counts across every layer.
#[derive(Debug, Default)]
pub(crate) struct SchedulerStats {
    /// Time of each request to the source, answer body included (a
    /// failed one too, up to its failure).
    pub(crate) foreground_latency: Histogram,
    pub(crate) background_latency: Histogram,
    /// Requests that failed (any cause) / that hit the fetch timeout.
    pub(crate) request_failures: AtomicU64,
    pub(crate) request_timeouts: AtomicU64,
    /// Reads answered EIO because their wait reached the fetch timeout.
    pub(crate) read_timeouts: AtomicU64,
}

/// Cache figures at one moment (counters except the two `*_bytes` gauges).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct CacheFigures {
    pub memory_hits: u64,
    pub disk_hits: u64,
    /// Lookups neither tier could answer (the chunk was then fetched).
    pub misses: u64,
    pub memory_evictions: u64,
    pub disk_evictions: u64,
    /// Disk files that did not match their digest (deleted, never served).
    pub disk_corrupt: u64,
    pub disk_write_errors: u64,
    /// Bytes of chunks fetched and put in the cache.
    pub inserted_bytes: u64,
    /// Bytes of chunks served from memory / from disk.
    pub memory_hit_bytes: u64,
    pub disk_hit_bytes: u64,
    /// Bytes held now in each tier.
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// The fetch path's figures at one moment.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FetchFigures {
    pub foreground_latency: HistogramSnapshot,
    pub background_latency: HistogramSnapshot,
    pub request_failures: u64,
    pub request_timeouts: u64,
    pub read_timeouts: u64,
    pub cache: CacheFigures,
}

impl SchedulerStats {
    pub(crate) fn figures(&self, cache: CacheFigures) -> FetchFigures {
        FetchFigures {
            foreground_latency: self.foreground_latency.snapshot(),
            background_latency: self.background_latency.snapshot(),
            request_failures: self.request_failures.load(Relaxed),
            request_timeouts: self.request_timeouts.load(Relaxed),
            read_timeouts: self.read_timeouts.load(Relaxed),
            cache,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_keeps_the_sum() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets[0], (0.001, 1));
        // 30 ms is above 0.025 and at most 0.05.
        assert_eq!(s.buckets[3], (0.025, 1));
        assert_eq!(s.buckets[4], (0.05, 3));
        // 60 s is in no bucket but in the count.
        assert_eq!(s.buckets.last().unwrap().1, 3);
        assert!((s.sum_seconds - 60.0605).abs() < 1e-6, "{}", s.sum_seconds);
    }
}
