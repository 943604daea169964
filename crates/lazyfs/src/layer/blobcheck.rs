//! The layer-level check of an unverified layer: legacy stargz, whose
//! chunks carry no digest, or a layer opened without a TOC digest. Once
//! every chunk was fetched the whole blob is read again in order, hashed
//! against the layer digest, and each chunk decoded from it is compared
//! with what this layer served (the hashes recorded when its chunks were
//! fetched, and what the memory cache holds). Any mismatch stops the
//! layer: every later read fails with EIO and the failure is logged as an
//! error. Verified layers never need this.

use super::LazyLayer;
use crate::error::Error;
use bytes::Bytes;
use estargz::index::Chunk;
use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use tracing::{error, info};

/// `LazyLayer::check_state` values.
pub(crate) const NOT_CHECKED: u8 = 0;
pub(crate) const CHECKING: u8 = 1;
pub(crate) const PASSED: u8 = 2;
pub(crate) const FAILED: u8 = 3;

/// Bytes per read of the check.
const READ_BYTES: u64 = 4 << 20;

/// How an unverified layer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobCheck {
    /// The layer was verified chunk by chunk against a TOC the image vouched for.
    NotNeeded,
    /// Unverified; not every chunk was fetched yet (or the check is running).
    Pending,
    /// The whole blob matched the layer digest and everything served.
    Passed,
    /// It did not: the layer serves nothing any more.
    Failed,
}

impl LazyLayer {
    /// Treat this layer as unverified (the TOC was not checked against a
    /// digest, or its chunks have none): no FUSE passthrough, and the
    /// layer-level check once every chunk was fetched.
    pub fn mark_unverified(&self) {
        self.unverified.store(true, SeqCst);
    }

    /// Where the layer-level check stands.
    pub fn blob_check(&self) -> BlobCheck {
        if !self.unverified.load(SeqCst) {
            return BlobCheck::NotNeeded;
        }
        match self.check_state.load(SeqCst) {
            PASSED => BlobCheck::Passed,
            FAILED => BlobCheck::Failed,
            _ => BlobCheck::Pending,
        }
    }

    pub(crate) fn is_unverified(&self) -> bool {
        self.unverified.load(SeqCst)
    }

    /// The error every read gets once the check failed.
    pub(crate) fn stopped(&self) -> Option<Error> {
        (self.check_state.load(SeqCst) == FAILED).then(|| Error::LayerMismatch {
            layer: self.digest.clone(),
            reason: self
                .check_failure
                .lock()
                .clone()
                .unwrap_or_else(|| "the check of the whole blob failed".into()),
        })
    }

    /// Start the check if the layer is unverified, every chunk has been
    /// fetched and no check ran yet.
    pub(crate) fn check_if_complete(self: &Arc<Self>) {
        if !self.is_unverified() || self.fetched_bytes() < self.blob_size {
            return;
        }
        if self
            .check_state
            .compare_exchange(NOT_CHECKED, CHECKING, SeqCst, SeqCst)
            .is_err()
        {
            return;
        }
        let me = self.clone();
        self.rt.spawn(async move {
            let _ = me.run_check().await;
        });
    }

    /// Check the whole blob now (e.g. `rsnap mount --verify-blob`), or wait
    /// for nothing if it already passed. The outcome is also the layer's
    /// state: a failure stops it.
    pub async fn check_blob(self: &Arc<Self>) -> Result<(), Error> {
        match self.check_state.swap(CHECKING, SeqCst) {
            PASSED => {
                self.check_state.store(PASSED, SeqCst);
                return Ok(());
            }
            FAILED => {
                self.check_state.store(FAILED, SeqCst);
                return Err(self.stopped().expect("failed"));
            }
            _ => {}
        }
        self.run_check().await
    }

    async fn run_check(self: &Arc<Self>) -> Result<(), Error> {
        let res = self.compare_blob().await;
        match &res {
            Ok(()) => {
                self.check_state.store(PASSED, SeqCst);
                info!(layer = %self.digest, size = self.blob_size, "unverified layer: the whole blob matches its digest");
            }
            Err(Error::Unavailable { .. }) => {
                // Not a verdict: the next completed fetch or call tries again.
                self.check_state.store(NOT_CHECKED, SeqCst);
            }
            Err(e) => {
                if let Error::LayerMismatch { reason, .. } = e {
                    *self.check_failure.lock() = Some(reason.clone());
                }
                self.check_state.store(FAILED, SeqCst);
                error!(layer = %self.digest, error = %e, "UNVERIFIED LAYER DOES NOT MATCH ITS DIGEST: it is no longer served");
            }
        }
        res
    }

