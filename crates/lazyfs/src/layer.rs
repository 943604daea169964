//! One lazily fetched layer: its file tree and reads that fetch what they
//! need, with adaptive readahead (prefetch of the prioritized files and
//! background fetch of the rest are in `layer::background`). Nothing here
//! knows about FUSE.
//!
//! A read looks up its chunks once ([`LazyLayer::read_now`]), probes the
//! cache once, and either answers at once or hands the same chunk list to
//! [`LazyLayer::read_pending`], which waits for the network.

mod background;
mod blobcheck;
mod observe;

pub use background::PrefetchReport;
pub use blobcheck::BlobCheck;
pub use observe::OpenObserver;

use crate::config::Config;
use crate::error::Error;
use crate::fetch::{FetchSettings, Fetcher};
use crate::readahead::{Window, FILE_SLACK};
use crate::scheduler::FetchVia;
use crate::source::RangeSource;
use crate::stats::{FetchClass, Stats};
use crate::tree::{self, Attr, Tree};
use crate::FetchError;
use bytes::{Bytes, BytesMut};
use estargz::index::{Chunk, Node, NodeId};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tracing::{debug, warn};

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
    /// Readers walking the blob across files (say, `cat dir/*` over files
    /// stored one after another).
    blob_walk: Mutex<BlobWalk>,
    /// Files whose last read failed only after waiting (a silent registry),
    /// and when. The kernel retries a failed page read at once (readahead,
    /// then the page alone); without this each retry waits the whole fetch
    /// timeout again and one read(2) takes several timeouts.
    slow_failures: Mutex<HashMap<u64, Instant>>,
    /// Not verified chunk by chunk against a vouched-for TOC (`blobcheck`).
    unverified: AtomicBool,
    /// `blobcheck::{NOT_CHECKED, CHECKING, PASSED, FAILED}`.
    check_state: AtomicU8,
    /// Why the check failed, for every later read's error.
    check_failure: Mutex<Option<String>>,
    /// Told of every open of a regular file (profiles of real runs).
    observer: std::sync::OnceLock<Arc<dyn OpenObserver>>,
}

#[derive(Debug, Default)]
struct BlobWalk {
    window: Window,
    last_ino: u64,
}

/// How long a slow failure of a file is answered at once: long enough for
/// the kernel's immediate retries, short enough that a reader trying again
/// after a recovery does not notice.
const SLOW_FAILURE_MEMORY: Duration = Duration::from_millis(250);

/// Per-open-file state: the readahead window of its reader.
#[derive(Debug, Default)]
pub(crate) struct OpenFile {
    window: Mutex<Window>,
}

/// A read, answered or waiting for the network.
pub(crate) enum Read {
    Ready(Result<Bytes, Error>),
    Pending(PendingRead),
}

/// A read that needs the network: its chunks, what the cache had of them,
/// and the readahead chunks to fetch with them.
pub(crate) struct PendingRead {
    ino: u64,
    off: u64,
    len: u64,
    chunks: Vec<Chunk>,
    have: Vec<Option<Bytes>>,
    ahead: Vec<Chunk>,
}

impl LazyLayer {
    /// A layer from an already validated index (`nodes` as in `estargz::index::Index`).
    pub(crate) fn from_nodes(
        source: Arc<dyn RangeSource>,
        layer_digest: &str,
        nodes: Vec<Node>,
        prefetch_end: Option<u64>,
        cfg: &Config,
        via: impl Into<FetchVia>,
        rt: Handle,
    ) -> Arc<LazyLayer> {
        let stats = Arc::new(Stats::default());
        let blob_size = source.size();
        let fetcher = Arc::new(Fetcher::new(
            source,
            via.into().scheduler(cfg),
            stats.clone(),
            FetchSettings::from_config(cfg),
            rt.clone(),
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
            blob_walk: Mutex::new(BlobWalk::default()),
            slow_failures: Mutex::new(HashMap::new()),
            unverified: AtomicBool::new(false),
            check_state: AtomicU8::new(blobcheck::NOT_CHECKED),
            check_failure: Mutex::new(None),
            observer: std::sync::OnceLock::new(),
        })
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Which format the layer is served from (`estargz`, `gzindex`).
    pub fn format(&self) -> &'static str {
        self.fetcher.format()
    }

