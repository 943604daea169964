//! Opening a blob and reading verified bytes from it.
//!
//! Two ways in:
//! - blocking: `open(reader, size, toc_digest)` over anything `ReadAt`,
//!   at most two reads for footer + TOC, then `Layer::read_file`;
//! - sans-IO for async callers that fetch ranges themselves:
//!   `parse_footer` (re-exported) -> `toc_region` -> `parse_toc_member` ->
//!   `Index::from_toc`, then `decompress_chunk` on each fetched member.
//!
//! Every byte handed out has matched its `chunkDigest` first, except from a
//! legacy stargz layer opened on purpose without digests (`open_with` and
//! `IndexOptions::unverified_key`).

pub use crate::blob::{read_exact_at, sha256_digest, ReadAt};
use crate::error::{Error, Result};
pub use crate::footer::{parse_footer, Footer};
use crate::index::{Chunk, Index, IndexOptions, NodeId, NodeKind};
pub use crate::tail::{toc_region, MAX_TOC_JSON, MAX_TOC_MEMBER};
use crate::tarfmt;
use crate::toc::{Toc, TOC_TAR_NAME};
use crate::Compression;
use std::io::{self, BufRead, Read};

/// First read of `open`: the footer and, usually, the whole TOC.
pub const TAIL_READ: u64 = 64 << 10;

/// Decode the TOC member (the blob bytes from the TOC offset to the footer):
/// gunzip, one tar entry named `stargz.index.json`, JSON; or, for
/// zstd:chunked, the skippable frame holding the zstd-compressed JSON
/// (told apart by their first bytes). Returns the TOC and its digest,
/// `sha256:<hex>` of the uncompressed JSON bytes.
pub fn parse_toc_member(member: &[u8]) -> Result<(Toc, String)> {
    if crate::zstd::is_toc_frame(member) {
        return crate::zstd::parse_toc_frame(member);
    }
    let bad = |m: &str| Error::BadTocMember(m.to_string());
    let mut gz = flate2::bufread::GzDecoder::new(member);
    let mut hdr = [0u8; tarfmt::BLOCK];
    gz.read_exact(&mut hdr)
        .map_err(|e| bad(&format!("tar header: {e}")))?;
    let h = tarfmt::parse_header(&hdr, 0).map_err(|e| bad(&e.to_string()))?;
    if h.name != TOC_TAR_NAME.as_bytes() {
        return Err(bad("first tar entry is not stargz.index.json"));
    }
    if !matches!(h.typeflag, tarfmt::TYPE_REG | tarfmt::TYPE_REG_OLD) {
        return Err(bad("stargz.index.json is not a regular file"));
    }
    let size = h.size as u64;
    if size > MAX_TOC_JSON {
        return Err(Error::TocTooLarge {
            size,
            cap: MAX_TOC_JSON,
        });
    }
    let mut json = Vec::with_capacity(size.min(1 << 20) as usize);
    (&mut gz)
        .take(size)
        .read_to_end(&mut json)
        .map_err(|e| bad(&format!("TOC JSON: {e}")))?;
    if json.len() as u64 != size {
        return Err(bad("TOC JSON is truncated"));
    }
    let digest = sha256_digest(&json);
    let toc = Toc::from_json(&json)?;
    Ok((toc, digest))
}

/// How the chunks of the layer whose TOC member this is are compressed
/// (the member's first bytes say it; the TOC digest check covers the rest).
pub fn member_compression(member: &[u8]) -> Compression {
    if crate::zstd::is_toc_frame(member) {
        Compression::Zstd
    } else {
        Compression::Gzip
    }
}

