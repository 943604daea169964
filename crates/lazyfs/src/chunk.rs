//! Turning the compressed bytes of one gzip member into one verified chunk,
//! through `estargz::decompress_chunk` (gunzip, inner offset, sha256).
//! The single place lazyfs touches the chunk format.

use bytes::Bytes;
use estargz::index::Chunk;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {digest}: digest mismatch (got {actual})")]
    DigestMismatch { digest: String, actual: String },
    #[error("chunk {digest}: {reason}")]
    Malformed { digest: String, reason: String },
}

/// Decompress `member` (the bytes `chunk.blob_offset..chunk.blob_end`) and
/// return the chunk only if it matches its digest.
pub fn decode(member: &[u8], chunk: &Chunk) -> Result<Bytes, ChunkError> {
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
