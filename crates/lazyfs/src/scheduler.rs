//! The one scheduler of fetches, made once per process (the daemon makes it;
//! every layer it opens shares it, like the [`ChunkCache`] it fills).
//!
//! What has to be decided across layers lives here and nowhere else:
//! - chunks in flight (singleflight): a chunk wanted while a request for it
//!   runs is awaited, not fetched again, by a reader of any layer;
//! - priority: foreground requests (a reader waits for them, readahead of a
//!   reader, the prioritized range) and background ones have their own
//!   concurrency limits; background fetch waits while a foreground request
//!   runs or ran in the last `background_quiet_ms`, so it only ever uses
//!   link capacity readers leave idle;
//! - the one fetch timeout: a request that has not answered after it fails
//!   (so no chunk stays "in flight" forever), and a reader waits at most
//!   that long from the start of its read, whatever it joined.
//!
//! It knows requests and chunks, not files: `fetch` plans a layer's requests
//! and decodes their answers.

use crate::cache::ChunkCache;
use crate::chunk::FetchError;
use crate::config::Config;
use crate::metrics::{FetchFigures, SchedulerStats};
use crate::source::{RangeSource, SourceError};
use crate::stats::FetchClass;
use bytes::Bytes;
use estargz::index::Chunk;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};

/// The answer to every reader waiting for one chunk.
pub(crate) type Waiter = Shared<BoxFuture<'static, Result<Bytes, FetchError>>>;

/// A chunk the caller has to fetch: it holds the in-flight entry that
/// others join, and must [`Scheduler::settle`] it.
pub(crate) struct Owned {
    pub(crate) chunk: Chunk,
    tx: oneshot::Sender<Result<Bytes, FetchError>>,
    waiter: Waiter,
}

/// Where one wanted chunk stands.
pub(crate) enum Claim {
    /// In the cache (memory or disk index): take it from there.
    Cached,
    /// Someone fetches it: wait for this.
    Join(Waiter),
    /// Nobody does: the caller fetches it; the waiter is the caller's answer.
    Own(Owned, Waiter),
}

/// Which tier a settled chunk goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tier {
    /// Memory and disk: a reader is about to read it.
    Hot,
    /// Disk only (memory when there is no disk tier): background fetch must
    /// not fill the memory tier with what nobody reads now.
    Cold,
    /// Memory only: chunks without a digest (see `settle`).
    Memory,
}

pub struct Scheduler {
    cache: Arc<ChunkCache>,
    flights: Mutex<HashMap<String, Waiter>>,
    foreground: Arc<Semaphore>,
    background: Arc<Semaphore>,
    fg_active: AtomicUsize,
    fg_idle: Notify,
    epoch: Instant,
    /// When a foreground request last ran, in ms since `epoch`.
    last_foreground_ms: AtomicU64,
    timeout: Duration,
    quiet: Duration,
    /// Bytes background fetch holds right now (answers being decoded and
    /// written), and the most it ever held.
    pub(crate) background_held: AtomicU64,
    pub(crate) background_held_peak: AtomicU64,
    /// Latencies and bounded failures, for operators.
    pub(crate) stats: SchedulerStats,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler")
            .field("in_flight", &self.flights.lock().len())
            .field("foreground_active", &self.fg_active.load(Relaxed))
            .finish_non_exhaustive()
    }
}

/// Counts a running foreground request; background fetch waits for none.
pub(crate) struct Foreground(Arc<Scheduler>);

impl Drop for Foreground {
    fn drop(&mut self) {
        self.0.note_foreground();
        if self.0.fg_active.fetch_sub(1, Relaxed) == 1 {
            self.0.fg_idle.notify_waiters();
        }
    }
}

