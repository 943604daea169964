//! gRPC clients that dial the daemon's socket by its path send that path as
//! HTTP/2 `:authority` (grpc-go a plain path, grpc-java and Python grpc
//! from 1.57 on a percent-encoded one). h2 alone refuses such a request with
//! RST_STREAM(PROTOCOL_ERROR); the daemon must answer it like any other.
//! A hand-written HTTP/2 client (`e2e::grpcraw`) sends exactly such requests
//! to the real daemon.

mod common;

use e2e::grpcraw::{percent_encode, proto_strings, unary, Reply};

const STAT: &str = "/containerd.services.snapshots.v1.Snapshots/Stat";

fn stat_missing(sock: &std::path::Path, authority: &str) -> Reply {
    // StatSnapshotRequest { snapshotter: "remote", key: "no-such-key" }
    let msg = proto_strings(&[(1, "remote"), (2, "no-such-key")]);
    unary(sock, authority, STAT, &msg)
        .unwrap_or_else(|e| panic!("call with :authority {authority:?}: {e}"))
}

#[test]
fn requests_with_a_socket_path_as_authority_are_served() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let daemon = common::start(scratch.path(), &[]);
    let path = daemon.sock.to_str().unwrap().to_string();
    for authority in [
        "localhost".to_string(),
        path.clone(),
        percent_encode(&path),
        format!("unix:{path}"),
        "localhost".to_string(),
    ] {
        let reply = stat_missing(&daemon.sock, &authority);
        assert_eq!(reply.reset, None, ":authority {authority:?}: {reply:?}");
        assert_eq!(
            reply.header(":status"),
            Some("200"),
            "{authority:?}: {reply:?}"
        );
        // NotFound from the service itself: the request reached the handler.
        assert_eq!(
            reply.header("grpc-status"),
            Some("5"),
            "{authority:?}: {reply:?}"
        );
    }
    common::stop(daemon, libc::SIGTERM);
}
