//! One lazily fetched layer: its file tree, reads that fetch what they need,
//! prefetch of the prioritized files and background fetch of the rest.
//! Nothing here knows about FUSE.

use crate::cache::ChunkCache;
use crate::config::Config;
use crate::error::Error;
use crate::fetch::{FetchError, FetchSettings, Fetcher};
use crate::source::RangeSource;
use crate::stats::{FetchClass, Stats};
use crate::tree::{self, Attr, Tree};
use bytes::{Bytes, BytesMut};
use estargz::index::{Chunk, Node, NodeId};
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

pub struct LazyLayer {
    digest: String,
    tree: Tree,
    blob_size: u64,
    /// End of the prioritized range (`.prefetch.landmark`), if any.
    prefetch_end: Option<u64>,
    fetcher: Arc<Fetcher>,
    /// Blob bytes no read needs (TOC, footer, members holding only tar
    /// headers): counted as fetched so a complete layer shows 100 %.
    unneeded_bytes: u64,
    stats: Arc<Stats>,
    cfg: Config,
    rt: Handle,
    background: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Every chunk in blob order: (member offset, node, chunk index).
    blob_order: Vec<(u64, NodeId, u32)>,
    /// End of the last read's members in the blob, and how far ahead of it
    /// blob readahead has gone.
    last_blob_end: AtomicU64,
    blob_ahead_until: AtomicU64,
    /// Files whose last read failed only after waiting (a silent registry),
    /// and when. The kernel retries a failed page read at once (readahead,
    /// then the page alone); without this each retry waits the whole fetch
    /// timeout again and one read(2) takes several timeouts.
    slow_failures: Mutex<std::collections::HashMap<u64, Instant>>,
}

/// How long a slow failure of a file is answered at once: long enough for
/// the kernel's immediate retries, short enough that a reader trying again
/// after a recovery does not notice.
const SLOW_FAILURE_MEMORY: Duration = Duration::from_millis(250);

/// Per-open-file state: where a sequential reader is, how far ahead we fetched.
#[derive(Debug, Default)]
pub(crate) struct OpenFile {
    last_end: AtomicU64,
    ahead_until: AtomicU64,
}

/// What `prefetch` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefetchReport {
    pub chunks: usize,
    pub fetched_bytes: u64,
}

