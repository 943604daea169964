//! The `oci-layout` crate's parsing on arbitrary bytes: index.json / image
//! index, manifest, config diff IDs, `oci:DIR:TAG` references and digests.
//! Each must return an error or a result, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use oci_layout::*;

fuzz_target!(|data: &[u8]| {
    // Three documents separated by NUL bytes: index, manifest, config.
    let mut parts = data.splitn(3, |b| *b == 0);
    let (a, b, c) = (parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]), parts.next().unwrap_or(&[]));
    if let Ok(s) = std::str::from_utf8(a) {
        if let Ok(r) = OciRef::parse(s) {
            if let Some(t) = &r.tag {
                assert!(valid_tag(t));
            }
        }
        let _ = check_digest(s);
        let _ = parse_digest(s);
    }
    if let Ok(idx) = serde_json::from_slice::<serde_json::Value>(a) {
        if let Ok(ms) = parse_index(&idx) {
            for m in &ms {
                assert!(check_digest(m.digest().as_ref()).is_ok());
                let _ = m.is_index();
            }
            let tag = std::str::from_utf8(b).ok();
            let _ = select_tag(ms, tag);
        }
    }
    let mut layers = 0;
    if let Ok(m) = serde_json::from_slice::<serde_json::Value>(b) {
        if let Ok(p) = parse_manifest(&m) {
            assert!(check_digest(p.config.digest().as_ref()).is_ok());
            layers = p.layers.len();
        }
    }
    if let Ok(cfg) = serde_json::from_slice::<serde_json::Value>(c) {
        if let Ok(ids) = parse_diff_ids(&cfg, layers) {
            assert_eq!(ids.len(), layers);
        }
    }
});
