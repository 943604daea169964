//! Layers whose chunks are not whole gzip members (a plain gzip layer
//! served through a seekable index: a chunk is a piece of the span between
//! two inflate checkpoints). The opener hands the layer a decoder; chunks
//! sharing a blob range are decoded together, so a span is inflated once
//! per request, not once per file in it.

use crate::chunk::ChunkError;
use bytes::Bytes;
use estargz::index::Chunk;

pub trait MemberDecoder: Send + Sync {
    /// The layer's format, as the state file and metrics name it.
    fn format(&self) -> &'static str;
    /// Decode `chunks` (all with the same `blob_offset..blob_end`) from
    /// `member`, those blob bytes; one result per chunk, in order, each
    /// `Ok` only if it matched its digest.
    fn decode(&self, member: &[u8], chunks: &[&Chunk]) -> Vec<Result<Bytes, ChunkError>>;
}

/// `d.decode`, with one result per chunk whatever the decoder returned.
pub(crate) fn decode_group(
    d: &dyn MemberDecoder,
    member: &[u8],
    chunks: &[&Chunk],
) -> Vec<Result<Bytes, ChunkError>> {
    let mut out = d.decode(member, chunks);
    if out.len() != chunks.len() {
        out = chunks
            .iter()
            .map(|c| {
                Err(ChunkError::Malformed {
                    digest: c.digest.clone(),
                    reason: "decoder returned the wrong number of chunks".into(),
                })
            })
            .collect();
    }
    out
}