impl LazyLayer {
    /// A layer from an already validated index (`nodes` as in `estargz::index::Index`).
    pub(crate) fn from_nodes(
        source: Arc<dyn RangeSource>,
        layer_digest: &str,
        nodes: Vec<Node>,
        prefetch_end: Option<u64>,
        cfg: &Config,
        cache: Arc<ChunkCache>,
        rt: Handle,
    ) -> Arc<LazyLayer> {
        let stats = Arc::new(Stats::default());
        let blob_size = source.size();
        let fetcher = Arc::new(Fetcher::new(
            source,
            cache,
            stats.clone(),
            FetchSettings::from_config(cfg),
        ));
        let mut members: Vec<(u64, u64)> = nodes
            .iter()
            .flat_map(|n| n.chunks.iter())
            .map(|c| (c.blob_offset, c.blob_end))
            .collect();
        members.sort_unstable();
        members.dedup();
        let needed: u64 = members.iter().map(|(s, e)| e.saturating_sub(*s)).sum();
        let mut blob_order: Vec<(u64, NodeId, u32)> = nodes
            .iter()
            .enumerate()
            .flat_map(|(n, node)| {
                node.chunks
                    .iter()
                    .enumerate()
                    .map(move |(k, c)| (c.blob_offset, n as NodeId, k as u32))
            })
            .collect();
        blob_order.sort_unstable();
        Arc::new(LazyLayer {
            unneeded_bytes: blob_size.saturating_sub(needed),
            digest: layer_digest.to_string(),
            tree: Tree::new(nodes, layer_digest),
            blob_size,
            prefetch_end,
            fetcher,
            stats,
            cfg: cfg.clone(),
            rt,
            background: Mutex::new(None),
            blob_order,
            last_blob_end: AtomicU64::new(0),
            blob_ahead_until: AtomicU64::new(0),
            slow_failures: Mutex::new(Default::default()),
        })
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    pub fn blob_size(&self) -> u64 {
        self.blob_size
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub(crate) fn config(&self) -> &Config {
        &self.cfg
    }

    pub(crate) fn runtime(&self) -> &Handle {
        &self.rt
    }

    pub(crate) fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Compressed bytes of this layer in the cache, plus the bytes no read
    /// needs: equals the blob size once every chunk is cached.
    pub fn fetched_bytes(&self) -> u64 {
        (self.fetcher.resident_bytes() + self.unneeded_bytes).min(self.blob_size)
    }

    /// `{"digest","size","fetchedSize","fetchedPercent"}` as the Go
    /// snapshotter shows it in `/.stargz-snapshotter/<digest>.json`.
    pub(crate) fn state_json(&self) -> Vec<u8> {
        let fetched = self.fetched_bytes();
        let pct = if self.blob_size == 0 {
            100.0
        } else {
            fetched as f64 * 100.0 / self.blob_size as f64
        };
        let v = serde_json::json!({
            "digest": self.digest,
            "size": self.blob_size,
            "fetchedSize": fetched,
            "fetchedPercent": pct,
        });
        let mut out = serde_json::to_vec(&v).expect("plain JSON");
        out.push(b'\n');
        out
    }

    pub(crate) fn attr(&self, ino: u64) -> Option<Attr> {
        let state_size = match self.tree.inode(ino) {
            Some(crate::tree::Inode::StateFile) => self.state_json().len() as u64,
            _ => 0,
        };
        self.tree.attr(ino, state_size)
    }

    /// Bytes of a file from the cache only; `None` if some part is not
    /// cached. Blocking (disk reads), never waits for the network.
    pub(crate) fn read_cached(&self, ino: u64, off: u64, len: u64) -> Option<Result<Bytes, Error>> {
        let node = match self.tree.regular(ino) {
            Some(n) => n,
            None => return Some(Err(Error::NotAFile)),
        };
        let chunks = tree::chunks_for(node, off, len);
        if chunks.is_empty() {
            return Some(Ok(Bytes::new()));
        }
        let cache = self.fetcher.cache();
        if !chunks.iter().all(|c| cache.contains(&c.digest)) {
            return None;
        }
        let parts = self.fetcher.get_cached_blocking(chunks)?;
        self.stats
            .cache_hits
            .fetch_add(chunks.len() as u64, Relaxed);
        Some(Ok(assemble(chunks, parts, off, len.min(node.size - off))))
    }

    /// Whether every chunk of regular file `ino` is cached (memory or
    /// disk): cheap, reads nothing. For the FUSE front's passthrough.
    pub(crate) fn fully_cached(&self, ino: u64) -> bool {
        let Some(node) = self.tree.regular(ino) else {
            return false;
        };
        let cache = self.fetcher.cache();
        node.chunks.iter().all(|c| cache.contains(&c.digest))
    }

    /// Bytes of a file, fetching what is not cached. Fails (never hangs)
    /// after the fetch timeout.
    pub(crate) async fn read(
        self: &Arc<Self>,
        ino: u64,
        off: u64,
        len: u64,
    ) -> Result<Bytes, Error> {
        let node = self.tree.regular(ino).ok_or(Error::NotAFile)?;
        let chunks = tree::chunks_for(node, off, len);
        if chunks.is_empty() {
            return Ok(Bytes::new());
        }
        let timeout = self.cfg.fetch_timeout();
        let memory = SLOW_FAILURE_MEMORY.min(timeout / 2);
        let recent = self.slow_failures.lock().get(&ino).copied();
        if recent.is_some_and(|t| t.elapsed() < memory) {
            return Err(self.read_error(ino, FetchError::Timeout(timeout)));
        }
        let started = Instant::now();
        let got = tokio::time::timeout(
            timeout,
            self.fetcher.get_chunks(chunks, FetchClass::OnDemand),
        )
        .await
        .map_err(|_| FetchError::Timeout(timeout))
        .and_then(|got| got.into_iter().collect::<Result<Vec<_>, _>>());
        match got {
            Ok(parts) => {
                if recent.is_some() {
                    self.slow_failures.lock().remove(&ino);
                }
                Ok(assemble(chunks, parts, off, len.min(node.size - off)))
            }
            Err(e) => {
                if !e.is_corrupt() && started.elapsed() >= timeout / 2 {
                    self.slow_failures.lock().insert(ino, Instant::now());
                }
                Err(self.read_error(ino, e))
            }
        }
    }

    fn read_error(&self, ino: u64, e: FetchError) -> Error {
        self.stats.read_errors.fetch_add(1, Relaxed);
        let path = self.tree.path_of((ino - 1) as NodeId);
        if e.is_corrupt() {
            warn!(layer = %self.digest, path = %path, error = %e, "chunk failed verification; not served");
            Error::Corrupt {
                layer: self.digest.clone(),
                path,
                source: e,
            }
        } else {
            debug!(layer = %self.digest, path = %path, error = %e, "read failed");
            Error::Unavailable {
                layer: self.digest.clone(),
                source: e,
            }
        }
    }

    /// Note a read of `off..off+len` through `file` and fetch ahead of it:
    /// the next `readahead_bytes` of the file for a sequential reader, and
    /// the next `blob_readahead_bytes` of the blob when reads walk the blob
    /// in order across files. Never waits.
    pub(crate) fn readahead(self: &Arc<Self>, ino: u64, file: &OpenFile, off: u64, len: u64) {
        let Some(node) = self.tree.regular(ino) else {
            return;
        };
        let mut wanted: Vec<Chunk> = Vec::new();
        self.file_readahead(node, file, off, len, &mut wanted);
        if let (Some(first), Some(last)) = (
            tree::chunks_for(node, off, len).first(),
            tree::chunks_for(node, off, len).last(),
        ) {
            self.blob_readahead(first.blob_offset, last.blob_end, &mut wanted);
        }
        wanted.retain(|c| !self.fetcher.is_resident(c));
        if wanted.is_empty() {
            return;
        }
        let fetcher = self.fetcher.clone();
        self.rt.spawn(async move {
            fetcher.get_chunks(&wanted, FetchClass::OnDemand).await;
        });
    }

    fn file_readahead(
        &self,
        node: &Node,
        file: &OpenFile,
        off: u64,
        len: u64,
        out: &mut Vec<Chunk>,
    ) {
        let end = off.saturating_add(len);
        let last = file.last_end.swap(end, Relaxed);
        let window = self.cfg.readahead_bytes;
        if window == 0 || (off != last && off != 0) {
            return;
        }
        // Fetch again only when the reader is halfway into the last window.
        let until = file.ahead_until.load(Relaxed);
        if end + window / 2 < until {
            return;
        }
        let from = end.max(until);
        let target = end.saturating_add(window).min(node.size);
        if from >= target {
            return;
        }
        file.ahead_until.store(target, Relaxed);
        out.extend(tree::chunks_for(node, from, target - from).iter().cloned());
    }

    /// Reads whose members follow the previous read's in the blob (within
    /// the coalescing gap) are a reader walking the blob: fetch ahead.
    fn blob_readahead(&self, start: u64, end: u64, out: &mut Vec<Chunk>) {
        let window = self.cfg.blob_readahead_bytes;
        let prev = self.last_blob_end.swap(end, Relaxed);
        let forward = end > prev && start <= prev.saturating_add(self.cfg.coalesce_gap_bytes);
        if window == 0 || !forward {
            return;
        }
        let until = self.blob_ahead_until.load(Relaxed);
        if end + window / 2 < until {
            return;
        }
        let from = end.max(until);
        let target = end.saturating_add(window);
        self.blob_ahead_until.store(target, Relaxed);
        let nodes = self.tree.nodes();
        let i = self.blob_order.partition_point(|e| e.0 < from);
        out.extend(
            self.blob_order[i..]
                .iter()
                .take_while(|e| e.0 < target)
                .map(|&(_, n, k)| nodes[n as usize].chunks[k as usize].clone()),
        );
    }

    /// Distinct chunks of the layer in blob order (one per gzip member and
    /// inner offset), optionally only those ending before `end`.
    fn all_chunks(&self, end: Option<u64>) -> Vec<Chunk> {
        let mut seen = HashSet::new();
        let mut out: Vec<Chunk> = self
            .tree
            .nodes()
            .iter()
            .flat_map(|n| n.chunks.iter())
            .filter(|c| end.is_none_or(|e| c.blob_end <= e))
            .filter(|c| seen.insert((c.blob_offset, c.inner_offset)))
            .cloned()
            .collect();
        out.sort_by_key(|c| (c.blob_offset, c.inner_offset));
        out
    }

    /// Fetch the prioritized range `[0, prefetch end)` in one request, bounded
    /// by `prefetch_timeout_sec`. Does nothing without a prefetch landmark or
    /// with `noprefetch`.
    pub async fn prefetch(self: &Arc<Self>) -> Result<PrefetchReport, Error> {
        let Some(end) = self.prefetch_end.filter(|_| !self.cfg.noprefetch) else {
            return Ok(PrefetchReport::default());
        };
        let cache = self.fetcher.cache().clone();
        let chunks: Vec<Chunk> = self
            .all_chunks(Some(end))
            .into_iter()
            .filter(|c| {
                let have = cache.contains(&c.digest);
                if have {
                    self.fetcher.mark_resident(c);
                }
                !have
            })
            .collect();
        let before = self.stats.prefetch_bytes.load(Relaxed);
        let t0 = Instant::now();
        let fut = self.fetcher.get_chunks(&chunks, FetchClass::Prefetch);
        let got = tokio::time::timeout(self.cfg.prefetch_timeout(), fut)
            .await
            .map_err(|_| Error::Unavailable {
                layer: self.digest.clone(),
                source: FetchError::Timeout(self.cfg.prefetch_timeout()),
            })?;
        for r in got {
            r.map_err(|e| {
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
        }
        let report = PrefetchReport {
            chunks: chunks.len(),
            fetched_bytes: self.stats.prefetch_bytes.load(Relaxed) - before,
        };
        info!(layer = %self.digest, chunks = report.chunks, bytes = report.fetched_bytes,
              elapsed = ?t0.elapsed(), "prefetched");
        Ok(report)
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
        crate::fetch::note_foreground();
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

impl Drop for LazyLayer {
    fn drop(&mut self) {
        if let Some(h) = self.background.lock().take() {
            h.abort();
        }
    }
}

async fn background_fetch(weak: Weak<LazyLayer>) {
    let (chunks, batch_bytes, concurrency, max_fill) = match weak.upgrade() {
        Some(l) => (
            l.all_chunks(None),
            l.cfg.background_request_bytes.max(1),
            l.cfg.background_concurrency.max(1),
            l.cfg.background_max_cache_fill,
        ),
        None => return,
    };
    let mut batches: Vec<Vec<Chunk>> = Vec::new();
    let mut cur: Vec<Chunk> = Vec::new();
    let mut cur_bytes = 0;
    for c in chunks {
        let len = c.blob_end - c.blob_offset;
        if !cur.is_empty() && cur_bytes + len > batch_bytes {
            batches.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur_bytes += len;
        cur.push(c);
    }
    if !cur.is_empty() {
        batches.push(cur);
    }
    let mut tasks = tokio::task::JoinSet::new();
    let mut backoff = Duration::from_millis(500);
    let mut queue = batches.into_iter();
    let mut retry: Option<Vec<Chunk>> = None;
    loop {
        while tasks.len() < concurrency {
            let Some(batch) = retry.take().or_else(|| queue.next()) else {
                break;
            };
            let Some(fetcher) = weak.upgrade().map(|l| l.fetcher.clone()) else {
                return;
            };
            fetcher.wait_quiet().await;
            drop(fetcher);
            let Some(layer) = weak.upgrade() else { return };
            let cache = layer.fetcher.cache();
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
                let res = fetcher.get_chunks(&batch, FetchClass::Background).await;
                let failed = res
                    .iter()
                    .any(|r| r.as_ref().is_err_and(|e| !e.is_corrupt()));
                failed.then_some(batch)
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
    }
}

/// The bytes `off..off+len` of a file out of its chunks.
fn assemble(chunks: &[Chunk], parts: Vec<Bytes>, off: u64, len: u64) -> Bytes {
    let end = off + len;
    if chunks.len() == 1 {
        let c = &chunks[0];
        let lo = (off.max(c.file_offset) - c.file_offset) as usize;
        let hi = (end.min(c.file_offset + c.size) - c.file_offset) as usize;
        return parts[0].slice(lo..hi.min(parts[0].len()));
    }
    let mut out = BytesMut::with_capacity(len as usize);
    for (c, p) in chunks.iter().zip(parts) {
        let lo = (off.max(c.file_offset) - c.file_offset) as usize;
        let hi = (end.min(c.file_offset + c.size) - c.file_offset) as usize;
        out.extend_from_slice(&p[lo..hi.min(p.len())]);
    }
    out.freeze()
}
