//! Getting verified chunks of one layer: from the cache, or from the source.
//!
//! - One fetch per chunk at a time (singleflight): concurrent readers of a
//!   chunk, in this layer or another with the same chunk, await one request.
//! - Chunks wanted together whose gzip members are adjacent (or nearly) go
//!   into one ranged request, up to a size limit per class of fetch.
//! - Requests run on spawned tasks with a per-request timeout, so a caller
//!   that gives up does not waste the bytes, and a dead source never leaves
//!   a chunk "in flight" forever. Nothing remembers a failure: the next read
//!   simply tries again.
//! - Background requests have their own small concurrency limit and wait
//!   while any on-demand request of the layer is running.

use crate::cache::ChunkCache;
use crate::chunk::{self, forget_flight, Waiter};
use crate::config::Config;
use crate::source::{RangeSource, SourceError};
use crate::stats::{FetchClass, Stats};
use bytes::Bytes;
use estargz::index::Chunk;
use futures::future::FutureExt;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Notify, Semaphore};

// Defined beside the in-flight table that hands it to waiters; named here
// too, where callers meet it.
pub(crate) use crate::chunk::FetchError;

/// Limits of one fetcher.
#[derive(Debug, Clone)]
pub(crate) struct FetchSettings {
    pub(crate) timeout: Duration,
    pub(crate) max_concurrency: usize,
    pub(crate) background_concurrency: usize,
    pub(crate) max_request_bytes: u64,
    pub(crate) background_request_bytes: u64,
    pub(crate) coalesce_gap_bytes: u64,
    pub(crate) background_quiet: Duration,
}

impl FetchSettings {
    pub(crate) fn from_config(c: &Config) -> Self {
        FetchSettings {
            timeout: c.fetch_timeout(),
            max_concurrency: c.max_concurrency.max(1),
            background_concurrency: c.background_concurrency.max(1),
            max_request_bytes: c.max_request_bytes.max(1),
            background_request_bytes: c.background_request_bytes.max(1),
            coalesce_gap_bytes: c.coalesce_gap_bytes,
            background_quiet: Duration::from_millis(c.background_quiet_ms),
        }
    }
}

pub(crate) struct Fetcher {
    source: Arc<dyn RangeSource>,
    cache: Arc<ChunkCache>,
    stats: Arc<Stats>,
    cfg: FetchSettings,
    foreground: Semaphore,
    background: Semaphore,
    fg_active: AtomicUsize,
    fg_idle: Notify,
    /// Gzip members of this layer known to be in the cache: offset -> length.
    resident: Mutex<HashMap<u64, u64>>,
    resident_bytes: AtomicU64,
}

type Tx = oneshot::Sender<Result<Bytes, FetchError>>;

/// A chunk this task fetches: the answer channel, and its own in-flight
/// entry (removed only if still the same entry).
struct Owned {
    chunk: Chunk,
    tx: Tx,
    waiter: Waiter,
}

/// One planned request: a blob range and the chunks it covers.
struct Span {
    start: u64,
    end: u64,
    chunks: Vec<Owned>,
}

/// Group member ranges `(start, end)` into requests: sorted by offset, a
/// range joins the previous request if it starts at most `gap` after its
/// end and the request stays within `max` bytes. Returns, per request, its
/// range and the indexes of the ranges in it.
pub(crate) fn plan_spans(ranges: &[(u64, u64)], gap: u64, max: u64) -> Vec<(u64, u64, Vec<usize>)> {
    let mut order: Vec<usize> = (0..ranges.len()).collect();
    order.sort_by_key(|&i| ranges[i]);
    let mut out: Vec<(u64, u64, Vec<usize>)> = Vec::new();
    for i in order {
        let (s, e) = ranges[i];
        if let Some(last) = out.last_mut() {
            let end = last.1.max(e);
            if s <= last.1.saturating_add(gap) && end - last.0 <= max {
                last.1 = end;
                last.2.push(i);
                continue;
            }
        }
        out.push((s, e, vec![i]));
    }
    out
}

