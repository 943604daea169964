//! The footer: an empty gzip member at the very end of the blob whose Extra
//! field names the TOC offset.
//!
//! eStargz footer, 51 bytes (what we write, byte-identical to the Go reference):
//!
//! | bytes | field | value |
//! |---|---|---|
//! | 0..4   | gzip ID1 ID2 CM FLG | `1f 8b 08 04` (deflate, FEXTRA) |
//! | 4..8   | MTIME | 0 |
//! | 8      | XFL | 0 |
//! | 9      | OS | `ff` (unknown) |
//! | 10..12 | XLEN (LE) | 26 |
//! | 12..14 | SI1 SI2 | `S` `G` |
//! | 14..16 | LEN (LE) | 22 |
//! | 16..38 | subfield | `%016x` TOC offset + `STARGZ` |
//! | 38..43 | deflate | `01 00 00 ff ff` (final empty stored block) |
//! | 43..47 | CRC32 (LE) | 0 |
//! | 47..51 | ISIZE (LE) | 0 |
//!
//! Legacy CRFS stargz footer, 47 bytes: the same without SI1/SI2/LEN, so
//! XLEN is 22 and the Extra field is directly `%016xSTARGZ`.
//!
//! Parsing checks the gzip header and the Extra field only (as the reference
//! does); the empty deflate body carries no information.
//!
//! `parse_footer` also recognises the zstd:chunked footer (`crate::zstd`),
//! so one call tells every format this crate reads by its tail.

use crate::error::{Error, Result};
pub use crate::tail::Footer;
use crate::Compression;

/// Size of the eStargz footer.
pub const FOOTER_SIZE: usize = 51;
/// Size of the legacy stargz footer.
pub const LEGACY_FOOTER_SIZE: usize = 47;

const MAGIC: &[u8; 6] = b"STARGZ";
const FEXTRA: u8 = 0x04;

/// The 51 footer bytes for a TOC at `toc_offset`.
pub fn write_footer(toc_offset: u64) -> [u8; FOOTER_SIZE] {
    let mut f = [0u8; FOOTER_SIZE];
    f[..4].copy_from_slice(&[0x1f, 0x8b, 0x08, FEXTRA]);
    f[9] = 0xff;
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12] = b'S';
    f[13] = b'G';
    f[14..16].copy_from_slice(&22u16.to_le_bytes());
    f[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f[38..43].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    // CRC32 and ISIZE of empty input are both zero: already there.
    f
}

/// The 47 bytes of a legacy CRFS stargz footer for a TOC at `toc_offset`:
/// the eStargz footer without the `SG` subfield header (XLEN 22).
pub fn write_legacy_footer(toc_offset: u64) -> [u8; LEGACY_FOOTER_SIZE] {
    let mut f = [0u8; LEGACY_FOOTER_SIZE];
    f[..4].copy_from_slice(&[0x1f, 0x8b, 0x08, FEXTRA]);
    f[9] = 0xff;
    f[10..12].copy_from_slice(&22u16.to_le_bytes());
    f[12..34].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f[34..39].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    f
}

/// Parse the footer from the tail of a blob: the last N >= 51 bytes, or the
/// whole blob if it is smaller. Tries eStargz first, then zstd:chunked,
/// then legacy stargz.
pub fn parse_footer(tail: &[u8]) -> Result<Footer> {
    if tail.len() < LEGACY_FOOTER_SIZE {
        return Err(Error::TooSmall(tail.len() as u64));
    }
    if tail.len() >= FOOTER_SIZE {
        if let Some(off) = parse_estargz(&tail[tail.len() - FOOTER_SIZE..]) {
            return Ok(Footer {
                toc_offset: off?,
                size: FOOTER_SIZE,
                legacy: false,
                compression: Compression::Gzip,
                toc_size: None,
            });
        }
    }
    if let Some(f) = crate::zstd::parse_footer(tail) {
        return f;
    }
    match parse_legacy(&tail[tail.len() - LEGACY_FOOTER_SIZE..]) {
        Some(off) => Ok(Footer {
            toc_offset: off?,
            size: LEGACY_FOOTER_SIZE,
            legacy: true,
            compression: Compression::Gzip,
            toc_size: None,
        }),
        None if crate::external::is_footer(tail) => Err(Error::ExternalToc(
            "the blob's TOC is not in it but in a separate TOC image (external TOC)".into(),
        )),
        None => Err(Error::BadFooter(
            "no STARGZ gzip Extra field or zstd:chunked footer at the end of the blob",
        )),
    }
}

