//! zstd:chunked, the parts that differ from eStargz: the footer, the TOC
//! frame, the chunk decoder and the encoder the writer uses.
//!
//! Layout (what the Go reference 0.12 `estargz/zstdchunked` writes):
//!
//! | bytes | what |
//! |---|---|
//! | 0..T | zstd frames; each chunk of a regular file starts a frame, the tar headers before it sit in the frame before |
//! | T..T+8 | skippable frame header: `50 2a 4d 18`, LE u32 length C |
//! | T+8..T+8+C | the TOC JSON (`stargz.index.json` format, no tar header), one zstd frame |
//! | end-48..end-40 | skippable frame header: `50 2a 4d 18`, LE u32 40 |
//! | end-40..end | footer: LE u64 TOC offset (T+8), LE u64 C, LE u64 JSON length, LE u64 manifest type (1), `GnUlInUx` |
//!
//! A zstd decoder skips skippable frames, so the blob decompresses to the
//! layer's tar. The TOC digest (`containerd.io/snapshot/stargz/toc.digest`)
//! is the sha256 of the JSON; the `io.containers.zstd-chunked.manifest-checksum`
//! annotation is the sha256 of the compressed TOC (the C bytes).

use crate::blob::{read_exact_at, sha256_digest, ReadAt};
use crate::error::{Error, Result};
use crate::tail::{toc_region, Footer, MAX_TOC_JSON};
use crate::toc::Toc;
use crate::Compression;
use std::io::{self, BufRead, Read};

/// Bytes at the end of the blob: the skippable frame header and the footer.
pub const FOOTER_SIZE: usize = 48;
/// The footer proper (what the reference reads).
pub const FOOTER_BODY: usize = 40;
/// zstd skippable frame magic (0x184D2A50), as it appears on disk.
pub const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
/// zstd frame magic (0xFD2FB528), as it appears on disk.
pub const FRAME_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Last 8 bytes of a zstd:chunked blob.
pub const FOOTER_MAGIC: [u8; 8] = *b"GnUlInUx";
/// The only manifest type there is: a CRFS-style TOC.
pub const MANIFEST_TYPE_CRFS: u64 = 1;
/// The writer's default level (zstd's own default; the reference uses
/// klauspost's `SpeedDefault`, roughly zstd level 3).
pub const DEFAULT_LEVEL: i32 = 3;
/// Skippable frame header: magic and length.
const SKIPPABLE_HEADER: usize = 8;

pub use snapshot_labels::annotations::{
    ZSTD_CHUNKED_MANIFEST_CHECKSUM as MANIFEST_CHECKSUM_ANNOTATION,
    ZSTD_CHUNKED_MANIFEST_POSITION as MANIFEST_POSITION_ANNOTATION,
};

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

/// The zstd:chunked footer from the last 48 bytes of `tail`. `None` if the
/// tail does not end with the zstd:chunked magic at all (so other formats
/// can be tried); `Some(Err)` if it does but the footer is bad.
///
/// The returned `Footer::toc_offset` is where the TOC's skippable frame
/// starts (the end of the file data), so `toc_region` yields that frame.
pub fn parse_footer(tail: &[u8]) -> Option<Result<Footer>> {
    if tail.len() < FOOTER_SIZE {
        return None;
    }
    let f = &tail[tail.len() - FOOTER_SIZE..];
    if f[FOOTER_SIZE - 8..] != FOOTER_MAGIC {
        return None;
    }
    if f[..4] != SKIPPABLE_MAGIC || f[4..8] != (FOOTER_BODY as u32).to_le_bytes() {
        return Some(Err(Error::BadFooter(
            "zstd:chunked footer is not in a 40-byte skippable frame",
        )));
    }
    let body = &f[SKIPPABLE_HEADER..];
    let (toc_off, compressed) = (le64(&body[0..]), le64(&body[8..]));
    if le64(&body[24..]) != MANIFEST_TYPE_CRFS {
        return Some(Err(Error::BadFooter(
            "zstd:chunked manifest type is not 1 (TOC)",
        )));
    }
    if toc_off < SKIPPABLE_HEADER as u64 || toc_off > i64::MAX as u64 {
        return Some(Err(Error::BadFooter(
            "zstd:chunked TOC offset out of range",
        )));
    }
    if compressed > u32::MAX as u64 {
        return Some(Err(Error::BadFooter(
            "zstd:chunked TOC larger than a skippable frame can hold",
        )));
    }
    Some(Ok(Footer {
        toc_offset: toc_off - SKIPPABLE_HEADER as u64,
        size: FOOTER_SIZE,
        legacy: false,
        compression: Compression::Zstd,
        toc_size: Some(compressed + SKIPPABLE_HEADER as u64),
    }))
}

/// The 48 bytes that end a blob whose TOC frame starts at `toc_frame`
/// (the skippable header) and holds `compressed` bytes of a `json_len`-byte TOC.
pub fn write_footer(toc_frame: u64, compressed: u64, json_len: u64) -> [u8; FOOTER_SIZE] {
    let mut f = [0u8; FOOTER_SIZE];
    f[..4].copy_from_slice(&SKIPPABLE_MAGIC);
    f[4..8].copy_from_slice(&(FOOTER_BODY as u32).to_le_bytes());
    f[8..16].copy_from_slice(&(toc_frame + SKIPPABLE_HEADER as u64).to_le_bytes());
    f[16..24].copy_from_slice(&compressed.to_le_bytes());
    f[24..32].copy_from_slice(&json_len.to_le_bytes());
    f[32..40].copy_from_slice(&MANIFEST_TYPE_CRFS.to_le_bytes());
    f[40..48].copy_from_slice(&FOOTER_MAGIC);
    f
}

