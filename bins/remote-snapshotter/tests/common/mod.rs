//! Starting the daemon binary for tests: by PID, in a scratch directory.
#![allow(dead_code)]

use e2e::process::{wait_until, Service};
use snapshotter_testsuite::GrpcApi;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub struct Daemon {
    pub svc: Service,
    pub sock: PathBuf,
}

/// A test that fails (or ends) with the daemon running stops it with SIGINT,
/// which unmounts its layers: SIGTERM would keep the mounts alive in the fd
/// holder for a next daemon, and the scratch dir's removal would then wait
/// on them.
impl Drop for Daemon {
    fn drop(&mut self) {
        if self.svc.is_running() {
            self.svc.signal(libc::SIGINT);
            wait_until(Duration::from_secs(10), || !self.svc.is_running());
        }
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_remote-snapshotter")
}

pub fn start(scratch: &Path, extra: &[&str]) -> Daemon {
    start_with_env(scratch, extra, &[])
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

/// Start the daemon with its metrics endpoint on a free 127.0.0.1 port;
/// returns the daemon and the endpoint's address.
pub fn start_with_metrics(scratch: &Path, extra: &[&str]) -> (Daemon, String) {
    let addr = format!("127.0.0.1:{}", e2e::free_port());
    let mut flags = vec!["--metrics-address", addr.as_str()];
    flags.extend_from_slice(extra);
    (start(scratch, &flags), addr)
}

/// The Prometheus text of the daemon's metrics endpoint at `addr`.
pub fn metrics(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// The value of counter `name` (without the `remote_snapshotter_` prefix
/// and `_total` suffix) in a metrics text, if present.
pub fn counter(text: &str, name: &str) -> Option<u64> {
    let key = format!("remote_snapshotter_{name}_total ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Start the daemon with extra environment (e.g. DOCKER_CONFIG).
pub fn start_with_env(scratch: &Path, extra: &[&str], env: &[(&str, &Path)]) -> Daemon {
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
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut svc = Service::spawn("remote-snapshotter", cmd, &scratch.join("daemon.log")).unwrap();
    let up = wait_until(Duration::from_secs(20), || {
        // Connectable, not merely present: a stale socket may be lying there.
        std::os::unix::net::UnixStream::connect(&sock).is_ok() || !svc.is_running()
    });
    let log = || std::fs::read_to_string(scratch.join("daemon.log")).unwrap_or_default();
    assert!(up && svc.is_running(), "daemon did not come up:\n{}", log());
    Daemon { svc, sock }
}

/// `ctr ARGS`, retried while containerd's client to a restarted daemon
/// still answers "connection refused" (it backs off for a few seconds) or
/// "connection closed" (the first call on the old connection);
/// any other failure, or 30 s of it, is returned as is.
pub fn ctr_when_reconnected(
    ctrd: &e2e::containerd::Containerd,
    args: &[&str],
) -> std::process::Output {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let out = ctrd.ctr(args);
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success()
            || !(err.contains("connection refused") || err.contains("connection closed"))
            || std::time::Instant::now() > deadline
        {
            return out;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Tears a test's stack down in order, also on a failed assert: containerd
/// first, then the daemon with SIGINT (which unmounts its layers), then
/// whatever is still mounted under the scratch dir.
pub struct Stack {
    pub ctrd: Option<e2e::containerd::Containerd>,
    pub daemon: Option<Daemon>,
    pub scratch: tempfile::TempDir,
    /// The daemon's metrics endpoint, if it serves one.
    pub metrics: Option<String>,
}

impl Stack {
    /// The usual stack in `scratch`: our daemon with `config` as its
    /// config.toml (`None`: the default of [`start_with_env`]) and a metrics
    /// endpoint, and containerd using it as its `remote` snapshotter.
    pub fn start(scratch: tempfile::TempDir, config: Option<&str>) -> Stack {
        if let Some(c) = config {
            std::fs::write(scratch.path().join("config.toml"), c).unwrap();
        }
        let (daemon, metrics) = start_with_metrics(scratch.path(), &[]);
        let ctrd = e2e::containerd::Containerd::start(scratch.path(), Some(&daemon.sock));
        Stack {
            ctrd: Some(ctrd),
            daemon: Some(daemon),
            scratch,
            metrics: Some(metrics),
        }
    }

    pub fn ctrd(&self) -> &e2e::containerd::Containerd {
        self.ctrd.as_ref().expect("containerd runs")
    }

    pub fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the daemon runs")
    }

    pub fn dir(&self) -> &Path {
        self.scratch.path()
    }

    /// The metrics text (the stack must have been started with an endpoint).
    pub fn metrics(&self) -> String {
        metrics(self.metrics.as_deref().expect("a metrics endpoint"))
    }

    /// Counter `name` (see [`counter`]) as the daemon reports it now.
    pub fn counter(&self, name: &str) -> Option<u64> {
        counter(&self.metrics(), name)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir().join("daemon.log")).unwrap_or_default()
    }

    /// `rsnap pull --plain-http IMAGE` into this containerd: whether it
    /// worked, and its output (stdout and stderr).
    pub fn pull(&self, image: &str) -> (bool, String) {
        let sock = self.ctrd().socket.display().to_string();
        let (ok, out, err) = e2e::image::rsnap(&[
            "pull",
            "-a",
            &sock,
            "-n",
            e2e::containerd::NAMESPACE,
            "--plain-http",
            image,
        ]);
        (ok, format!("{out}{err}"))
    }

    /// [`Stack::pull`] that must work; its output.
    pub fn pull_ok(&self, image: &str) -> String {
        let (ok, out) = self.pull(image);
        assert!(ok, "rsnap pull {image}: {out}");
        out
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        drop(self.ctrd.take());
        if let Some(mut d) = self.daemon.take() {
            d.svc.signal(libc::SIGINT);
            wait_until(Duration::from_secs(15), || !d.svc.is_running());
        }
        e2e::containerd::unmount_under(self.scratch.path());
    }
}

/// Images for the CRI keychain tests (`cri_keychain`, `cri_keychain_token`).
pub mod cri_image {
    use std::path::Path;

    /// A two-layer eStargz image in OCI layout `dir/dst` (tag v1): busybox
    /// (with `marker` added, so that two such images share no layer) and 8 MB
    /// of data of which the image's command reads one small file and hashes a
    /// 300 kB one. Returns the gzip image's size and the command's output.
    pub fn build_image(dir: &Path, marker: &str, seed: u64) -> (u64, String) {
        let src = dir.join("src");
        let mid = e2e::image::pseudo_random(300_000, seed);
        let mut base = e2e::image::busybox_layer();
        base.file("etc/marker", marker, 0o644);
        let mut data = e2e::image::LayerBuilder::new();
        data.dir("data", 0o755)
            .file(
                "data/big.bin",
                e2e::image::pseudo_random(8 << 20, seed + 1),
                0o644,
            )
            .file("data/small.txt", format!("{marker}\n"), 0o644)
            .file("data/mid.bin", mid.clone(), 0o644);
        let layers = vec![base.tar_gz(), data.tar_gz()];
        let size = layers.iter().map(|l| l.len() as u64).sum();
        e2e::image::write_oci_layout(
            &src,
            "v1",
            layers,
            &[
                "/bin/sh",
                "-c",
                "cat /data/small.txt; sha256sum /data/mid.bin",
            ],
        );
        e2e::image::rsnap_ok(&[
            "convert",
            &format!("oci:{}:v1", src.display()),
            &format!("oci:{}:v1", dir.join("dst").display()),
        ]);
        let expected = format!(
            "{marker}\n{}  /data/mid.bin\n",
            e2e::image::sha256_digest(&mid).trim_start_matches("sha256:")
        );
        (size, expected)
    }
}
