//! Counters of the remote protocol, so a silent fallback is never silent.
//! Plain atomics: the daemon exports a [`MetricsSnapshot`] in whatever
//! format it serves.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub remote_mounts: AtomicU64,
    pub fallback_not_remote: AtomicU64,
    pub fallback_unavailable: AtomicU64,
    pub fallback_other: AtomicU64,
    pub check_failures: AtomicU64,
    pub refreshes: AtomicU64,
    pub refresh_failures: AtomicU64,
    pub restores: AtomicU64,
    pub restore_failures: AtomicU64,
    /// Layers the `RemoteFs` pulled and unpacked itself after a fallback.
    pub unpacked: AtomicU64,
    /// Such pulls that failed (containerd then pulled the layer).
    pub unpack_failures: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub remote_mounts: u64,
    pub fallback_not_remote: u64,
    pub fallback_unavailable: u64,
    pub fallback_other: u64,
    pub check_failures: u64,
    pub refreshes: u64,
    pub refresh_failures: u64,
    pub restores: u64,
    pub restore_failures: u64,
    pub unpacked: u64,
    pub unpack_failures: u64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            remote_mounts: g(&self.remote_mounts),
            fallback_not_remote: g(&self.fallback_not_remote),
            fallback_unavailable: g(&self.fallback_unavailable),
            fallback_other: g(&self.fallback_other),
            check_failures: g(&self.check_failures),
            refreshes: g(&self.refreshes),
            refresh_failures: g(&self.refresh_failures),
            restores: g(&self.restores),
            restore_failures: g(&self.restore_failures),
            unpacked: g(&self.unpacked),
            unpack_failures: g(&self.unpack_failures),
        }
    }
}
