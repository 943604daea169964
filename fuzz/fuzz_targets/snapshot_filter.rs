//! containerd List filters come from any client of the snapshotter socket:
//! parsing must return InvalidArgument, never panic or blow up (regexps are
//! size-limited), and matching must not panic either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use snapshotter::filter::Filters;
use snapshotter::{Info, Kind};
use std::time::SystemTime;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let filters: Vec<&str> = text.split('\n').collect();
    if let Ok(f) = Filters::parse(&filters) {
        let info = Info {
            name: "sha256:abc".into(),
            parent: "p".into(),
            kind: Kind::Committed,
            labels: [("containerd.io/gc.root".to_string(), "x".to_string()), ("a.b".into(), "".into())].into(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        };
        let _ = f.matches(&info);
    }
});