    pub(crate) fn fetcher(&self) -> &Arc<Fetcher> {
        &self.fetcher
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
            "format": self.format(),
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

    /// A read of `off..off+len` of a file through `file` (its readahead
    /// state; `None`: no readahead within the file): the chunks are looked
    /// up and the cache probed once, readahead decided and started. Answers
    /// at once if the cache has everything, else hands over the same chunks
    /// to [`LazyLayer::read_pending`]. Blocking (disk reads), never waits
    /// for the network.
    pub(crate) fn read_now(
        self: &Arc<Self>,
        ino: u64,
        file: Option<&OpenFile>,
        off: u64,
        len: u64,
    ) -> Read {
        let Some(node) = self.tree.regular(ino) else {
            return Read::Ready(Err(Error::NotAFile));
        };
        if let Some(e) = self.stopped() {
            return Read::Ready(Err(e));
        }
        let chunks = tree::chunks_for(node, off, len);
        if chunks.is_empty() {
            return Read::Ready(Ok(Bytes::new()));
        }
        let len = len.min(node.size - off);
        let ahead = self.readahead(ino, node, file, off, len, chunks);
        let have = self.fetcher.cached(chunks);
        let hits = have.iter().filter(|b| b.is_some()).count() as u64;
        self.stats.cache_hits.fetch_add(hits, Relaxed);
        self.stats
            .cache_misses
            .fetch_add(chunks.len() as u64 - hits, Relaxed);
        if hits == chunks.len() as u64 {
            if !ahead.is_empty() {
                self.fetcher.start(&ahead, FetchClass::OnDemand);
            }
            let parts = have.into_iter().flatten().collect();
            return Read::Ready(Ok(assemble(chunks, parts, off, len)));
        }
        let mut ahead = ahead;
        self.neighbours(chunks, &mut ahead);
        Read::Pending(PendingRead {
            ino,
            off,
            len,
            chunks: chunks.to_vec(),
            have,
            ahead,
        })
    }

    /// Whether every chunk of regular file `ino` is cached (memory or
    /// disk): cheap, reads nothing. For the FUSE front's passthrough.
    pub(crate) fn fully_cached(&self, ino: u64) -> bool {
        let Some(node) = self.tree.regular(ino) else {
            return false;
        };
        // A copy the kernel reads itself would bypass a failed blob check.
        if self.is_unverified() {
            return false;
        }
        let cache = self.fetcher.scheduler().cache();
        node.chunks.iter().all(|c| cache.contains(&c.digest))
    }

    /// Finish a read that needs the network. Fails (never hangs) after the
    /// fetch timeout.
    pub(crate) async fn read_pending(self: &Arc<Self>, p: PendingRead) -> Result<Bytes, Error> {
        let timeout = self.fetcher.scheduler().timeout();
        let memory = SLOW_FAILURE_MEMORY.min(timeout / 2);
        let recent = self.slow_failures.lock().get(&p.ino).copied();
        if recent.is_some_and(|t| t.elapsed() < memory) {
            self.fetcher.scheduler().note_read_timeout();
            return Err(self.read_error(p.ino, FetchError::Timeout(timeout)));
        }
        let started = Instant::now();
        let got = self
            .fetcher
            .get(&p.chunks, p.have, &p.ahead, started + timeout)
            .await;
        match got {
            Ok(parts) => {
                if recent.is_some() {
                    self.slow_failures.lock().remove(&p.ino);
                }
                self.check_if_complete();
                // The check may have failed while this read waited.
                if let Some(e) = self.stopped() {
                    return Err(e);
                }
                Ok(assemble(&p.chunks, parts, p.off, p.len))
            }
            Err(e) => {
                if matches!(e, FetchError::Timeout(_)) {
                    self.fetcher.scheduler().note_read_timeout();
                }
                if !e.is_corrupt() && started.elapsed() >= timeout / 2 {
                    self.slow_failures.lock().insert(p.ino, Instant::now());
                }
                Err(self.read_error(p.ino, e))
            }
        }
    }

    /// Bytes of a file, fetching what is not cached, without readahead
    /// within the file (tests; FUSE uses `read_now` and `read_pending`).
    #[cfg(test)]
    pub(crate) async fn read(
        self: &Arc<Self>,
        ino: u64,
        off: u64,
        len: u64,
    ) -> Result<Bytes, Error> {
        match self.read_now(ino, None, off, len) {
            Read::Ready(r) => r,
            Read::Pending(p) => self.read_pending(p).await,
        }
    }

    /// Bytes of a file from the cache only; `None` if some part is not
    /// cached. Blocking (disk reads), never waits for the network (tests,
    /// and whole-file copies for passthrough).
    pub(crate) fn read_cached(&self, ino: u64, off: u64, len: u64) -> Option<Result<Bytes, Error>> {
        let Some(node) = self.tree.regular(ino) else {
            return Some(Err(Error::NotAFile));
        };
        let chunks = tree::chunks_for(node, off, len);
        let parts: Option<Vec<Bytes>> = self.fetcher.cached(chunks).into_iter().collect();
        Some(Ok(assemble(
            chunks,
            parts?,
            off,
            len.min(node.size.saturating_sub(off)),
        )))
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

    /// The chunks to fetch ahead of a read of `chunks` (`off..off+len` of
    /// `node`): the file's window (`readahead_bytes` at most) and the blob
    /// walk's (`blob_readahead_bytes` at most), both adaptive; none the read
    /// itself needs or the layer already has.
    fn readahead(
        &self,
        ino: u64,
        node: &Node,
        file: Option<&OpenFile>,
        off: u64,
        len: u64,
        chunks: &[Chunk],
    ) -> Vec<Chunk> {
        let mut out: Vec<Chunk> = Vec::new();
        let end = off + len;
        if let Some(f) = file {
            let ahead =
                f.window
                    .lock()
                    .advance(off, end, self.cfg.readahead_bytes, FILE_SLACK, true);
            if let Some((from, to)) = ahead {
                out.extend(tree::chunks_for(node, from, to - from).iter().cloned());
            }
        }
        if let (Some(first), Some(last)) = (chunks.first(), chunks.last()) {
            self.blob_readahead(ino, first.blob_offset, last.blob_end, &mut out);
        }
        // A span of an indexed layer is fetched and inflated whole for any
        // piece of it: its readahead pieces take their span-mates too.
        let ahead: Vec<Chunk> = if self.fetcher.has_decoder() {
            out.clone()
        } else {
            Vec::new()
        };
        self.member_siblings(chunks.iter().chain(&ahead), &mut out);
        let mut seen: HashSet<(u64, u64)> = chunks
            .iter()
            .map(|c| (c.blob_offset, c.inner_offset))
            .collect();
        out.retain(|c| {
            seen.insert((c.blob_offset, c.inner_offset)) && !self.fetcher.is_resident(c)
        });
        out
    }

    /// Add to `ahead` the members lying entirely within `neighbour_bytes`
    /// before and after those of `chunks` (a read that goes to the network
    /// anyway), unless cached or already there: they ride in the same
    /// request (see `Config::neighbour_bytes`).
    fn neighbours(&self, chunks: &[Chunk], ahead: &mut Vec<Chunk>) {
        let n = self.cfg.neighbour_bytes;
        let (Some(first), Some(last)) = (chunks.first(), chunks.last()) else {
            return;
        };
        if n == 0 {
            return;
        }
        let lo = first.blob_offset.saturating_sub(n);
        let hi = last.blob_end.saturating_add(n);
        let nodes = self.tree.nodes();
        let i = self.blob_order.partition_point(|e| e.0 < lo);
        let mut seen: HashSet<(u64, u64)> = chunks
            .iter()
            .chain(ahead.iter())
            .map(|c| (c.blob_offset, c.inner_offset))
            .collect();
        for &(_, node, k) in self.blob_order[i..].iter().take_while(|e| e.0 < hi) {
            let c = &nodes[node as usize].chunks[k as usize];
            if c.blob_end <= hi
                && seen.insert((c.blob_offset, c.inner_offset))
                && !self.fetcher.is_resident(c)
            {
                ahead.push(c.clone());
            }
        }
    }

    /// The other chunks of the members `chunks` are in (small files packed
    /// together by a min-chunk-size writer, or pieces of one span of an
    /// indexed gzip layer): the same bytes decode to them at no extra cost,
    /// so the member is fetched once, not once per file.
    fn member_siblings<'a>(&self, chunks: impl Iterator<Item = &'a Chunk>, out: &mut Vec<Chunk>) {
        let nodes = self.tree.nodes();
        for c in chunks.filter(|c| c.blob_end - c.blob_offset > 0) {
            let i = self.blob_order.partition_point(|e| e.0 < c.blob_offset);
            out.extend(
                self.blob_order[i..]
                    .iter()
                    .take_while(|e| e.0 == c.blob_offset)
                    .map(|&(_, n, k)| &nodes[n as usize].chunks[k as usize])
                    .filter(|s| s.inner_offset != c.inner_offset)
                    .cloned(),
            );
        }
    }

    /// Reads whose members follow the previous file's in the blob (within
    /// the coalescing gap) are a reader walking the blob: fetch ahead in it.
    /// Reads within one file leave the decision to the file's window.
    fn blob_readahead(&self, ino: u64, start: u64, end: u64, out: &mut Vec<Chunk>) {
        let mut walk = self.blob_walk.lock();
        if walk.last_ino == ino {
            walk.window.note(end);
            return;
        }
        walk.last_ino = ino;
        let ahead = walk.window.advance(
            start,
            end,
            self.cfg.blob_readahead_bytes,
            self.cfg.coalesce_gap_bytes,
            false,
        );
        drop(walk);
        let Some((from, mut to)) = ahead else {
            return;
        };
        // An optimized layer stores its prioritized files in the order they
        // are read, the rest in no such order: a walk through the
        // prioritized part says nothing about what lies past the landmark.
        if let Some(end) = self.prefetch_end.filter(|&e| start < e) {
            to = to.min(end);
        }
        let nodes = self.tree.nodes();
        let i = self.blob_order.partition_point(|e| e.0 < from);
        out.extend(
            self.blob_order[i..]
                .iter()
                .take_while(|e| e.0 < to)
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
}

impl Drop for LazyLayer {
    fn drop(&mut self) {
        if let Some(h) = self.background.lock().take() {
            h.abort();
        }
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
