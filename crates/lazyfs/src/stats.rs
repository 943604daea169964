//! Counters of one layer, plain atomics the daemon reads and exports.

use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why bytes were fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FetchClass {
    /// A reader is waiting for them (including readahead of a reader).
    OnDemand,
    /// The prioritized range before mounting.
    Prefetch,
    /// The rest of the layer after mounting, at low priority.
    Background,
}

#[derive(Debug, Default)]
pub struct Stats {
    pub(crate) on_demand_bytes: AtomicU64,
    pub(crate) prefetch_bytes: AtomicU64,
    pub(crate) background_bytes: AtomicU64,
    /// Ranged requests sent to the source.
    pub(crate) requests: AtomicU64,
    pub(crate) request_errors: AtomicU64,
    /// Chunk lookups served by the cache / that needed the network.
    pub(crate) cache_hits: AtomicU64,
    pub(crate) cache_misses: AtomicU64,
    /// Chunks whose bytes did not match their digest (never served).
    pub(crate) corrupt_chunks: AtomicU64,
    /// Reads answered with an error.
    pub(crate) read_errors: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub on_demand_bytes: u64,
    pub prefetch_bytes: u64,
    pub background_bytes: u64,
    pub requests: u64,
    pub request_errors: u64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    pub corrupt_chunks: u64,
    pub read_errors: u64,
}

impl Stats {
    pub(crate) fn add_fetched(&self, class: FetchClass, n: u64) {
        let c = match class {
            FetchClass::OnDemand => &self.on_demand_bytes,
            FetchClass::Prefetch => &self.prefetch_bytes,
            FetchClass::Background => &self.background_bytes,
        };
        c.fetch_add(n, Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            on_demand_bytes: self.on_demand_bytes.load(Relaxed),
            prefetch_bytes: self.prefetch_bytes.load(Relaxed),
            background_bytes: self.background_bytes.load(Relaxed),
            requests: self.requests.load(Relaxed),
            request_errors: self.request_errors.load(Relaxed),
            cache_hits: self.cache_hits.load(Relaxed),
            cache_misses: self.cache_misses.load(Relaxed),
            corrupt_chunks: self.corrupt_chunks.load(Relaxed),
            read_errors: self.read_errors.load(Relaxed),
        }
    }
}
