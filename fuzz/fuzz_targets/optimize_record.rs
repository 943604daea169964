//! The `optimize` record parser (`rsnap optimize --reuse-record FILE`) on
//! arbitrary bytes: an error or a record whose fields passed the checks,
//! never a panic; a parsed record survives its own round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use optimize::Record;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Record::parse(data) {
        for l in &r.layers {
            assert!(l.digest.starts_with("sha256:"));
            for f in &l.files {
                assert!(!f.starts_with('/') && !f.split('/').any(|c| c == ".."));
            }
        }
        assert_eq!(Record::parse(r.to_json().as_bytes()).ok(), Some(r));
    }
});