impl Scheduler {
    /// The scheduler of every layer that shares `cache`, with the limits of
    /// `cfg` (`max_concurrency`, `background_concurrency`,
    /// `fetch_timeout_sec`, `background_quiet_ms`).
    pub fn new(cache: Arc<ChunkCache>, cfg: &Config) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            cache,
            flights: Mutex::new(HashMap::new()),
            foreground: Arc::new(Semaphore::new(cfg.max_concurrency.max(1))),
            background: Arc::new(Semaphore::new(cfg.background_concurrency.max(1))),
            fg_active: AtomicUsize::new(0),
            fg_idle: Notify::new(),
            epoch: Instant::now(),
            last_foreground_ms: AtomicU64::new(0),
            timeout: cfg.fetch_timeout(),
            quiet: Duration::from_millis(cfg.background_quiet_ms),
            background_held: AtomicU64::new(0),
            background_held_peak: AtomicU64::new(0),
            stats: SchedulerStats::default(),
        })
    }

    /// Request latencies, bounded failures and the cache's figures now.
    pub fn figures(&self) -> FetchFigures {
        self.stats.figures(self.cache.figures())
    }

    pub fn cache(&self) -> &Arc<ChunkCache> {
        &self.cache
    }

    /// The fetch timeout (`fetch_timeout_sec`).
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// For each chunk: cached, in flight (join), or now ours to fetch. The
    /// cache is asked under the in-flight lock: a fetch settles a chunk into
    /// the cache before it leaves the table, so nothing is fetched twice.
    /// `trust_cache: false` claims cached chunks too (their copy was bad).
    pub(crate) fn claim(&self, chunks: &[Chunk], trust_cache: bool) -> Vec<Claim> {
        let mut flights = self.flights.lock();
        chunks
            .iter()
            .map(|c| {
                if let Some(w) = flights.get(&c.digest) {
                    return Claim::Join(w.clone());
                }
                if trust_cache && self.cache.contains(&c.digest) {
                    return Claim::Cached;
                }
                let (tx, rx) = oneshot::channel::<Result<Bytes, FetchError>>();
                let waiter: Waiter = rx
                    .map(|r| r.unwrap_or_else(|_| Err(SourceError::Abandoned.into())))
                    .boxed()
                    .shared();
                flights.insert(c.digest.clone(), waiter.clone());
                let owned = Owned {
                    chunk: c.clone(),
                    tx,
                    waiter: waiter.clone(),
                };
                Claim::Own(owned, waiter)
            })
            .collect()
    }

    /// Answer the waiters of an owned chunk, keep a good one in `tier`, then
    /// drop the in-flight entry. Blocking (disk write).
    pub(crate) fn settle(&self, o: Owned, r: Result<Bytes, FetchError>, tier: Tier) {
        let Owned { chunk, tx, waiter } = o;
        // An unverified chunk's key names no content: the disk tier, which
        // hashes files against their names, could never serve it again.
        let tier = if chunk.verified { tier } else { Tier::Memory };
        if let Ok(b) = &r {
            let n = b.len() as u64;
            self.cache.stats.inserted_bytes.fetch_add(n, Relaxed);
        }
        match (&r, tier) {
            (Ok(b), Tier::Hot) => {
                self.cache.insert_memory(&chunk.digest, b.clone());
                let _ = tx.send(r.clone());
                self.cache.insert_disk(&chunk.digest, b);
            }
            (Ok(b), Tier::Memory) => {
                self.cache.insert_memory(&chunk.digest, b.clone());
                let _ = tx.send(r.clone());
            }
            (Ok(b), Tier::Cold) => {
                if self.cache.has_disk() {
                    self.cache.insert_disk(&chunk.digest, b);
                } else {
                    self.cache.insert_memory(&chunk.digest, b.clone());
                }
                let _ = tx.send(r.clone());
            }
            (Err(_), _) => {
                let _ = tx.send(r.clone());
            }
        }
        self.forget(&chunk.digest, &waiter);
    }

    /// Remove `digest`'s in-flight entry if it is still `w`: a fetch that
    /// failed or died must not leave its answer for later readers.
    pub(crate) fn forget(&self, digest: &str, w: &Waiter) {
        let mut f = self.flights.lock();
        if f.get(digest).is_some_and(|cur| cur.ptr_eq(w)) {
            f.remove(digest);
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Note foreground activity now; also used right after a mount, when a
    /// pull or a container start is under way.
    pub(crate) fn note_foreground(&self) {
        self.last_foreground_ms.fetch_max(self.now_ms(), Relaxed);
    }

    /// Count a foreground request from now until the guard is dropped; taken
    /// before its task starts so background fetch yields at once.
    pub(crate) fn foreground(self: &Arc<Self>) -> Foreground {
        self.fg_active.fetch_add(1, Relaxed);
        self.note_foreground();
        Foreground(self.clone())
    }

    pub(crate) fn foreground_busy(&self) -> bool {
        self.fg_active.load(Relaxed) > 0
    }

    /// A background slot: one of `background_concurrency` permits, once no
    /// foreground request runs and none ran for the quiet period. Taken
    /// before claiming chunks: a reader who wants a claimed chunk joins its
    /// fetch, so background must not claim and then wait.
    pub(crate) async fn background_slot(&self) -> OwnedSemaphorePermit {
        let permit = self
            .background
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed");
        let quiet = self.quiet.as_millis() as u64;
        loop {
            while self.foreground_busy() {
                let notified = self.fg_idle.notified();
                // notify_waiters only wakes registered waiters: poll as a fallback.
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            }
            let last = self.last_foreground_ms.load(Relaxed);
            let idle = if last == 0 {
                u64::MAX
            } else {
                self.now_ms().saturating_sub(last)
            };
            if idle >= quiet {
                return permit;
            }
            tokio::time::sleep(Duration::from_millis(quiet - idle)).await;
        }
    }

    /// One request for `ranges` of `source` (a multi-range request when
    /// there are several), within a permit of its class unless the caller
    /// holds a background slot (`slot_held`), and within the fetch timeout.
    pub(crate) async fn request(
        &self,
        source: &dyn RangeSource,
        ranges: &[(u64, u64)],
        class: FetchClass,
        slot_held: bool,
    ) -> Result<Vec<Bytes>, FetchError> {
        let sem = match class {
            FetchClass::Background => &self.background,
            FetchClass::OnDemand | FetchClass::Prefetch => &self.foreground,
        };
        let _permit = match slot_held {
            true => None,
            false => Some(sem.acquire().await.expect("semaphore never closed")),
        };
        let read = async {
            match ranges {
                [(off, len)] => source.read(*off, *len).await.map(|b| vec![b]),
                _ => source.read_many(ranges).await,
            }
        };
        let started = Instant::now();
        let res = tokio::time::timeout(self.timeout, read)
            .await
            .map_err(|_| FetchError::Timeout(self.timeout))
            .and_then(|r| r.map_err(FetchError::from));
        let hist = match class {
            FetchClass::Background => &self.stats.background_latency,
            FetchClass::OnDemand | FetchClass::Prefetch => &self.stats.foreground_latency,
        };
        hist.observe(started.elapsed());
        if let Err(e) = &res {
            self.stats.request_failures.fetch_add(1, Relaxed);
            if matches!(e, FetchError::Timeout(_)) {
                self.stats.request_timeouts.fetch_add(1, Relaxed);
            }
        }
        let bufs = res?;
        if bufs.len() != ranges.len() {
            return Err(SourceError::RangesMismatch.into());
        }
        for (b, &(off, len)) in bufs.iter().zip(ranges) {
            if b.len() as u64 != len {
                return Err(SourceError::WrongLength {
                    off,
                    len,
                    got: b.len() as u64,
                }
                .into());
            }
        }
        Ok(bufs)
    }

    /// Count a read that gave up at the fetch timeout (answered EIO).
    pub(crate) fn note_read_timeout(&self) {
        self.stats.read_timeouts.fetch_add(1, Relaxed);
    }

    /// Count `n` more bytes held by background fetch.
    pub(crate) fn background_hold(&self, n: u64) {
        let now = self.background_held.fetch_add(n, Relaxed) + n;
        self.background_held_peak.fetch_max(now, Relaxed);
    }

    /// Count `n` bytes background fetch let go of.
    pub(crate) fn background_release(&self, n: u64) {
        self.background_held.fetch_sub(n, Relaxed);
    }
}

/// What a layer is opened with: the scheduler the process shares among its
/// layers, or just a cache (a tool or test opening a layer on its own: the
/// layer gets a scheduler of its own over that cache, with the limits of
/// the layer's config).
#[derive(Clone)]
pub enum FetchVia {
    Scheduler(Arc<Scheduler>),
    Cache(Arc<ChunkCache>),
}

impl From<Arc<Scheduler>> for FetchVia {
    fn from(s: Arc<Scheduler>) -> Self {
        FetchVia::Scheduler(s)
    }
}

impl From<Arc<ChunkCache>> for FetchVia {
    fn from(c: Arc<ChunkCache>) -> Self {
        FetchVia::Cache(c)
    }
}

impl FetchVia {
    pub(crate) fn scheduler(self, cfg: &Config) -> Arc<Scheduler> {
        match self {
            FetchVia::Scheduler(s) => s,
            FetchVia::Cache(c) => Scheduler::new(c, cfg),
        }
    }
}
