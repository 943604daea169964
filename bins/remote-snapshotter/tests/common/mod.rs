//! Starting the daemon binary for tests: by PID, in a scratch directory.
#![allow(dead_code)]

use e2e::process::{wait_until, Service};
use snapshotter::testsuite::GrpcApi;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Daemon {
    pub svc: Service,
    pub sock: PathBuf,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_remote-snapshotter")
}

pub fn start(scratch: &Path, extra: &[&str]) -> Daemon {
    let sock = scratch.join("run/rs.sock");
    let cfg = scratch.join("config.toml");
    if !cfg.exists() {
        std::fs::write(&cfg, "noprefetch = true\n[blob]\nmax_retries = 2\n").unwrap();
    }
    let mut cmd = Command::new(bin());
    cmd.arg("--address")
        .arg(&sock)
        .arg("--root")
        .arg(scratch.join("root"))
        .arg("--config")
        .arg(&cfg);
    cmd.args(["--log-level", "debug"]).args(extra);
    let mut svc = Service::spawn("remote-snapshotter", cmd, &scratch.join("daemon.log")).unwrap();
    let up = wait_until(Duration::from_secs(20), || {
        // Connectable, not merely present: a stale socket may be lying there.
        std::os::unix::net::UnixStream::connect(&sock).is_ok() || !svc.is_running()
    });
    let log = || std::fs::read_to_string(scratch.join("daemon.log")).unwrap_or_default();
    assert!(up && svc.is_running(), "daemon did not come up:\n{}", log());
    Daemon { svc, sock }
}

pub async fn api(d: &Daemon) -> GrpcApi {
    GrpcApi(
        snapshotter::client::connect_unix(&d.sock)
            .await
            .expect("connect"),
    )
}

pub fn stop(mut d: Daemon, sig: i32) {
    d.svc.signal(sig);
    assert!(
        wait_until(Duration::from_secs(15), || !d.svc.is_running()),
        "daemon did not exit on signal {sig}"
    );
    assert!(!d.sock.exists(), "socket removed on exit");
}
