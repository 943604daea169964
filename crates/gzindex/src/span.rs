//! Reading pieces: inflate from a checkpoint (its bit offset primed, its
//! window as the dictionary) and hand out a piece only if it matches its
//! digest.

use crate::error::{Error, Result};
use crate::format::GzIndex;
use crate::zlib::{self, Inflate};
use estargz::index::Chunk;
use sha2::{Digest, Sha256};
use std::sync::Arc;

struct Start {
    /// Blob offset of the span's range (after a partly used byte).
    byte: u64,
    /// `in_bit % 8`: bits of the `prime` byte that belong to the span before.
    skip_bits: u8,
    prime: u8,
    window: Arc<[u8]>,
    len: u64,
}

/// The checkpoints of one layer, ready to inflate from. Cheap to share.
pub struct SpanDecoder {
    starts: Vec<Start>,
}

impl SpanDecoder {
    pub fn new(idx: &GzIndex) -> SpanDecoder {
        let starts = idx
            .checkpoints
            .iter()
            .enumerate()
            .map(|(i, c)| Start {
                byte: c.start(),
                skip_bits: (c.in_bit % 8) as u8,
                prime: c.prime,
                window: c.window.as_slice().into(),
                len: idx.span_len(i),
            })
            .collect();
        SpanDecoder { starts }
    }

    /// Inflate the first `need` bytes of the span whose range starts at blob
    /// byte `byte`, from `member` (the blob from that byte on, through the
    /// span's end).
    pub fn inflate(&self, byte: u64, member: &[u8], need: u64) -> Result<Vec<u8>> {
        let span_err = |reason: String| Error::Span {
            offset: byte,
            reason,
        };
        let i = self
            .starts
            .binary_search_by_key(&byte, |s| s.byte)
            .map_err(|_| span_err("no checkpoint here".into()))?;
        let s = &self.starts[i];
        if need > s.len {
            return Err(span_err(format!(
                "{need} bytes wanted of a {}-byte span",
                s.len
            )));
        }
        let mut z = Inflate::new(zlib::RAW).map_err(|rc| span_err(format!("inflateInit: {rc}")))?;
        let mut input = member;
        if s.skip_bits != 0 {
            z.prime(8 - s.skip_bits, s.prime >> s.skip_bits)
                .map_err(|rc| span_err(format!("inflatePrime: {rc}")))?;
        }
        if !s.window.is_empty() {
            z.set_dictionary(&s.window)
                .map_err(|rc| span_err(format!("inflateSetDictionary: {rc}")))?;
        }
        let mut out = vec![0u8; need as usize];
        let mut produced = 0usize;
        while produced < out.len() {
            let step = z.inflate(input, &mut out[produced..], zlib::Z_NO_FLUSH);
            input = &input[step.consumed..];
            produced += step.produced;
            match step.rc {
                zlib::Z_OK => {}
                zlib::Z_STREAM_END if produced < out.len() => {
                    return Err(span_err(format!(
                        "stream ends after {produced} of {need} bytes"
                    )))
                }
                zlib::Z_STREAM_END => {}
                zlib::Z_BUF_ERROR if step.consumed == 0 && step.produced == 0 => {
                    return Err(span_err(format!(
                        "input ends after {produced} of {need} bytes"
                    )))
                }
                zlib::Z_BUF_ERROR => {}
                rc => return Err(span_err(format!("inflate: {rc}"))),
            }
        }
        Ok(out)
    }

    /// The pieces `chunks` (all starting at one checkpoint: the same
    /// `blob_offset`), inflating the span once, each checked against its
    /// digest.
    pub fn decode(&self, member: &[u8], chunks: &[&Chunk]) -> Vec<Result<Vec<u8>>> {
        let Some(first) = chunks.first() else {
            return Vec::new();
        };
        if chunks.iter().any(|c| c.blob_offset != first.blob_offset) {
            return chunks
                .iter()
                .map(|c| {
                    Err(Error::Span {
                        offset: c.blob_offset,
                        reason: "pieces of different spans decoded together".into(),
                    })
                })
                .collect();
        }
        let need = chunks
            .iter()
            .map(|c| c.inner_offset.saturating_add(c.size))
            .max()
            .unwrap_or(0);
        let span = match self.inflate(first.blob_offset, member, need) {
            Ok(s) => s,
            Err(e) => {
                let msg = e.to_string();
                return chunks
                    .iter()
                    .map(|c| {
                        Err(Error::Span {
                            offset: c.blob_offset,
                            reason: msg.clone(),
                        })
                    })
                    .collect();
            }
        };
        chunks
            .iter()
            .map(|c| {
                // `need` covers every chunk, so the range is in bounds.
                let piece = &span[c.inner_offset as usize..(c.inner_offset + c.size) as usize];
                let actual = format!("sha256:{}", hex::encode(Sha256::digest(piece)));
                if actual != c.digest {
                    return Err(Error::DigestMismatch {
                        digest: c.digest.clone(),
                        actual,
                    });
                }
                Ok(piece.to_vec())
            })
            .collect()
    }
}