/// When any layer of this process last had an on-demand request running
/// (ms since the first call): background fetch of every layer yields to
/// reads of every layer, not just its own.
static LAST_FOREGROUND_MS: AtomicU64 = AtomicU64::new(0);

fn clock_ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

/// Note on-demand activity now (also used to hold background fetch back
/// right after a mount).
pub(crate) fn note_foreground() {
    LAST_FOREGROUND_MS.fetch_max(clock_ms(), Relaxed);
}

/// Counts a running on-demand request; wakes background fetch when none is left.
struct Foreground<'a>(&'a Fetcher);

impl Drop for Foreground<'_> {
    fn drop(&mut self) {
        note_foreground();
        if self.0.fg_active.fetch_sub(1, Relaxed) == 1 {
            self.0.fg_idle.notify_waiters();
        }
    }
}

impl Fetcher {
    pub(crate) fn new(
        source: Arc<dyn RangeSource>,
        cache: Arc<ChunkCache>,
        stats: Arc<Stats>,
        cfg: FetchSettings,
    ) -> Fetcher {
        Fetcher {
            source,
            cache,
            stats,
            foreground: Semaphore::new(cfg.max_concurrency),
            background: Semaphore::new(cfg.background_concurrency),
            cfg,
            fg_active: AtomicUsize::new(0),
            fg_idle: Notify::new(),
            resident: Mutex::new(HashMap::new()),
            resident_bytes: AtomicU64::new(0),
        }
    }

    pub(crate) fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// Compressed bytes of this layer known to be in the cache.
    pub(crate) fn resident_bytes(&self) -> u64 {
        self.resident_bytes.load(Relaxed)
    }

    pub(crate) fn is_resident(&self, c: &Chunk) -> bool {
        self.resident.lock().contains_key(&c.blob_offset)
    }

    pub(crate) fn mark_resident(&self, c: &Chunk) {
        let len = c.blob_end.saturating_sub(c.blob_offset);
        if self.resident.lock().insert(c.blob_offset, len).is_none() {
            self.resident_bytes.fetch_add(len, Relaxed);
        }
    }

    /// Whether an on-demand request is running.
    pub(crate) fn foreground_busy(&self) -> bool {
        self.fg_active.load(Relaxed) > 0
    }

    /// The chunks from either cache tier, if all are there. Blocking (disk).
    pub(crate) fn get_cached_blocking(&self, chunks: &[Chunk]) -> Option<Vec<Bytes>> {
        let mut out = Vec::with_capacity(chunks.len());
        for c in chunks {
            let b = self.cache.get(&c.digest)?;
            self.mark_resident(c);
            out.push(b);
        }
        Some(out)
    }

