//! The index file and its validation.
//!
//! Layout: `MAGIC` (8 bytes), then one gzip stream of
//!
//! | field | bytes |
//! |---|---|
//! | header length `h` | u32 LE |
//! | header JSON (`Header`: layer, sizes, `[in_bit, out, prime byte]` per checkpoint) | `h` |
//! | per checkpoint: window length `w` (u32 LE), window | `4 + w` each |
//! | file table: eStargz TOC JSON (version 1) | rest |
//!
//! Windows are stored raw inside the one gzip stream, which compresses them
//! (they are uncompressed layer bytes). Every length is capped before it is
//! allocated; parsing never panics.

use crate::error::{malformed, Error, Result};
use crate::{MAX_SPAN_SIZE, MIN_SPAN_SIZE};
use estargz::index::{Index, MAX_CHUNK_SIZE};
use estargz::Toc;
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};

/// First bytes of an index file (format version 1).
pub const MAGIC: &[u8; 8] = b"RSNAPGZ1";
/// Largest index file accepted.
pub const MAX_INDEX_BYTES: u64 = 64 << 20;
/// Most checkpoints accepted (4096 x 4 MiB spans = a 16 GiB layer).
pub const MAX_CHECKPOINTS: usize = 4096;
/// Largest header JSON accepted.
const MAX_HEADER: u32 = 1 << 20;
/// Largest window: deflate's history.
pub const WINDOW: usize = 32 << 10;
/// Largest decompressed body: header, windows, TOC.
const MAX_BODY: u64 =
    MAX_HEADER as u64 + (MAX_CHECKPOINTS * (WINDOW + 4)) as u64 + estargz::reader::MAX_TOC_JSON;

/// A place inflating can start from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Bit offset in the layer blob of the deflate block that starts here.
    pub in_bit: u64,
    /// Offset in the uncompressed tar.
    pub out: u64,
    /// Up to 32 KiB of uncompressed bytes before `out`.
    pub window: Vec<u8>,
    /// The blob byte holding the first bit when the span starts inside a
    /// byte (its high bits are primed into inflate), so a span's blob range
    /// starts after it and the ranges of consecutive spans do not overlap
    /// (a registry answers overlapping multi-range requests with the whole
    /// blob). 0 when the span starts on a byte boundary.
    pub prime: u8,
}

impl Checkpoint {
    /// First blob byte of the span's range: the piece chunks' `blob_offset`.
    pub fn start(&self) -> u64 {
        self.in_bit.div_ceil(8)
    }
}

