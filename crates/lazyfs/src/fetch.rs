//! Getting the verified chunks of one layer: from the cache, or through the
//! shared [`Scheduler`] from the layer's source.
//!
//! - Chunks wanted together whose gzip members are adjacent (or nearly) go
//!   into one ranged request, up to a size limit per class of fetch; the
//!   scattered spans of one read go into one multi-range request where the
//!   source can ask for several ranges at once.
//! - Requests run on spawned tasks, so a reader that gives up does not waste
//!   the bytes. Nothing remembers a failure: the next read tries again.
//! - An answer is decoded and settled chunk by chunk: a reader wakes as soon
//!   as its chunk is verified, and background fetch holds one answer (at most
//!   `background_request_bytes`) and one chunk at a time, never a layer.

use crate::chunk;
// Defined beside the chunk decoding; named here too, where callers meet it.
pub(crate) use crate::chunk::FetchError;
use crate::config::Config;
use crate::decoder::{decode_group, MemberDecoder};
use crate::scheduler::{Claim, Owned, Scheduler, Tier, Waiter};
use crate::source::RangeSource;
use crate::stats::{FetchClass, Stats};
use bytes::Bytes;
use estargz::index::Chunk;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Instant;
use tokio::runtime::Handle;

/// Request sizes of one layer.
#[derive(Debug, Clone)]
pub(crate) struct FetchSettings {
    pub(crate) max_request_bytes: u64,
    pub(crate) background_request_bytes: u64,
    pub(crate) coalesce_gap_bytes: u64,
}

impl FetchSettings {
    pub(crate) fn from_config(c: &Config) -> Self {
        FetchSettings {
            max_request_bytes: c.max_request_bytes.max(1),
            background_request_bytes: c.background_request_bytes.max(1),
            coalesce_gap_bytes: c.coalesce_gap_bytes,
        }
    }
}

pub(crate) struct Fetcher {
    source: Arc<dyn RangeSource>,
    sched: Arc<Scheduler>,
    stats: Arc<Stats>,
    cfg: FetchSettings,
    rt: Handle,
    /// Gzip members of this layer known to be in the cache: offset -> length.
    resident: Mutex<HashMap<u64, u64>>,
    resident_bytes: AtomicU64,
    /// sha256 of each unverified chunk as fetched, by (member offset, inner
    /// offset): what the layer-level check compares with the real blob.
    observed: Mutex<HashMap<(u64, u64), [u8; 32]>>,
    /// Set for layers whose chunks are not gzip members (`decoder`).
    decoder: OnceLock<std::sync::Arc<dyn MemberDecoder>>,
}

/// One planned request range and the chunks it covers.
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

impl Fetcher {
    pub(crate) fn new(
        source: Arc<dyn RangeSource>,
        sched: Arc<Scheduler>,
        stats: Arc<Stats>,
        cfg: FetchSettings,
        rt: Handle,
    ) -> Fetcher {
        Fetcher {
            source,
            sched,
            stats,
            cfg,
            rt,
            resident: Mutex::new(HashMap::new()),
            resident_bytes: AtomicU64::new(0),
            observed: Mutex::new(HashMap::new()),
            decoder: OnceLock::new(),
        }
    }

    pub(crate) fn source(&self) -> &Arc<dyn RangeSource> {
        &self.source
    }

    /// The hash of unverified chunk `c` as this layer fetched it.
    pub(crate) fn observed(&self, c: &Chunk) -> Option<[u8; 32]> {
        self.observed
            .lock()
            .get(&(c.blob_offset, c.inner_offset))
            .copied()
    }

    /// Decode this layer's chunks with `d` (before the first fetch).
    pub(crate) fn set_decoder(&self, d: Arc<dyn MemberDecoder>) {
        let _ = self.decoder.set(d);
    }

    /// Whether chunks go through a decoder (spans, not gzip members).
    pub(crate) fn has_decoder(&self) -> bool {
        self.decoder.get().is_some()
    }