    /// The chunks, in order, each verified. Fetches what the cache lacks.
    pub(crate) async fn get_chunks(
        self: &Arc<Self>,
        chunks: &[Chunk],
        class: FetchClass,
    ) -> Vec<Result<Bytes, FetchError>> {
        let mut results: Vec<Option<Result<Bytes, FetchError>>> = vec![None; chunks.len()];
        let mut missing = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            match self.cache.get_memory(&c.digest) {
                Some(b) => {
                    self.mark_resident(c);
                    results[i] = Some(Ok(b));
                }
                None => missing.push(i),
            }
        }
        if !missing.is_empty() && self.cache.has_disk() {
            let cache = self.cache.clone();
            let digests: Vec<String> = missing.iter().map(|&i| chunks[i].digest.clone()).collect();
            let found = tokio::task::spawn_blocking(move || {
                digests
                    .iter()
                    .map(|d| cache.get_disk(d))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let mut still = Vec::new();
            for (k, i) in missing.into_iter().enumerate() {
                match found.get(k).cloned().flatten() {
                    Some(b) => {
                        self.mark_resident(&chunks[i]);
                        results[i] = Some(Ok(b));
                    }
                    None => still.push(i),
                }
            }
            missing = still;
        }
        if class == FetchClass::OnDemand {
            self.stats
                .cache_hits
                .fetch_add((chunks.len() - missing.len()) as u64, Relaxed);
            self.stats
                .cache_misses
                .fetch_add(missing.len() as u64, Relaxed);
        }
        if missing.is_empty() {
            return results.into_iter().map(|r| r.expect("filled")).collect();
        }

        // Join fetches in flight; own the rest.
        let mut waits = Vec::with_capacity(missing.len());
        let mut owned = Vec::new();
        {
            let mut flights = self.cache.flights.lock();
            for i in missing {
                let c = &chunks[i];
                if let Some(w) = flights.get(&c.digest) {
                    waits.push((i, w.clone()));
                    continue;
                }
                let (tx, rx) = oneshot::channel::<Result<Bytes, FetchError>>();
                let w: Waiter = rx
                    .map(|r| r.unwrap_or_else(|_| Err(SourceError::Abandoned.into())))
                    .boxed()
                    .shared();
                flights.insert(c.digest.clone(), w.clone());
                waits.push((i, w.clone()));
                owned.push(Owned {
                    chunk: c.clone(),
                    tx,
                    waiter: w,
                });
            }
        }

        if !owned.is_empty() {
            let (gap, max) = match class {
                FetchClass::OnDemand => (self.cfg.coalesce_gap_bytes, self.cfg.max_request_bytes),
                FetchClass::Background => (
                    self.cfg.coalesce_gap_bytes,
                    self.cfg.background_request_bytes,
                ),
                // The prioritized range is fetched in one request by design.
                FetchClass::Prefetch => (u64::MAX, u64::MAX),
            };
            let ranges: Vec<(u64, u64)> = owned
                .iter()
                .map(|o| (o.chunk.blob_offset, o.chunk.blob_end))
                .collect();
            let mut slots: Vec<Option<_>> = owned.into_iter().map(Some).collect();
            for (start, end, idx) in plan_spans(&ranges, gap, max) {
                let chunks = idx.into_iter().filter_map(|i| slots[i].take()).collect();
                let me = self.clone();
                if class == FetchClass::OnDemand {
                    // Counted before the task starts so background fetch yields at once.
                    self.fg_active.fetch_add(1, Relaxed);
                    note_foreground();
                }
                tokio::spawn(async move { me.run_span(Span { start, end, chunks }, class).await });
            }
        }

        for (i, w) in waits {
            let r = w.clone().await;
            if r.is_ok() {
                self.mark_resident(&chunks[i]);
            } else {
                // A fetch task that died without answering must not leave
                // its failure behind for later readers.
                forget_flight(&self.cache.flights, &chunks[i].digest, &w);
            }
            results[i] = Some(r);
        }
        results.into_iter().map(|r| r.expect("filled")).collect()
    }

    async fn wait_foreground_idle(&self) {
        while self.foreground_busy() {
            let notified = self.fg_idle.notified();
            // notify_waiters only wakes registered waiters: poll as a fallback.
            let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
        }
    }

    /// Wait until this layer has no on-demand request running and no layer
    /// has had one for `background_quiet`. Background fetch calls this
    /// before it claims a batch: a reader that wants a chunk of a claimed
    /// batch joins that fetch, so the wait must not come after the claim.
    pub(crate) async fn wait_quiet(&self) {
        let quiet = self.cfg.background_quiet.as_millis() as u64;
        loop {
            self.wait_foreground_idle().await;
            let idle = clock_ms().saturating_sub(LAST_FOREGROUND_MS.load(Relaxed));
            if idle >= quiet {
                return;
            }
            tokio::time::sleep(Duration::from_millis(quiet - idle)).await;
        }
    }

    async fn run_span(self: Arc<Self>, span: Span, class: FetchClass) {
        let _fg = (class == FetchClass::OnDemand).then(|| Foreground(&self));
        let res = self.request(span.start, span.end - span.start, class).await;
        let buf = match res {
            Ok(buf) => buf,
            Err(e) => {
                self.stats.request_errors.fetch_add(1, Relaxed);
                self.finish(
                    span.chunks
                        .into_iter()
                        .map(|o| (o, Err(e.clone())))
                        .collect(),
                )
                .await;
                return;
            }
        };
        self.stats.add_fetched(class, buf.len() as u64);
        let start = span.start;
        // Gunzip and hash on the blocking pool: a span can be megabytes.
        let decoded = tokio::task::spawn_blocking(move || {
            span.chunks
                .into_iter()
                .map(|o| {
                    let lo = (o.chunk.blob_offset - start) as usize;
                    let hi = (o.chunk.blob_end - start) as usize;
                    let r = chunk::decode(&buf[lo..hi], &o.chunk).map_err(FetchError::from);
                    (o, r)
                })
                .collect::<Vec<_>>()
        })
        .await
        .expect("decode task does not panic");
        self.finish(decoded).await;
    }

    async fn request(&self, off: u64, len: u64, class: FetchClass) -> Result<Bytes, FetchError> {
        let sem = if class == FetchClass::Background {
            self.wait_foreground_idle().await;
            &self.background
        } else {
            &self.foreground
        };
        let _permit = sem.acquire().await.expect("semaphore never closed");
        self.stats.requests.fetch_add(1, Relaxed);
        match tokio::time::timeout(self.cfg.timeout, self.source.read(off, len)).await {
            Err(_) => Err(FetchError::Timeout(self.cfg.timeout)),
            Ok(Err(e)) => Err(e.into()),
            Ok(Ok(b)) if b.len() as u64 != len => Err(SourceError::WrongLength {
                off,
                len,
                got: b.len() as u64,
            }
            .into()),
            Ok(Ok(b)) => Ok(b),
        }
    }

    /// Hand results to waiters, then store good chunks on disk, then let go
    /// of the in-flight entries (so a newcomer finds the chunk somewhere).
    async fn finish(&self, done: Vec<(Owned, Result<Bytes, FetchError>)>) {
        let mut to_disk = Vec::new();
        let mut entries = Vec::with_capacity(done.len());
        for (
            Owned {
                chunk: c,
                tx,
                waiter,
            },
            r,
        ) in done
        {
            match &r {
                Ok(b) => {
                    self.cache.insert_memory(&c.digest, b.clone());
                    self.mark_resident(&c);
                    to_disk.push((c.digest.clone(), b.clone()));
                }
                Err(e) if e.is_corrupt() => {
                    self.stats.corrupt_chunks.fetch_add(1, Relaxed);
                }
                Err(_) => {}
            }
            let _ = tx.send(r);
            entries.push((c.digest, waiter));
        }
        if !to_disk.is_empty() && self.cache.has_disk() {
            let cache = self.cache.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for (d, b) in to_disk {
                    cache.insert_disk(&d, &b);
                }
            })
            .await;
        }
        for (d, w) in entries {
            forget_flight(&self.cache.flights, &d, &w);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_coalesce_adjacent_and_respect_limits() {
        let r = [(0, 10), (10, 20), (25, 30), (100, 110), (110, 200)];
        let p = plan_spans(&r, 0, 1000);
        assert_eq!(
            p.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
            vec![(0, 20), (25, 30), (100, 200)]
        );
        let p = plan_spans(&r, 5, 1000);
        assert_eq!(p[0], (0, 30, vec![0, 1, 2]));
        // Size limit splits.
        let p = plan_spans(&r, 5, 25);
        assert_eq!(
            p.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>(),
            vec![(0, 20), (25, 30), (100, 110), (110, 200)]
        );
        // Unsorted input and two chunks in one member.
        let r = [(50, 60), (0, 50), (0, 50)];
        let p = plan_spans(&r, 0, 1000);
        assert_eq!(p, vec![(0, 60, vec![1, 2, 0])]);
    }
}