/// Is this TOC member (the bytes from the footer's TOC offset to the
/// footer) a zstd:chunked TOC frame?
pub fn is_toc_frame(member: &[u8]) -> bool {
    member.starts_with(&SKIPPABLE_MAGIC)
}

/// The compressed TOC inside the skippable frame, its length checked
/// against the frame header (a frame lying about its size is refused).
fn toc_payload(member: &[u8]) -> Result<&[u8]> {
    if member.len() < SKIPPABLE_HEADER || !is_toc_frame(member) {
        return Err(Error::BadTocMember(
            "zstd:chunked TOC is not a skippable frame".into(),
        ));
    }
    let declared = u32::from_le_bytes([member[4], member[5], member[6], member[7]]) as u64;
    let actual = (member.len() - SKIPPABLE_HEADER) as u64;
    if declared != actual {
        return Err(Error::TocFrameSize { declared, actual });
    }
    Ok(&member[SKIPPABLE_HEADER..])
}

/// `sha256:<hex>` of the compressed TOC: the value of the
/// `io.containers.zstd-chunked.manifest-checksum` annotation.
pub fn manifest_checksum(member: &[u8]) -> Result<String> {
    Ok(sha256_digest(toc_payload(member)?))
}

/// Decode the TOC frame: skippable header, one zstd frame of JSON. Returns
/// the TOC and the sha256 of its JSON (the TOC digest).
pub fn parse_toc_frame(member: &[u8]) -> Result<(Toc, String)> {
    let payload = toc_payload(member)?;
    if !payload.starts_with(&FRAME_MAGIC) {
        return Err(Error::BadTocMember(
            "zstd:chunked TOC frame does not hold a zstd frame".into(),
        ));
    }
    let zstd = |e: io::Error| Error::Zstd(e.to_string());
    let dec = ::zstd::stream::read::Decoder::with_buffer(payload)
        .map_err(zstd)?
        .single_frame();
    let mut json = Vec::new();
    // One byte over the cap tells "too large" from "exactly the cap".
    dec.take(MAX_TOC_JSON + 1)
        .read_to_end(&mut json)
        .map_err(zstd)?;
    if json.len() as u64 > MAX_TOC_JSON {
        return Err(Error::TocTooLarge {
            size: json.len() as u64,
            cap: MAX_TOC_JSON,
        });
    }
    let digest = sha256_digest(&json);
    let toc = Toc::from_json(&json)?;
    Ok((toc, digest))
}

/// The decoder for one chunk's frame: stops at the end of the frame, so
/// bytes after it (the next frame) are never read.
pub(crate) fn chunk_decoder<B: BufRead>(src: B) -> Result<impl Read> {
    Ok(::zstd::stream::read::Decoder::with_buffer(src)
        .map_err(|e| Error::Zstd(e.to_string()))?
        .single_frame())
}

/// One zstd frame of `raw` at `level`.
pub(crate) fn frame(raw: &[u8], level: i32) -> io::Result<Vec<u8>> {
    ::zstd::bulk::compress(raw, level)
}

/// The TOC's skippable frame and the footer for a blob whose file data ends
/// at `toc_frame`, plus the two zstd:chunked annotations.
pub(crate) struct TocTail {
    pub bytes: Vec<u8>,
    pub manifest_checksum: String,
    pub manifest_position: String,
}

pub(crate) fn toc_tail(json: &[u8], toc_frame: u64, level: i32) -> io::Result<TocTail> {
    let compressed = frame(json, level)?;
    let len = u32::try_from(compressed.len())
        .map_err(|_| io::Error::other("compressed TOC over 4 GiB"))?;
    let mut bytes = Vec::with_capacity(compressed.len() + SKIPPABLE_HEADER + FOOTER_SIZE);
    bytes.extend_from_slice(&SKIPPABLE_MAGIC);
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(&compressed);
    bytes.extend_from_slice(&write_footer(
        toc_frame,
        compressed.len() as u64,
        json.len() as u64,
    ));
    Ok(TocTail {
        manifest_checksum: sha256_digest(&compressed),
        manifest_position: format!(
            "{}:{}:{}:{}",
            toc_frame + SKIPPABLE_HEADER as u64,
            compressed.len(),
            json.len(),
            MANIFEST_TYPE_CRFS
        ),
        bytes,
    })
}

/// The `manifest-checksum` and `manifest-position` annotation values of a
/// zstd:chunked blob of `size` bytes, from its footer and TOC frame (for a
/// blob kept as it is, whose descriptor must not be trusted).
pub fn manifest_annotations<R: ReadAt + ?Sized>(r: &R, size: u64) -> Result<(String, String)> {
    if size < FOOTER_SIZE as u64 {
        return Err(Error::TooSmall(size));
    }
    let mut tail = [0u8; FOOTER_SIZE];
    read_exact_at(r, size - FOOTER_SIZE as u64, &mut tail)?;
    let footer = parse_footer(&tail).ok_or(Error::BadFooter("no zstd:chunked footer"))??;
    let region = toc_region(&footer, size)?;
    let mut member = vec![0u8; (region.end - region.start) as usize];
    read_exact_at(r, region.start, &mut member)?;
    let body = &tail[SKIPPABLE_HEADER..];
    let position = format!(
        "{}:{}:{}:{}",
        le64(&body[0..]),
        le64(&body[8..]),
        le64(&body[16..]),
        le64(&body[24..])
    );
    Ok((manifest_checksum(&member)?, position))
}

/// Is `level` one the writer accepts (zstd's 1..=22)?
pub fn valid_level(level: i32) -> bool {
    (1..=22).contains(&level)
}

#[cfg(test)]
mod tests;
