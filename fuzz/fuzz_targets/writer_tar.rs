//! Arbitrary bytes as the writer's tar (or tar.gz) input. Whatever it
//! accepts must come out as a blob our own reader opens and verifies.
#![no_main]

use estargz::writer::{convert, convert_tar_at, WriterOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&knob, input)) = data.split_first() else { return };
    let opts = WriterOptions {
        chunk_size: u64::from(knob % 64) + 1,
        compression_level: u32::from(knob / 64),
        prioritized_files: if knob & 1 == 1 { vec!["a".into(), "b/c".into()] } else { vec![] },
        batch_bytes: 4096,
        spool_dir: None,
        ..Default::default()
    };
    let mut blob = Vec::new();
    // Plain tars skip the spool file (faster); gzip goes the whole way.
    let r = if input.starts_with(&[0x1f, 0x8b]) {
        convert(input, &mut blob, &opts)
    } else {
        convert_tar_at(input, input.len() as u64, &mut blob, &opts)
    };
    if let Ok(report) = r {
        assert_eq!(report.blob_size, blob.len() as u64);
        let layer = estargz::open(&blob[..], blob.len() as u64, Some(&report.toc_digest))
            .expect("the writer's output opens");
        layer.verify_all().expect("the writer's output verifies");
    }
});