/// Check `digest` against the annotation value, when there is one.
pub fn verify_toc_digest(digest: &str, expected: Option<&str>) -> Result<()> {
    match expected {
        Some(want) if want != digest => Err(Error::TocDigestMismatch {
            expected: want.to_string(),
            actual: digest.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Decompress the one gzip member or zstd frame (as `chunk.compression`
/// says) that starts at `member[0]`, skip `inner_offset` bytes, take
/// `chunk.size` bytes and check them against `chunk.digest` (unless the
/// chunk has none: `chunk.verified == false`, legacy stargz opened
/// unverified on purpose). `member` may run past the member's end. Output
/// never exceeds `size`.
pub fn decompress_chunk(member: &[u8], chunk: &Chunk) -> Result<Vec<u8>> {
    decompress_from(member, chunk)
}

fn decompress_from<B: BufRead>(src: B, chunk: &Chunk) -> Result<Vec<u8>> {
    match chunk.compression {
        Compression::Gzip => verified(flate2::bufread::GzDecoder::new(src), chunk, |e| {
            Error::Gzip(e.to_string())
        }),
        Compression::Zstd => verified(crate::zstd::chunk_decoder(src)?, chunk, |e| {
            Error::Zstd(e.to_string())
        }),
    }
}

/// Skip `inner_offset` bytes of the decoded stream `gz`, take `size`, verify.
fn verified<D: Read>(mut gz: D, chunk: &Chunk, gzip: fn(io::Error) -> Error) -> Result<Vec<u8>> {
    let skipped =
        io::copy(&mut (&mut gz).take(chunk.inner_offset), &mut io::sink()).map_err(gzip)?;
    let short = Error::ShortChunk {
        blob_offset: chunk.blob_offset,
        wanted: chunk.inner_offset + chunk.size,
    };
    if skipped != chunk.inner_offset {
        return Err(short);
    }
    // Grows with real output only, so a lying size cannot make us allocate.
    let mut out = Vec::with_capacity(chunk.size.min(4 << 20) as usize);
    (&mut gz)
        .take(chunk.size)
        .read_to_end(&mut out)
        .map_err(gzip)?;
    if out.len() as u64 != chunk.size {
        return Err(short);
    }
    if !chunk.verified {
        return Ok(out);
    }
    let actual = sha256_digest(&out);
    if actual != chunk.digest {
        return Err(Error::DigestMismatch {
            blob_offset: chunk.blob_offset,
            expected: chunk.digest.clone(),
            actual,
        });
    }
    Ok(out)
}

/// A `Read` over `off..end` of a `ReadAt`.
struct RangeReader<'a, R: ?Sized> {
    r: &'a R,
    off: u64,
    end: u64,
}

impl<R: ReadAt + ?Sized> Read for RangeReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.off).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.r.read_at(self.off, &mut buf[..want])?;
        self.off += n as u64;
        Ok(n)
    }
}

/// Does the blob end with an eStargz (or stargz, or zstd:chunked) footer?
/// One small read.
pub fn is_estargz<R: ReadAt + ?Sized>(r: &R, blob_size: u64) -> bool {
    let n = blob_size.min(crate::footer::FOOTER_SIZE as u64);
    let mut tail = vec![0u8; n as usize];
    read_exact_at(r, blob_size - n, &mut tail).is_ok() && parse_footer(&tail).is_ok()
}

/// An opened, verified eStargz blob.
pub struct Layer<R> {
    reader: R,
    pub index: Index,
    pub toc: Toc,
    /// `sha256:<hex>` of the TOC JSON.
    pub toc_digest: String,
    pub footer: Footer,
}

/// Open a blob of `blob_size` bytes: read the tail (footer and usually the
/// whole TOC), a second read only if the TOC starts earlier, verify the TOC
/// digest when `expected_toc_digest` is given, build the index.
pub fn open<R: ReadAt>(
    reader: R,
    blob_size: u64,
    expected_toc_digest: Option<&str>,
) -> Result<Layer<R>> {
    open_with(
        reader,
        blob_size,
        expected_toc_digest,
        &IndexOptions::default(),
    )
}

/// [`open`] with index options: `unverified_key` set, a legacy stargz
/// blob (chunks without digests) opens, its chunks unchecked.
pub fn open_with<R: ReadAt>(
    reader: R,
    blob_size: u64,
    expected_toc_digest: Option<&str>,
    opts: &IndexOptions,
) -> Result<Layer<R>> {
    if blob_size < crate::footer::LEGACY_FOOTER_SIZE as u64 {
        return Err(Error::TooSmall(blob_size));
    }
    let tail_start = blob_size - blob_size.min(TAIL_READ);
    let mut tail = vec![0u8; (blob_size - tail_start) as usize];
    read_exact_at(&reader, tail_start, &mut tail)?;
    let footer = parse_footer(&tail)?;
    let region = toc_region(&footer, blob_size)?;
    let member = if region.start >= tail_start {
        tail.drain(..(region.start - tail_start) as usize);
        tail.truncate((region.end - region.start) as usize);
        tail
    } else {
        let mut head = vec![0u8; (tail_start - region.start) as usize];
        read_exact_at(&reader, region.start, &mut head)?;
        head.extend_from_slice(&tail[..(region.end - tail_start) as usize]);
        head
    };
    let (toc, toc_digest) = parse_toc_member(&member)?;
    verify_toc_digest(&toc_digest, expected_toc_digest)?;
    let opts = IndexOptions {
        compression: footer.compression,
        ..opts.clone()
    };
    let index = Index::from_toc_with(&toc, region.start, blob_size, &opts)?;
    Ok(Layer {
        reader,
        index,
        toc,
        toc_digest,
        footer,
    })
}

/// Open an external-TOC blob (46-byte footer) with its TOC member from the
/// TOC image (`toc_member`: the gzip'd tar holding `stargz.index.json`).
pub fn open_external<R: ReadAt>(
    reader: R,
    blob_size: u64,
    toc_member: &[u8],
    expected_toc_digest: Option<&str>,
    opts: &IndexOptions,
) -> Result<Layer<R>> {
    let n = blob_size.min(crate::external::FOOTER_SIZE as u64);
    let mut tail = vec![0u8; n as usize];
    read_exact_at(&reader, blob_size - n, &mut tail)?;
    if !crate::external::is_footer(&tail) {
        return Err(Error::ExternalToc(
            "the blob does not end with an external-TOC footer".into(),
        ));
    }
    let end = crate::external::data_end(blob_size)?;
    let (toc, toc_digest) = parse_toc_member(toc_member)?;
    verify_toc_digest(&toc_digest, expected_toc_digest)?;
    let index = Index::from_toc_with(&toc, end, blob_size, opts)?;
    Ok(Layer {
        reader,
        index,
        toc,
        toc_digest,
        footer: Footer {
            toc_offset: end,
            size: crate::external::FOOTER_SIZE,
            legacy: false,
            compression: Compression::Gzip,
            toc_size: None,
        },
    })
}

impl<R: ReadAt> Layer<R> {
    pub fn reader(&self) -> &R {
        &self.reader
    }

    /// One chunk, fetched, decompressed and verified. Reads the member as a
    /// stream, so a member that claims to be huge costs no memory.
    pub fn read_chunk(&self, chunk: &Chunk) -> Result<Vec<u8>> {
        let range = RangeReader {
            r: &self.reader,
            off: chunk.blob_offset,
            end: chunk.blob_end,
        };
        decompress_from(io::BufReader::with_capacity(64 << 10, range), chunk)
    }

    /// Read file `id` from `offset` into `buf`; returns the bytes read
    /// (0 at or past the end of the file).
    pub fn read_file(&self, id: NodeId, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let node = self.index.node(id).ok_or(Error::NoSuchNode(id))?;
        if node.kind != NodeKind::Reg {
            return Err(Error::NotAFile(id));
        }
        let end = offset.saturating_add(buf.len() as u64).min(node.size);
        if offset >= end {
            return Ok(0);
        }
        for c in self.index.chunks_in(id, offset..end) {
            let data = self.read_chunk(c)?;
            let from = offset.max(c.file_offset);
            let to = end.min(c.file_offset + c.size);
            let src = &data[(from - c.file_offset) as usize..(to - c.file_offset) as usize];
            buf[(from - offset) as usize..(to - offset) as usize].copy_from_slice(src);
        }
        Ok((end - offset) as usize)
    }

    /// Every chunk of every file fetched and verified (e.g. `rsnap inspect --verify`).
    pub fn verify_all(&self) -> Result<()> {
        for (_, c) in self.index.all_chunks() {
            self.read_chunk(c)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
