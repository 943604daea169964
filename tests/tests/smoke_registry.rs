//! The harness itself: a real registry starts, answers /v2/, and stops by PID.

use std::io::{Read, Write};

#[test]
fn registry_starts_and_answers() {
    if !e2e::require_root_tools(&["docker-registry"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let reg = e2e::registry::Registry::start(scratch.path());
    let mut s = std::net::TcpStream::connect(reg.host()).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
}
