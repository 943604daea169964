//! The conformance suite over the real daemon's socket, and the daemon's
//! lifecycle: socket mode, restart with state kept, stale socket, metrics.

mod common;

use common::{api, start, stop};
use snapshotter_testsuite::{self as testsuite, labels, Api};
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_over_the_socket() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let mode = std::fs::metadata(&d.sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "socket mode");
    let a = api(&d).await;
    testsuite::run_all(&a, &dir.path().join("mnt")).await;
    assert!(a.list(&[]).await.unwrap().is_empty());
    stop(d, libc::SIGTERM);
    assert!(e2e::containerd::mounts_under(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_state_and_replaces_stale_socket() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    {
        let a = api(&d).await;
        a.prepare("a", "", &labels(&[("k", "v")])).await.unwrap();
        a.commit("A", "a", &labels(&[("k", "v")])).await.unwrap();
        a.prepare("b", "A", &labels(&[])).await.unwrap();
    }
    // A second daemon must refuse a socket a live one answers on.
    let mut cmd = Command::new(common::bin());
    cmd.arg("--address")
        .arg(&d.sock)
        .arg("--root")
        .arg(dir.path().join("root2"));
    cmd.arg("--config").arg(dir.path().join("config.toml"));
    let out = cmd.output().unwrap();
    assert!(
        !out.status.success(),
        "second daemon on a live socket must fail"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGKILL leaves a stale socket behind; the next start replaces it.
    let sock = d.sock.clone();
    let mut d = d;
    d.svc.kill();
    assert!(sock.exists());
    let d = start(dir.path(), &[]);
    let a = api(&d).await;
    let i = a.stat("A").await.unwrap();
    assert_eq!(i.labels, labels(&[("k", "v")]));
    assert_eq!(a.stat("b").await.unwrap().parent, "A");
    a.mounts("b").await.unwrap();
    stop(d, libc::SIGINT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_and_bad_config() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = e2e::free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = start(dir.path(), &["--metrics-address", &addr]);
    // A remote-looking prepare falls back (no remote fs yet) and is counted.
    let a = api(&d).await;
    let l = labels(&[
        ("containerd.io/snapshot.ref", "sha256:chain"),
        ("containerd.io/snapshot/cri.layer-digest", "sha256:l"),
    ]);
    let m = a
        .prepare("fb", "", &l)
        .await
        .expect("fallback answers mounts");
    assert_eq!(m[0].fs_type, "bind");
    let text = http_get(&addr);
    assert!(
        text.contains("remote_snapshotter_fallback_not_remote_total 1"),
        "{text}"
    );
    stop(d, libc::SIGTERM);

    std::fs::write(dir.path().join("bad.toml"), "noprefetch = \"yes\"").unwrap();
    let out = Command::new(common::bin())
        .arg("--address")
        .arg(dir.path().join("x.sock"))
        .arg("--root")
        .arg(dir.path().join("root3"))
        .arg("--config")
        .arg(dir.path().join("bad.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a bad config is an error");
}

fn http_get(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