/// One layer's index.
#[derive(Debug, Clone)]
pub struct GzIndex {
    /// `sha256:<hex>` of the compressed layer it was built from.
    pub layer_digest: String,
    pub layer_size: u64,
    pub uncompressed_size: u64,
    pub span_size: u64,
    /// By offset; the first is at `out == 0`.
    pub checkpoints: Vec<Checkpoint>,
    /// The file table; chunks are the pieces (see the crate docs).
    pub toc: Toc,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Header {
    layer_digest: String,
    layer_size: u64,
    uncompressed_size: u64,
    span_size: u64,
    checkpoints: Vec<(u64, u64, u8)>,
}

fn valid_sha256(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

impl GzIndex {
    /// The index file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let header = Header {
            layer_digest: self.layer_digest.clone(),
            layer_size: self.layer_size,
            uncompressed_size: self.uncompressed_size,
            span_size: self.span_size,
            checkpoints: self
                .checkpoints
                .iter()
                .map(|c| (c.in_bit, c.out, c.prime))
                .collect(),
        };
        let h = serde_json::to_vec(&header).unwrap_or_default();
        let mut body = Vec::new();
        body.extend_from_slice(&(h.len() as u32).to_le_bytes());
        body.extend_from_slice(&h);
        for c in &self.checkpoints {
            body.extend_from_slice(&(c.window.len() as u32).to_le_bytes());
            body.extend_from_slice(&c.window);
        }
        body.extend_from_slice(&self.toc.to_json());
        let mut out = MAGIC.to_vec();
        let mut gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::best());
        // Writing to a Vec cannot fail.
        let _ = gz.write_all(&body);
        let _ = gz.finish();
        out
    }

    /// Parse and check an index file (structure only: whether it fits its
    /// layer is `layer_index`'s and `check_layer`'s business).
    pub fn parse(bytes: &[u8]) -> Result<GzIndex> {
        if bytes.len() as u64 > MAX_INDEX_BYTES {
            return Err(Error::TooLarge {
                what: "an index file",
                got: bytes.len() as u64,
                cap: MAX_INDEX_BYTES,
            });
        }
        let rest = bytes.strip_prefix(MAGIC.as_slice()).ok_or(Error::Magic)?;
        let mut body = Vec::new();
        flate2::read::GzDecoder::new(rest)
            .take(MAX_BODY + 1)
            .read_to_end(&mut body)
            .map_err(|e| malformed(format!("gzip: {e}")))?;
        if body.len() as u64 > MAX_BODY {
            return Err(Error::TooLarge {
                what: "an index body",
                got: body.len() as u64,
                cap: MAX_BODY,
            });
        }
        let mut cur = body.as_slice();
        let h_len = take_u32(&mut cur)?;
        if h_len > MAX_HEADER {
            return Err(malformed("header too long"));
        }
        let h = take(&mut cur, h_len as usize)?;
        let header: Header =
            serde_json::from_slice(h).map_err(|e| malformed(format!("header: {e}")))?;
        if header.checkpoints.len() > MAX_CHECKPOINTS {
            return Err(Error::TooLarge {
                what: "checkpoints",
                got: header.checkpoints.len() as u64,
                cap: MAX_CHECKPOINTS as u64,
            });
        }
        let mut checkpoints = Vec::with_capacity(header.checkpoints.len());
        for &(in_bit, out, prime) in &header.checkpoints {
            let w = take_u32(&mut cur)? as usize;
            if w > WINDOW {
                return Err(malformed(format!("window of {w} bytes at {out}")));
            }
            let window = take(&mut cur, w)?.to_vec();
            checkpoints.push(Checkpoint {
                in_bit,
                out,
                window,
                prime,
            });
        }
        let toc = Toc::from_json(cur).map_err(|e| malformed(format!("file table: {e}")))?;
        let idx = GzIndex {
            layer_digest: header.layer_digest,
            layer_size: header.layer_size,
            uncompressed_size: header.uncompressed_size,
            span_size: header.span_size,
            checkpoints,
            toc,
        };
        idx.check_header()?;
        Ok(idx)
    }

    fn check_header(&self) -> Result<()> {
        if !valid_sha256(&self.layer_digest) {
            return Err(malformed("layer digest is not sha256:<hex>"));
        }
        if !(MIN_SPAN_SIZE..=MAX_SPAN_SIZE).contains(&self.span_size) {
            return Err(malformed(format!("span size {}", self.span_size)));
        }
        let first = self
            .checkpoints
            .first()
            .ok_or_else(|| malformed("no checkpoint"))?;
        if first.out != 0 || !first.window.is_empty() {
            return Err(malformed("first checkpoint is not at the start"));
        }
        for (i, c) in self.checkpoints.iter().enumerate() {
            if c.in_bit / 8 >= self.layer_size {
                return Err(malformed(format!("checkpoint {i} past the layer")));
            }
            if c.window.len() as u64 > c.out {
                return Err(malformed(format!(
                    "checkpoint {i}: window longer than the output before it"
                )));
            }
            if i > 0 {
                let p = &self.checkpoints[i - 1];
                if c.start() <= p.start() || c.out <= p.out {
                    return Err(malformed(format!("checkpoint {i} out of order")));
                }
            }
            let len = self.span_len(i);
            if len > MAX_CHUNK_SIZE || self.checkpoint_end(i) < c.out {
                return Err(malformed(format!("span {i} of {len} bytes")));
            }
        }
        Ok(())
    }

    /// Uncompressed end of span `i`.
    fn checkpoint_end(&self, i: usize) -> u64 {
        self.checkpoints
            .get(i + 1)
            .map_or(self.uncompressed_size, |n| n.out)
    }

    /// Uncompressed length of span `i`.
    pub fn span_len(&self, i: usize) -> u64 {
        let start = self.checkpoints.get(i).map_or(0, |c| c.out);
        self.checkpoint_end(i).saturating_sub(start)
    }

    /// Blob end (exclusive) of the bytes span `i` needs: through the byte
    /// holding the next checkpoint's first bit (where the next span's range
    /// starts), or the end of the blob.
    pub fn span_blob_end(&self, i: usize) -> u64 {
        self.checkpoints
            .get(i + 1)
            .map_or(self.layer_size, |n| n.start().min(self.layer_size))
    }

    /// Refuse to serve `layer` (digest, size) through an index built for
    /// another blob.
    pub fn check_layer(&self, layer_digest: &str, layer_size: u64) -> Result<()> {
        if self.layer_digest != layer_digest || self.layer_size != layer_size {
            return Err(Error::WrongLayer {
                index: self.layer_digest.clone(),
                index_size: self.layer_size,
                layer: layer_digest.to_string(),
                layer_size,
            });
        }
        Ok(())
    }

    /// The validated tree lazyfs serves: the file table through
    /// `Index::from_toc` (names, duplicates, hardlinks, chunk layout), then
    /// every piece checked against its checkpoint and given its span's
    /// blob range.
    pub fn layer_index(&self) -> Result<Index> {
        let mut index =
            Index::from_toc(&self.toc, self.layer_size, self.layer_size).map_err(Error::Toc)?;
        for node in &mut index.nodes {
            for c in &mut node.chunks {
                let i = self
                    .checkpoints
                    .binary_search_by_key(&c.blob_offset, |k| k.start())
                    .map_err(|_| {
                        malformed(format!("piece at {} is not at a checkpoint", c.blob_offset))
                    })?;
                if c.inner_offset.saturating_add(c.size) > self.span_len(i) {
                    return Err(malformed(format!(
                        "piece at {}+{} runs past its span",
                        c.blob_offset, c.inner_offset
                    )));
                }
                c.blob_end = self.span_blob_end(i);
            }
        }
        Ok(index)
    }
}

fn take<'a>(cur: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if cur.len() < n {
        return Err(malformed("truncated"));
    }
    let (a, b) = cur.split_at(n);
    *cur = b;
    Ok(a)
}

fn take_u32(cur: &mut &[u8]) -> Result<u32> {
    let b = take(cur, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}
