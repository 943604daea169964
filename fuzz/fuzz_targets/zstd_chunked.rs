//! zstd:chunked bytes through every reader entry point: the 48-byte footer,
//! the skippable-frame TOC, a whole blob (open + verify every chunk) and one
//! chunk's frame. Each must return a typed error or a result, never panic,
//! hang or allocate without bound.
#![no_main]

use estargz::index::Chunk;
use estargz::{decompress_chunk, parse_footer, parse_toc_member, Compression, Index};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 3 {
        0 => {
            // A whole blob: footer, TOC region, TOC frame, index, every chunk.
            if let Ok(layer) = estargz::open(rest, rest.len() as u64, None) {
                for (_, c) in layer.index.all_chunks() {
                    assert!(c.blob_offset < c.blob_end && c.blob_end <= layer.index.toc_offset);
                }
                let _ = layer.verify_all();
            }
        }
        1 => {
            // Footer and TOC frame parsed on their own.
            if let Ok(f) = parse_footer(rest) {
                let _ = estargz::reader::toc_region(&f, rest.len() as u64);
            }
            let _ = estargz::zstd::manifest_checksum(rest);
            if let Ok((toc, _)) = parse_toc_member(rest) {
                let _ = Index::from_toc_as(&toc, rest.len() as u64, rest.len() as u64, Compression::Zstd);
            }
        }
        _ => {
            // One zstd frame with chunk parameters from the first bytes.
            if rest.len() < 4 {
                return;
            }
            let c = Chunk {
                blob_offset: 0,
                blob_end: rest.len() as u64,
                inner_offset: u64::from(rest[0]) * 3,
                file_offset: 0,
                size: u64::from(u16::from_le_bytes([rest[1], rest[2]])) << (rest[3] % 32),
                digest: "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".into(),
                compression: Compression::Zstd,
                verified: true,
            };
            let _ = decompress_chunk(&rest[4..], &c);
        }
    }
});
