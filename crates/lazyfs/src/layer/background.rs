//! What a layer fetches without a reader asking: the prioritized range
//! (`.prefetch.landmark`) in one request, started before the mount and never
//! waited for by it (reads of those files join that request), and the rest
//! of the layer in the background, chunk by chunk into the disk cache, only
//! while no reader of any layer of the scheduler needs the link.

use super::LazyLayer;
use crate::error::Error;
use crate::stats::FetchClass;
use crate::FetchError;
use estargz::index::Chunk;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What `prefetch` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefetchReport {
    pub chunks: usize,
    pub fetched_bytes: u64,
}

impl LazyLayer {
    /// The chunks of the prioritized range `[0, prefetch end)`; none without
    /// a prefetch landmark or with `noprefetch`.
    fn prefetch_chunks(&self) -> Vec<Chunk> {
        match self.prefetch_end.filter(|_| !self.cfg.noprefetch) {
            Some(end) => self.all_chunks(Some(end)),
            None => Vec::new(),
        }
    }

    /// Start fetching the prioritized range in one request and return at
    /// once: the chunks are in flight from now on, so a read of them joins
    /// that request instead of fetching them again.
    pub fn start_prefetch(self: &Arc<Self>) {
        let chunks = self.prefetch_chunks();
        if chunks.is_empty() {
            return;
        }
        let waits = self.fetcher.start(&chunks, FetchClass::Prefetch);
        if waits.is_empty() {
            return;
        }
        let (digest, stats) = (self.digest.clone(), self.stats.clone());
        let t0 = Instant::now();
        self.rt.spawn(async move {
            let n = waits.len();
            let mut failed = None;
            for w in waits {
                if let Err(e) = w.await {
                    failed = Some(e);
                }
            }
            let bytes = stats.prefetch_bytes.load(Relaxed);
            match failed {
                None => {
                    info!(layer = %digest, chunks = n, bytes, elapsed = ?t0.elapsed(), "prefetched")
                }
                // The layer works without it; reads fetch on demand.
                Some(e) => warn!(layer = %digest, error = %e, "prefetch incomplete"),
            }
        });
    }

    /// Fetch the prioritized range `[0, prefetch end)` in one request and
    /// wait for it, at most `prefetch_timeout_sec` (joins a fetch
    /// `start_prefetch` began). Does nothing without a prefetch landmark or
    /// with `noprefetch`.
    pub async fn prefetch(self: &Arc<Self>) -> Result<PrefetchReport, Error> {
        let chunks = self.prefetch_chunks();
        let before = self.stats.prefetch_bytes.load(Relaxed);
        let waits = self.fetcher.start(&chunks, FetchClass::Prefetch);
        let n = waits.len();
        let timeout = self.cfg.prefetch_timeout();
        let all = async {
            for w in waits {
                w.await?;
            }
            Ok::<(), FetchError>(())
        };
        let res = tokio::time::timeout(timeout, all)
            .await
            .unwrap_or(Err(FetchError::Timeout(timeout)));
        res.map_err(|e| {
            if e.is_corrupt() {
                warn!(layer = %self.digest, error = %e, "prefetched chunk failed verification");
                Error::Corrupt {
                    layer: self.digest.clone(),
                    path: "(prefetch)".into(),
                    source: e,
                }
            } else {
                Error::Unavailable {
                    layer: self.digest.clone(),
                    source: e,
                }
            }
        })?;
        Ok(PrefetchReport {
            chunks: n,
            fetched_bytes: self.stats.prefetch_bytes.load(Relaxed) - before,
        })
    }

    /// Start fetching the whole layer in the background (unless disabled),
    /// at lower priority than reads. Stops when the layer is dropped, when
    /// all is cached, or when the disk cache is too full to hold more.
    pub fn start_background_fetch(self: &Arc<Self>) {
        if self.cfg.no_background_fetch {
            return;
        }
        let mut slot = self.background.lock();
        if slot.is_some() {
            return;
        }
        // A fresh mount means a pull or a container start is under way:
        // background fetch waits for its quiet period from now.
        self.fetcher.scheduler().note_foreground();
        let weak = Arc::downgrade(self);
        *slot = Some(self.rt.spawn(background_fetch(weak)));
    }

    /// Whether background fetch is still running.
    pub fn background_running(&self) -> bool {
        self.background
            .lock()
            .as_ref()
            .is_some_and(|h| !h.is_finished())
    }
}

/// The chunks in batches of at most `max` compressed bytes (at least one
/// chunk each), in blob order.
fn batches(chunks: Vec<Chunk>, max: u64) -> Vec<Vec<Chunk>> {
    let mut out: Vec<Vec<Chunk>> = Vec::new();
    let mut cur: Vec<Chunk> = Vec::new();
    let mut cur_bytes = 0;
    for c in chunks {
        let len = c.blob_end - c.blob_offset;
        if !cur.is_empty() && cur_bytes + len > max {
            out.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur_bytes += len;
        cur.push(c);
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

async fn background_fetch(weak: Weak<LazyLayer>) {
    let (batches, concurrency, max_fill, sched) = match weak.upgrade() {
        Some(l) => (
            batches(l.all_chunks(None), l.cfg.background_request_bytes.max(1)),
            l.cfg.background_concurrency.max(1),
            l.cfg.background_max_cache_fill,
            l.fetcher.scheduler().clone(),
        ),
        None => return,
    };
    let mut tasks = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(500);
    let mut queue = batches.into_iter();
    let mut retry: Option<Vec<Chunk>> = None;
    loop {
        while tasks.len() < concurrency {
            let Some(batch) = retry.take().or_else(|| queue.next()) else {
                break;
            };
            // The slot first, the claim after: see `Scheduler::background_slot`.
            let slot = sched.background_slot().await;
            let Some(layer) = weak.upgrade() else { return };
            let cache = sched.cache();
            if cache.has_disk() && cache.disk_fill() >= max_fill {
                info!(layer = %layer.digest, "background fetch stops: disk cache is full");
                return;
            }
            let batch: Vec<Chunk> = batch
                .into_iter()
                .filter(|c| !layer.fetcher.is_resident(c))
                .collect();
            if batch.is_empty() {
                continue;
            }
            let fetcher = layer.fetcher.clone();
            drop(layer);
            tasks.spawn(async move {
                let res = fetcher.background(&batch).await;
                drop(slot);
                res.is_err().then_some(batch)
            });
        }
        let Some(done) = tasks.join_next().await else {
            break;
        };
        if let Ok(Some(batch)) = done {
            // Source unavailable: wait and try that batch again.
            retry = Some(batch);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        } else {
            backoff = Duration::from_millis(500);
        }
    }
    if let Some(l) = weak.upgrade() {
        info!(layer = %l.digest, fetched = l.fetched_bytes(), size = l.blob_size, "background fetch done");
        l.check_if_complete();
    }
}
