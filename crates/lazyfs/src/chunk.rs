//! One chunk: turning the compressed bytes of one gzip member into one
//! verified chunk, through `estargz::decompress_chunk` (gunzip, inner offset,
//! sha256), the single place lazyfs touches the chunk format; and what getting
//! a chunk can fail with.

use crate::source::SourceError;
use bytes::Bytes;
use estargz::index::Chunk;
use std::time::Duration;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {digest}: digest mismatch (got {actual})")]
    DigestMismatch { digest: String, actual: String },
    #[error("chunk {digest}: {reason}")]
    Malformed { digest: String, reason: String },
}

/// Decompress `member` (the bytes `chunk.blob_offset..chunk.blob_end`) and
/// return the chunk only if it matches its digest.
pub(crate) fn decode(member: &[u8], chunk: &Chunk) -> Result<Bytes, ChunkError> {
    match estargz::decompress_chunk(member, chunk) {
        Ok(v) => Ok(Bytes::from(v)),
        Err(estargz::Error::DigestMismatch { actual, .. }) => Err(ChunkError::DigestMismatch {
            digest: chunk.digest.clone(),
            actual,
        }),
        Err(e) => Err(ChunkError::Malformed {
            digest: chunk.digest.clone(),
            reason: e.to_string(),
        }),
    }
}

/// Why a chunk could not be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("fetch timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Chunk(#[from] ChunkError),
}

impl FetchError {
    /// The data is bad (as opposed to: the source could not be reached).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, FetchError::Chunk(_))
    }
}