    /// Read the blob in order, hash it, decode and compare every chunk.
    async fn compare_blob(self: &Arc<Self>) -> Result<(), Error> {
        let mismatch = |reason: String| Error::LayerMismatch {
            layer: self.digest.clone(),
            reason,
        };
        let want = self
            .digest
            .strip_prefix("sha256:")
            .ok_or_else(|| mismatch("the layer digest is not sha256".into()))?
            .to_string();
        let mut chunks = self.all_chunks(None);
        chunks.sort_by_key(|c| (c.blob_end, c.blob_offset, c.inner_offset));
        let mut next = 0usize;
        let mut hash = Sha256::new();
        // Bytes from `buf_start` on, kept until the chunks in them are decoded.
        let mut buf: Vec<u8> = Vec::new();
        let mut buf_start = 0u64;
        let mut pos = 0u64;
        let timeout = self.cfg.fetch_timeout();
        while pos < self.blob_size {
            let len = READ_BYTES.min(self.blob_size - pos);
            let part: Bytes = tokio::time::timeout(timeout, self.fetcher.source().read(pos, len))
                .await
                .map_err(|_| Error::Unavailable {
                    layer: self.digest.clone(),
                    source: crate::FetchError::Timeout(timeout),
                })?
                .map_err(|e| Error::Unavailable {
                    layer: self.digest.clone(),
                    source: e.into(),
                })?;
            if part.len() as u64 != len {
                return Err(mismatch(format!("short read at {pos}")));
            }
            hash.update(&part);
            buf.extend_from_slice(&part);
            pos += len;
            // Decode every chunk whose member is now whole.
            let ready = chunks[next..].partition_point(|c| c.blob_end <= pos);
            let batch: Vec<Chunk> = chunks[next..next + ready].to_vec();
            next += ready;
            if !batch.is_empty() {
                let me = self.clone();
                let data = std::mem::take(&mut buf);
                let (data, res) = tokio::task::spawn_blocking(move || {
                    let r = me.compare_chunks(&data, buf_start, &batch);
                    (data, r)
                })
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))?;
                buf = data;
                res.map_err(mismatch)?;
            }
            // Drop what no remaining chunk needs.
            let keep_from = chunks[next..]
                .iter()
                .map(|c| c.blob_offset)
                .min()
                .unwrap_or(pos)
                .max(buf_start);
            buf.drain(..(keep_from - buf_start).min(buf.len() as u64) as usize);
            buf_start = keep_from;
        }
        let got = hex::encode(hash.finalize());
        if got != want {
            return Err(mismatch(format!("the blob hashes to sha256:{got}")));
        }
        Ok(())
    }

    /// Decode `chunks` from `data` (blob bytes from `start`) and compare each
    /// with what was served. Blocking.
    fn compare_chunks(&self, data: &[u8], start: u64, chunks: &[Chunk]) -> Result<(), String> {
        let cache = self.fetcher.scheduler().cache();
        for c in chunks {
            let (lo, hi) = (
                (c.blob_offset - start) as usize,
                (c.blob_end - start) as usize,
            );
            let member = data
                .get(lo..hi)
                .ok_or_else(|| format!("member at {} is outside what was read", c.blob_offset))?;
            let bytes = estargz::decompress_chunk(member, c)
                .map_err(|e| format!("chunk at {}: {e}", c.blob_offset))?;
            if c.verified {
                continue; // decompress_chunk checked it against its digest
            }
            let real: [u8; 32] = Sha256::digest(&bytes).into();
            let served = self.fetcher.observed(c);
            let cached = cache.get_memory(&c.digest);
            let wrong = served.is_some_and(|h| h != real)
                || cached.is_some_and(|b| b.as_ref() != bytes.as_slice());
            if wrong {
                let path = self.chunk_path(c);
                return Err(format!(
                    "{path}: bytes served at blob offset {} differ from the blob",
                    c.blob_offset
                ));
            }
        }
        Ok(())
    }

    /// A file holding chunk `c`, for messages.
    fn chunk_path(&self, c: &Chunk) -> String {
        let nodes = self.tree.nodes();
        let i = self.blob_order.partition_point(|e| e.0 < c.blob_offset);
        self.blob_order[i..]
            .iter()
            .take_while(|e| e.0 == c.blob_offset)
            .find(|&&(_, n, k)| nodes[n as usize].chunks.get(k as usize) == Some(c))
            .map(|&(_, n, _)| self.tree.path_of(n))
            .unwrap_or_else(|| "(unknown file)".into())
    }
}
