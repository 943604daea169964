//! Arbitrary bytes as a seekable gzip index (`gzindex`): the file as given,
//! or (first byte 0) the bytes as the decompressed body, so the fuzzer gets
//! past the gzip CRC to the header, windows and file table. Whatever
//! parses is turned into the served tree and its pieces are inflated from
//! the input itself as the "layer": typed errors, never a panic, never a
//! piece handed out that does not match its digest.
#![no_main]

use gzindex::{GzIndex, SpanDecoder, MAGIC};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use std::io::Write;

fuzz_target!(|data: &[u8]| {
    let file = match data.split_first() {
        Some((0, body)) => {
            let mut out = MAGIC.to_vec();
            let mut gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
            gz.write_all(body).unwrap();
            gz.finish().unwrap();
            out
        }
        _ => data.to_vec(),
    };
    let Ok(idx) = GzIndex::parse(&file) else { return };
    let Ok(tree) = idx.layer_index() else { return };
    let dec = SpanDecoder::new(&idx);
    let blob = data;
    for (_, c) in tree.all_chunks().take(64) {
        let (s, e) = (c.blob_offset as usize, (c.blob_end as usize).min(blob.len()));
        if s >= e {
            continue;
        }
        for r in dec.decode(&blob[s..e], &[c]) {
            if let Ok(piece) = r {
                let d = format!("sha256:{}", hex::encode(Sha256::digest(&piece)));
                assert_eq!(d, c.digest);
                assert_eq!(piece.len() as u64, c.size);
            }
        }
    }
});
