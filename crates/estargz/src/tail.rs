//! The end of a blob, whatever its format: what its footer says (`Footer`,
//! filled in by `footer`, `zstd` or `external`) and the TOC region that
//! names, under the size caps every format shares.

use crate::error::{Error, Result};
use crate::Compression;

/// Largest uncompressed TOC JSON we accept.
pub const MAX_TOC_JSON: u64 = 64 << 20;
/// Largest compressed TOC member we fetch: stored (level 0) JSON grows a little.
pub const MAX_TOC_MEMBER: u64 = MAX_TOC_JSON + (MAX_TOC_JSON >> 8) + 4096;

/// What a footer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footer {
    /// Blob offset of the gzip member holding the TOC tar entry.
    pub toc_offset: u64,
    /// Bytes the footer takes at the end of the blob (51 or 47).
    pub size: usize,
    /// True for the 47-byte CRFS footer.
    pub legacy: bool,
    /// How the layer's chunks and TOC are compressed.
    pub compression: Compression,
    /// Length of the TOC region when the footer states it (zstd:chunked);
    /// `toc_region` checks it against the bytes before the footer.
    pub toc_size: Option<u64>,
}

/// Where the TOC member is: `toc_offset..end` (end = start of the footer),
/// checked against the blob size and the cap.
pub fn toc_region(footer: &Footer, blob_size: u64) -> Result<std::ops::Range<u64>> {
    let end = blob_size
        .checked_sub(footer.size as u64)
        .ok_or(Error::TooSmall(blob_size))?;
    if footer.toc_offset >= end {
        return Err(Error::TocOffsetOutOfRange {
            toc_offset: footer.toc_offset,
            limit: end,
        });
    }
    let len = end - footer.toc_offset;
    if let Some(declared) = footer.toc_size {
        // zstd:chunked states the TOC's length: nothing may sit between
        // the TOC and the footer, and the TOC may not overlap the footer.
        if declared != len {
            return Err(Error::TocFrameSize {
                declared: declared.saturating_sub(8),
                actual: len.saturating_sub(8),
            });
        }
    }
    if len > MAX_TOC_MEMBER {
        return Err(Error::TocTooLarge {
            size: len,
            cap: MAX_TOC_MEMBER,
        });
    }
    Ok(footer.toc_offset..end)
}
