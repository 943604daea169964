//! Arbitrary bytes through every reader entry point: footer, TOC member,
//! TOC JSON -> Index, whole-blob open + verification, chunk decompression.
//! Each must return a typed error or a result, never panic or blow up.
#![no_main]

use estargz::index::Chunk;
use estargz::{decompress_chunk, parse_footer, parse_toc_member, Index, Toc};
use libfuzzer_sys::fuzz_target;

fn index_checks(idx: &Index) {
    for (id, n) in idx.nodes.iter().enumerate() {
        let id = id as u32;
        let mut pos = 0;
        for c in &n.chunks {
            assert_eq!(c.file_offset, pos);
            assert!(c.blob_offset < c.blob_end && c.blob_end <= idx.toc_offset);
            pos += c.size;
        }
        assert_eq!(pos, if n.chunks.is_empty() { pos } else { n.size });
        if n.size > 0 && !n.chunks.is_empty() {
            assert!(idx.chunk_for(id, n.size - 1).is_some());
            assert_eq!(idx.chunks_in(id, 0..n.size).len(), n.chunks.len());
        }
        for &child in n.children.values() {
            assert!((child as usize) < idx.nodes.len());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => {
            // The TOC JSON alone, placed at an offset taken from the input.
            if let Ok(toc) = Toc::from_json(rest) {
                let _ = toc.to_json();
                if let Ok(idx) = Index::from_toc(&toc, 1 << 20, 2 << 20) {
                    index_checks(&idx);
                    for e in &toc.entries {
                        let _ = idx.lookup(&e.name);
                    }
                }
            }
        }
        1 => {
            // A whole blob: open, then verify every chunk.
            if let Ok(layer) = estargz::open(rest, rest.len() as u64, None) {
                index_checks(&layer.index);
                let _ = layer.verify_all();
            }
        }
        2 => {
            let _ = parse_footer(rest);
            if let Ok((toc, _)) = parse_toc_member(rest) {
                let _ = Index::from_toc(&toc, rest.len() as u64, rest.len() as u64);
            }
        }
        _ => {
            // One gzip member with chunk parameters from the first bytes.
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
                compression: estargz::Compression::Gzip,
                verified: rest[3] & 0x80 == 0,
            };
            let _ = decompress_chunk(&rest[4..], &c);
        }
    }
});