/// `None` if this is not an eStargz footer at all; `Some(Err)` if it is one
/// with a bad offset.
fn parse_estargz(f: &[u8]) -> Option<Result<u64>> {
    let extra = gzip_extra(f, 26)?;
    if extra[..2] != *b"SG" || u16::from_le_bytes([extra[2], extra[3]]) != 22 {
        return None;
    }
    parse_subfield(&extra[4..])
}

fn parse_legacy(f: &[u8]) -> Option<Result<u64>> {
    parse_subfield(gzip_extra(f, 22)?)
}

/// The Extra field of a gzip header at the start of `f`, if it has FEXTRA
/// and exactly `xlen` bytes of it.
fn gzip_extra(f: &[u8], xlen: usize) -> Option<&[u8]> {
    if f[0] != 0x1f || f[1] != 0x8b || f[2] != 8 || f[3] & FEXTRA == 0 {
        return None;
    }
    if u16::from_le_bytes([f[10], f[11]]) as usize != xlen {
        return None;
    }
    f.get(12..12 + xlen)
}

fn parse_subfield(s: &[u8]) -> Option<Result<u64>> {
    if s.len() != 22 || s[16..] != *MAGIC {
        return None;
    }
    let hex = &s[..16];
    if !hex.iter().all(u8::is_ascii_hexdigit) {
        return Some(Err(Error::BadFooter("TOC offset is not 16 hex digits")));
    }
    // 16 hex digits always fit a u64; the reference reads it as int64.
    let off = u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    if off > i64::MAX as u64 {
        return Some(Err(Error::BadFooter("TOC offset is negative")));
    }
    Some(Ok(off))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn footer_bytes_match_reference_layout() {
        let f = write_footer(0x1234);
        let want: Vec<u8> = [
            &[
                0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
            ][..],
            b"0000000000001234STARGZ",
            &[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0],
        ]
        .concat();
        assert_eq!(f.as_slice(), want.as_slice());
        // A valid, empty gzip member.
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&f[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn round_trip_and_tail_longer_than_footer() {
        for off in [0u64, 1, 0xdead_beef, i64::MAX as u64] {
            let mut tail = vec![7u8; 100];
            tail.extend_from_slice(&write_footer(off));
            let f = parse_footer(&tail).unwrap();
            assert_eq!(
                f,
                Footer {
                    toc_offset: off,
                    size: 51,
                    legacy: false,
                    compression: Compression::Gzip,
                    toc_size: None,
                }
            );
        }
    }

    #[test]
    fn legacy_footer() {
        let mut f = vec![0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 0xff, 22, 0];
        f.extend_from_slice(b"00000000000000ffSTARGZ");
        f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(f.len(), LEGACY_FOOTER_SIZE);
        assert_eq!(f, write_legacy_footer(255));
        // A valid, empty gzip member, like the eStargz one.
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&f[..])
            .read_to_end(&mut out)
            .unwrap();
        assert!(out.is_empty());
        let got = parse_footer(&f).unwrap();
        assert_eq!(
            got,
            Footer {
                toc_offset: 255,
                size: 47,
                legacy: true,
                compression: Compression::Gzip,
                toc_size: None,
            }
        );
        let mut longer = vec![0u8; 10];
        longer.extend_from_slice(&f);
        assert_eq!(parse_footer(&longer).unwrap().toc_offset, 255);
    }

    #[test]
    fn bad_footers_are_typed_errors() {
        assert!(matches!(parse_footer(&[0u8; 10]), Err(Error::TooSmall(10))));
        assert!(matches!(parse_footer(&[0u8; 51]), Err(Error::BadFooter(_))));
        let mut f = write_footer(5);
        f[20] = b'z';
        assert!(matches!(parse_footer(&f), Err(Error::BadFooter(_))));
        let mut f = write_footer(5);
        f[16..32].copy_from_slice(b"ffffffffffffffff");
        assert!(matches!(parse_footer(&f), Err(Error::BadFooter(_))));
        let mut f = write_footer(5);
        f[0] = 0;
        assert!(matches!(parse_footer(&f), Err(Error::BadFooter(_))));
    }
}