    /// The layer's format: `estargz`, or the decoder's.
    pub(crate) fn format(&self) -> &'static str {
        self.decoder.get().map_or("estargz", |d| d.format())
    }

    pub(crate) fn scheduler(&self) -> &Arc<Scheduler> {
        &self.sched
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

    /// Each chunk from either cache tier, `None` where it is not there: the
    /// one cache probe of a read. Blocking (disk read and hash).
    pub(crate) fn cached(&self, chunks: &[Chunk]) -> Vec<Option<Bytes>> {
        let cache = self.sched.cache();
        chunks
            .iter()
            .map(|c| {
                let b = cache.get(&c.digest);
                if b.is_some() {
                    self.mark_resident(c);
                }
                b
            })
            .collect()
    }

    /// Start fetching those of `chunks` that are neither cached nor in
    /// flight; never waits. Returns the waiters of every chunk not cached.
    pub(crate) fn start(self: &Arc<Self>, chunks: &[Chunk], class: FetchClass) -> Vec<Waiter> {
        let mut waits = Vec::new();
        let mut owned = Vec::new();
        for (c, claim) in chunks.iter().zip(self.sched.claim(chunks, true)) {
            match claim {
                Claim::Cached => self.mark_resident(c),
                Claim::Join(w) => waits.push(w),
                Claim::Own(o, w) => {
                    owned.push(o);
                    waits.push(w);
                }
            }
        }
        self.spawn(owned, class);
        waits
    }

    /// The read's `chunks` in order, given the parts the cache probe found
    /// (`have`); fetches the rest, together with `ahead` (readahead, not
    /// waited for). Waits at most until `deadline`.
    pub(crate) async fn get(
        self: &Arc<Self>,
        chunks: &[Chunk],
        mut have: Vec<Option<Bytes>>,
        ahead: &[Chunk],
        deadline: Instant,
    ) -> Result<Vec<Bytes>, FetchError> {
        let missing: Vec<usize> = (0..chunks.len()).filter(|&i| have[i].is_none()).collect();
        let mut wanted: Vec<Chunk> = missing.iter().map(|&i| chunks[i].clone()).collect();
        wanted.extend(ahead.iter().cloned());
        let claims = self.sched.claim(&wanted, true);
        let mut owned = Vec::new();
        let mut waits: Vec<(usize, Waiter)> = Vec::new();
        let mut from_cache = Vec::new();
        for (k, claim) in claims.into_iter().enumerate() {
            let read_idx = missing.get(k).copied();
            match (claim, read_idx) {
                (Claim::Own(o, w), idx) => {
                    owned.push(o);
                    if let Some(i) = idx {
                        waits.push((i, w));
                    }
                }
                (Claim::Join(w), Some(i)) => waits.push((i, w)),
                (Claim::Cached, Some(i)) => from_cache.push(i),
                (Claim::Join(_) | Claim::Cached, None) => {}
            }
        }
        self.spawn(owned, FetchClass::OnDemand);
        if !from_cache.is_empty() {
            // Settled into the cache since the probe: take it from there; a
            // copy gone or bad in the meantime is fetched after all.
            let me = self.clone();
            let want: Vec<Chunk> = from_cache.iter().map(|&i| chunks[i].clone()).collect();
            let got = tokio::task::spawn_blocking(move || me.cached(&want))
                .await
                .unwrap_or_default();
            let mut again = Vec::new();
            for (k, &i) in from_cache.iter().enumerate() {
                match got.get(k).cloned().flatten() {
                    Some(b) => have[i] = Some(b),
                    None => again.push(i),
                }
            }
            let want: Vec<Chunk> = again.iter().map(|&i| chunks[i].clone()).collect();
            let mut owned = Vec::new();
            for (&i, claim) in again.iter().zip(self.sched.claim(&want, false)) {
                match claim {
                    Claim::Own(o, w) => {
                        owned.push(o);
                        waits.push((i, w));
                    }
                    Claim::Join(w) => waits.push((i, w)),
                    Claim::Cached => unreachable!("claimed without trusting the cache"),
                }
            }
            self.spawn(owned, FetchClass::OnDemand);
        }
        for (i, w) in waits {
            let r = match tokio::time::timeout_at(deadline.into(), w.clone()).await {
                Ok(r) => r,
                Err(_) => return Err(FetchError::Timeout(self.sched.timeout())),
            };
            match r {
                Ok(b) => {
                    self.mark_resident(&chunks[i]);
                    have[i] = Some(b);
                }
                Err(e) => {
                    // A fetch that died without answering must not leave its
                    // failure behind for later readers.
                    self.sched.forget(&chunks[i].digest, &w);
                    return Err(e);
                }
            }
        }
        Ok(have.into_iter().map(|b| b.unwrap_or_default()).collect())
    }

    /// Plan `owned` into requests and run each on its own task.
    fn spawn(self: &Arc<Self>, owned: Vec<Owned>, class: FetchClass) {
        if owned.is_empty() {
            return;
        }
        let (gap, max) = match class {
            FetchClass::OnDemand => (self.cfg.coalesce_gap_bytes, self.cfg.max_request_bytes),
            FetchClass::Background => (
                self.cfg.coalesce_gap_bytes,
                self.cfg.background_request_bytes,
            ),
            // The prioritized range is fetched in one request by design.
            FetchClass::Prefetch => (u64::MAX, u64::MAX),
        };
        let mut groups: Vec<Vec<Span>> = Vec::new();
        let mut group_bytes = 0;
        for span in self.plan(owned, gap, max) {
            let len = span.end - span.start;
            // Scattered spans of one read share a multi-range request, up to
            // the request size limit.
            let join = class == FetchClass::OnDemand
                && self.source.multi_range()
                && group_bytes + len <= max;
            match groups.last_mut() {
                Some(g) if join => g.push(span),
                _ => {
                    group_bytes = 0;
                    groups.push(vec![span]);
                }
            }
            group_bytes += len;
        }
        for g in groups {
            let me = self.clone();
            let fg = (class != FetchClass::Background).then(|| self.sched.foreground());
            self.rt.spawn(async move {
                // Failures reach the waiters; nothing else wants them.
                let _ = me.run(g, class, false).await;
                drop(fg);
            });
        }
    }

    fn plan(&self, owned: Vec<Owned>, gap: u64, max: u64) -> Vec<Span> {
        let ranges: Vec<(u64, u64)> = owned
            .iter()
            .map(|o| (o.chunk.blob_offset, o.chunk.blob_end))
            .collect();
        let mut slots: Vec<Option<Owned>> = owned.into_iter().map(Some).collect();
        plan_spans(&ranges, gap, max)
            .into_iter()
            .map(|(start, end, idx)| Span {
                start,
                end,
                chunks: idx.into_iter().filter_map(|i| slots[i].take()).collect(),
            })
            .collect()
    }

    /// Fetch `batch` into the cache at background priority; the caller holds
    /// a background slot of the scheduler for the whole call. Requests run
    /// one after another, so this holds one answer at a time. Fails if the
    /// source did (corrupt chunks are counted, not retried).
    pub(crate) async fn background(self: &Arc<Self>, batch: &[Chunk]) -> Result<(), FetchError> {
        let mut owned = Vec::new();
        let mut joined = Vec::new();
        for (c, claim) in batch.iter().zip(self.sched.claim(batch, true)) {
            match claim {
                Claim::Cached => self.mark_resident(c),
                Claim::Join(w) => joined.push((c, w)),
                Claim::Own(o, _) => owned.push(o),
            }
        }
        let spans = self.plan(
            owned,
            self.cfg.coalesce_gap_bytes,
            self.cfg.background_request_bytes,
        );
        let mut failed = None;
        for span in spans {
            if let Err(e) = self
                .clone()
                .run(vec![span], FetchClass::Background, true)
                .await
            {
                failed = Some(e);
            }
        }
        for (c, w) in joined {
            if w.await.is_ok() {
                self.mark_resident(c);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// One request for `spans`, then decode and settle its chunks one by one.
    /// `slot_held`: the caller holds a background slot.
    async fn run(
        self: Arc<Self>,
        spans: Vec<Span>,
        class: FetchClass,
        slot_held: bool,
    ) -> Result<(), FetchError> {
        let ranges: Vec<(u64, u64)> = spans.iter().map(|s| (s.start, s.end - s.start)).collect();
        self.stats.requests.fetch_add(1, Relaxed);
        let res = self
            .sched
            .request(self.source.as_ref(), &ranges, class, slot_held)
            .await;
        let tier = match class {
            FetchClass::Background => Tier::Cold,
            FetchClass::OnDemand | FetchClass::Prefetch => Tier::Hot,
        };
        let bufs = match res {
            Ok(b) => b,
            Err(e) => {
                self.stats.request_errors.fetch_add(1, Relaxed);
                for o in spans.into_iter().flat_map(|s| s.chunks) {
                    self.sched.settle(o, Err(e.clone()), tier);
                }
                return Err(e);
            }
        };
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        self.stats.add_fetched(class, total);
        let background = class == FetchClass::Background;
        if background {
            self.sched.background_hold(total);
        }
        let me = self.clone();
        // Gunzip, hash and write on the blocking pool: an answer can be megabytes.
        let decoded = tokio::task::spawn_blocking(move || {
            let decoder = me.decoder.get().cloned();
            for (span, buf) in spans.into_iter().zip(bufs) {
                let mut rest = span.chunks;
                while !rest.is_empty() {
                    // A decoder takes every chunk of one blob range at once.
                    let n = match &decoder {
                        Some(_) => {
                            let (s, e) = (rest[0].chunk.blob_offset, rest[0].chunk.blob_end);
                            rest.iter()
                                .take_while(|o| o.chunk.blob_offset == s && o.chunk.blob_end == e)
                                .count()
                        }
                        None => 1,
                    };
                    let group: Vec<Owned> = rest.drain(..n).collect();
                    let lo = (group[0].chunk.blob_offset - span.start) as usize;
                    let hi = (group[0].chunk.blob_end - span.start) as usize;
                    let results: Vec<Result<Bytes, FetchError>> =
                        match &decoder {
                            Some(d) => {
                                let refs: Vec<&Chunk> = group.iter().map(|o| &o.chunk).collect();
                                decode_group(d.as_ref(), &buf[lo..hi], &refs)
                                    .into_iter()
                                    .map(|r| r.map_err(FetchError::from))
                                    .collect()
                            }
                            None => vec![chunk::decode(&buf[lo..hi], &group[0].chunk)
                                .map_err(FetchError::from)],
                        };
                    for (o, r) in group.into_iter().zip(results) {
                        let held = r.as_ref().map_or(0, |b| b.len() as u64);
                        if background {
                            me.sched.background_hold(held);
                        }
                        match &r {
                            Ok(b) => {
                                if !o.chunk.verified {
                                    use sha2::Digest as _;
                                    let h: [u8; 32] = sha2::Sha256::digest(b).into();
                                    me.observed
                                        .lock()
                                        .insert((o.chunk.blob_offset, o.chunk.inner_offset), h);
                                }
                                me.mark_resident(&o.chunk)
                            }
                            Err(e) if e.is_corrupt() => {
                                me.stats.corrupt_chunks.fetch_add(1, Relaxed);
                            }
                            Err(_) => {}
                        }
                        me.sched.settle(o, r, tier);
                        if background {
                            me.sched.background_release(held);
                        }
                    }
                }
                if background {
                    me.sched.background_release(buf.len() as u64);
                }
            }
        })
        .await;
        if decoded.is_err() {
            // Unanswered chunks read as abandoned; their waiters clear them.
            return Err(crate::source::SourceError::Abandoned.into());
        }
        Ok(())
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
