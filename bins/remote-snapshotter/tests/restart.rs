//! Mounts that outlive the daemon, with real parts (docker-registry,
//! containerd, runc, FUSE): a container reads a large file in a loop and
//! checks every checksum while the daemon is upgraded to another binary
//! (SIGTERM, then the copy starts), SIGKILLed and restarted, and SIGKILLed
//! together with containerd. And a cached image starts after a daemon
//! restart while its registry is down; uncached reads fail with EIO in
//! bounded time and succeed once the registry is back.
//!
//! Times are printed as `FIGURE ...` lines (docs/reliability.md).

mod common;

use common::Stack;
use e2e::containerd::{mounts_under, unique_id, Containerd, NAMESPACE};
use e2e::image::LayerBuilder;
use e2e::image::{busybox_layer, pseudo_random, rsnap_ok, sha256_digest, write_oci_layout};
use e2e::process::{wait_until, Service};
use e2e::registry::{skopeo_push, Registry, RegistryOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TOOLS: &[&str] = &["docker-registry", "containerd", "ctr", "runc", "skopeo"];
const FETCH_TIMEOUT: u64 = 3;
const BIG: &str = "/d/big.bin";
const BIG_BYTES: usize = 8 << 20;
const SMALL: usize = 8;

fn small(i: usize) -> String {
    format!("/d/s{i}.bin")
}

fn hex(data: &[u8]) -> String {
    sha256_digest(data)
        .trim_start_matches("sha256:")
        .to_string()
}

/// busybox + a data layer: one large file and a few small ones.
fn build_image(scratch: &Path) -> (PathBuf, Vec<u8>, Vec<Vec<u8>>) {
    let src = scratch.join("src");
    let dst = scratch.join("dst");
    let big = pseudo_random(BIG_BYTES, 4242);
    let smalls: Vec<Vec<u8>> = (0..SMALL)
        .map(|i| pseudo_random(200_000, 3001 + 2 * i as u64))
        .collect();
    let mut l = LayerBuilder::new();
    l.dir("d", 0o755).file(&BIG[1..], big.clone(), 0o644);
    for (i, s) in smalls.iter().enumerate() {
        l.file(&small(i)[1..], s.clone(), 0o644);
    }
    write_oci_layout(
        &src,
        "v1",
        vec![busybox_layer().tar_gz(), l.tar_gz()],
        &["/bin/sh"],
    );
    rsnap_ok(&[
        "convert",
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:v1", dst.display()),
    ]);
    (dst, big, smalls)
}

fn write_config(scratch: &Path) {
    std::fs::write(
        scratch.join("config.toml"),
        format!(
            "noprefetch = true\nno_background_fetch = true\n[blob]\nmax_retries = 1\n\
             min_wait_msec = 100\nfetching_timeout_sec = {FETCH_TIMEOUT}\n"
        ),
    )
    .unwrap();
}

/// The daemon from `bin` (the built one, or a copy: an upgrade).
fn start_daemon(scratch: &Path, bin: &Path, metrics: &str) -> common::Daemon {
    let sock = scratch.join("run/rs.sock");
    let mut cmd = Command::new(bin);
    cmd.arg("--address")
        .arg(&sock)
        .arg("--root")
        .arg(scratch.join("root"))
        .arg("--config")
        .arg(scratch.join("config.toml"))
        .args(["--log-level", "debug", "--metrics-address", metrics]);
    let mut svc = Service::spawn("remote-snapshotter", cmd, &scratch.join("daemon.log")).unwrap();
    let up = wait_until(Duration::from_secs(20), || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok() || !svc.is_running()
    });
    assert!(
        up && svc.is_running(),
        "daemon did not come up:\n{}",
        std::fs::read_to_string(scratch.join("daemon.log")).unwrap_or_default()
    );
    common::Daemon { svc, sock }
}

fn pull(ctrd: &Containerd, reference: &str) {
    let out = rsnap_ok(&[
        "pull",
        "-a",
        ctrd.socket.to_str().unwrap(),
        "-n",
        NAMESPACE,
        "--plain-http",
        reference,
    ]);
    assert!(out.contains("2 lazy, 0 fetched"), "not lazy: {out}");
}

fn exec(ctrd: &Containerd, id: &str, cmd: &str) -> std::process::Output {
    ctrd.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        &unique_id("x"),
        id,
        "sh",
        "-c",
        cmd,
    ])
}

/// (reads with the right checksum, failed or wrong reads) of the loop.
fn counts(ctrd: &Containerd, id: &str) -> (u64, u64) {
    for _ in 0..50 {
        let out = exec(ctrd, id, "cat /tmp/count");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(|v| v.parse::<u64>());
        if let (Some(Ok(ok)), Some(Ok(bad))) = (it.next(), it.next()) {
            return (ok, bad);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the reading container reports no counts");
}

/// Wait until the loop has done `more` reads past `from`.
fn progress(ctrd: &Containerd, id: &str, from: u64, more: u64, within: Duration) -> (u64, u64) {
    let deadline = Instant::now() + within;
    loop {
        let c = counts(ctrd, id);
        if c.0 + c.1 >= from + more || Instant::now() > deadline {
            return c;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Drops the big file's pages from every mount under `dir` every few ms,
/// so each read of the loop reaches the daemon (FUSE keeps a layer's pages).
struct CacheDropper {
    stop: Arc<AtomicBool>,
    t: Option<std::thread::JoinHandle<()>>,
}

impl CacheDropper {
    fn start(dir: &Path) -> CacheDropper {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, dir) = (stop.clone(), dir.to_path_buf());
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for m in mounts_under(&dir) {
                    // Only FUSE layer roots have /d; never block on one.
                    let p = m.join(&BIG[1..]);
                    if let Ok(f) = std::fs::File::open(&p) {
                        use std::os::fd::AsRawFd;
                        // SAFETY: a valid fd; advice only.
                        unsafe {
                            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
                        };
                    }
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        });
        CacheDropper { stop, t: Some(t) }
    }
}

impl Drop for CacheDropper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.t.take() {
            let _ = t.join();
        }
    }
}

/// `ctr run --rm` a container of `image` that checksums small files `ids`.
fn run_sums(ctrd: &Containerd, image: &str, ids: &[usize]) -> std::process::Output {
    let paths: Vec<String> = ids.iter().map(|&i| small(i)).collect();
    run_paths(ctrd, image, &paths)
}

/// `ctr run --rm` a container of `image` that checksums `paths`.
fn run_paths(ctrd: &Containerd, image: &str, paths: &[String]) -> std::process::Output {
    let id = unique_id("c");
    let mut args = vec![
        "run",
        "--rm",
        "--snapshotter=remote",
        image,
        &id,
        "sha256sum",
    ];
    args.extend(paths.iter().map(String::as_str));
    common::ctr_when_reconnected(ctrd, &args)
}

fn metric(addr: &str, name: &str) -> u64 {
    common::counter(&common::metrics(addr), name).unwrap_or(0)
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

#[test]
fn a_container_reads_through_upgrade_crash_and_containerd_crash() {
    if !e2e::require_root_tools(TOOLS) {
        return;
    }
    let mut st = Stack {
        ctrd: None,
        daemon: None,
        scratch: tempfile::tempdir().unwrap(),
        metrics: None,
    };
    let s = st.scratch.path().to_path_buf();
    let (layout, big, _) = build_image(&s);
    let reg = Registry::start(&s);
    let image = format!("{}/r/app:v1", reg.host());
    skopeo_push(&layout, "v1", &image);
    write_config(&s);
    let metrics = format!("127.0.0.1:{}", e2e::free_port());
    let built = PathBuf::from(common::bin());
    st.daemon = Some(start_daemon(&s, &built, &metrics));
    st.ctrd = Some(Containerd::start(
        &s,
        Some(&st.daemon.as_ref().unwrap().sock),
    ));
    pull(st.ctrd.as_ref().unwrap(), &image);

    // The reader: checks every read of the big file, counts ok and bad.
    let id = unique_id("loop");
    let script = format!(
        "ok=0; bad=0; while [ ! -e /tmp/stop ]; do \
         s=$(sha256sum {BIG} 2>>/tmp/err | cut -d' ' -f1); \
         if [ \"$s\" = {} ]; then ok=$((ok+1)); else bad=$((bad+1)); echo \"$(date +%s) $s\" >>/tmp/bad; fi; \
         echo \"$ok $bad\" >/tmp/count.new; mv /tmp/count.new /tmp/count; done; sleep 3600",
        hex(&big)
    );
    st.ctrd.as_ref().unwrap().ctr_ok(&[
        "run",
        "-d",
        "--snapshotter=remote",
        &image,
        &id,
        "sh",
        "-c",
        &script,
    ]);
    let (ok0, bad0) = progress(
        st.ctrd.as_ref().unwrap(),
        &id,
        0,
        5,
        Duration::from_secs(60),
    );
    assert!(
        ok0 >= 5 && bad0 == 0,
        "the loop does not read: {ok0} ok, {bad0} bad"
    );
    let _dropper = CacheDropper::start(&s.join("root"));
    let mut figures = Vec::new();

    // (a) Upgrade: SIGTERM, then a copy of the binary at another path.
    let copy = s.join("upgrade/remote-snapshotter");
    std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
    std::fs::copy(&built, &copy).unwrap();
    let before = counts(st.ctrd.as_ref().unwrap(), &id);
    let t = Instant::now();
    // No exec into the container while no daemon runs: its own reads
    // would wait for the next daemon, which this thread starts.
    common::stop(st.daemon.take().unwrap(), libc::SIGTERM);
    st.daemon = Some(start_daemon(&s, &copy, &metrics));
    let down = t.elapsed();
    let after = progress(
        st.ctrd.as_ref().unwrap(),
        &id,
        before.0 + before.1,
        10,
        Duration::from_secs(60),
    );
    assert_eq!(after.1, bad0, "reads failed across the upgrade: {after:?}");
    assert!(
        after.0 >= before.0 + 10,
        "the loop stalled after the upgrade: {before:?} -> {after:?}"
    );
    assert!(
        metric(&metrics, "handover_adopted") >= 1,
        "the new binary did not adopt the mounts"
    );
    figures.push(format!(
        "upgrade: daemon away {} ; reads {} -> {} ; failures 0",
        secs(down),
        before.0,
        after.0
    ));

    // (b) SIGKILL and restart.
    let before = after;
    let t = Instant::now();
    st.daemon.as_mut().unwrap().svc.kill();
    st.daemon = Some(start_daemon(&s, &built, &metrics));
    let down = t.elapsed();
    let after = progress(
        st.ctrd.as_ref().unwrap(),
        &id,
        before.0 + before.1,
        10,
        Duration::from_secs(60),
    );
    let lost_b = after.1 - before.1;
    let abandoned_b = metric(&metrics, "handover_abandoned_requests");
    assert!(
        after.0 >= before.0 + 10,
        "the loop stalled after a SIGKILL: {before:?} -> {after:?}"
    );
    assert!(lost_b <= 2, "{lost_b} reads failed across a SIGKILL");
    figures.push(format!(
        "sigkill: daemon away {} ; reads {} -> {} ; failed reads {lost_b} ; requests aborted by the kernel {abandoned_b}",
        secs(down),
        before.0,
        after.0
    ));

    // (c) SIGKILL of the daemon and containerd, both restarted.
    let before = after;
    let t = Instant::now();
    st.daemon.as_mut().unwrap().svc.kill();
    st.ctrd.as_mut().unwrap().restart();
    st.daemon = Some(start_daemon(&s, &built, &metrics));
    let down = t.elapsed();
    let after = progress(
        st.ctrd.as_ref().unwrap(),
        &id,
        before.0 + before.1,
        10,
        Duration::from_secs(60),
    );
    let lost_c = after.1 - before.1;
    assert!(
        after.0 >= before.0 + 10,
        "the loop stalled after both were killed: {before:?} -> {after:?}"
    );
    assert!(
        lost_c <= 2,
        "{lost_c} reads failed across a daemon+containerd SIGKILL"
    );
    figures.push(format!(
        "sigkill daemon+containerd: away {} ; reads {} -> {} ; failed reads {lost_c}",
        secs(down),
        before.0,
        after.0
    ));
    // `rsnap layers`: both layers served, kept by the fd holder, with their image.
    let root = s.join("root");
    let (ok, out, err) = e2e::image::rsnap(&["layers", "--root", root.to_str().unwrap(), "--json"]);
    assert!(ok, "rsnap layers: {err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for r in &rows {
        assert_eq!(r["state"], "served", "{out}");
        assert_eq!(r["held"], true, "{out}");
        assert!(
            r["image"].as_str().is_some_and(|i| i.contains("/r/app")),
            "{out}"
        );
        assert!(r["fetched_percent"].as_f64().is_some(), "{out}");
    }
    // A new container of the image starts on the adopted mounts.
    let out = common::ctr_when_reconnected(
        st.ctrd.as_ref().unwrap(),
        &[
            "run",
            "--rm",
            "--snapshotter=remote",
            &image,
            &unique_id("n"),
            "sha256sum",
            BIG,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}  {BIG}\n", hex(&big))
    );
    let bad = exec(
        st.ctrd.as_ref().unwrap(),
        &id,
        "cat /tmp/bad /tmp/err 2>/dev/null",
    );
    eprintln!(
        "loop's failure log: {}",
        String::from_utf8_lossy(&bad.stdout)
    );
    eprintln!("FIGURE restart-reads: {}", figures.join(" | "));
    exec(st.ctrd.as_ref().unwrap(), &id, "touch /tmp/stop");
}

#[test]
fn a_cached_image_starts_after_a_restart_with_the_registry_down() {
    if !e2e::require_root_tools(TOOLS) {
        return;
    }
    let mut st = Stack {
        ctrd: None,
        daemon: None,
        scratch: tempfile::tempdir().unwrap(),
        metrics: None,
    };
    let s = st.scratch.path().to_path_buf();
    let (layout, big, smalls) = build_image(&s);
    let data = s.join("registry-data");
    let port = e2e::free_port();
    let opts = RegistryOptions {
        data_dir: Some(data),
        port: Some(port),
        ..Default::default()
    };
    let mut reg = Registry::start_with(&s, opts.clone());
    let image = format!("{}/r/app:v1", reg.host());
    skopeo_push(&layout, "v1", &image);
    write_config(&s);
    let metrics = format!("127.0.0.1:{}", e2e::free_port());
    let built = PathBuf::from(common::bin());
    st.daemon = Some(start_daemon(&s, &built, &metrics));
    st.ctrd = Some(Containerd::start(
        &s,
        Some(&st.daemon.as_ref().unwrap().sock),
    ));
    pull(st.ctrd.as_ref().unwrap(), &image);
    let sums = |ids: &[usize]| -> String {
        ids.iter()
            .map(|&i| format!("{}  {}\n", hex(&smalls[i]), small(i)))
            .collect()
    };
    // Cache s0 and s1 (and what busybox's sha256sum needs).
    let out = run_sums(st.ctrd.as_ref().unwrap(), &image, &[0, 1]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), sums(&[0, 1]));
    // Unmount everything (SIGINT): the next daemon mounts from scratch,
    // so only the TOCs kept on disk can open the layers.
    common::stop(st.daemon.take().unwrap(), libc::SIGINT);
    reg.stop();
    let t = Instant::now();
    st.daemon = Some(start_daemon(&s, &built, &metrics));
    let socket_up = t.elapsed();

    // Two new containers of the cached image start and read cached files.
    let mut starts = Vec::new();
    for _ in 0..2 {
        let t = Instant::now();
        let out = run_sums(st.ctrd.as_ref().unwrap(), &image, &[0, 1]);
        assert!(
            out.status.success(),
            "cached run with the registry down: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), sums(&[0, 1]));
        starts.push(secs(t.elapsed()));
    }
    assert!(
        metric(&metrics, "toc_opened_from_disk") >= 2,
        "layers not opened from the kept TOCs"
    );
    // An uncached file fails with EIO, within the fetch timeout (+ slack).
    // The big file: before the small ones in the blob, so the blob
    // readahead of their reads did not fetch it.
    let uncached = [BIG.to_string()];
    let t = Instant::now();
    let out = run_paths(st.ctrd.as_ref().unwrap(), &image, &uncached);
    let eio_in = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && (err.contains("I/O error") || err.contains("Input/output error")),
        "expected EIO: {err}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        eio_in < Duration::from_secs(FETCH_TIMEOUT * 3 + 8),
        "EIO only after {eio_in:?}"
    );

    // The registry returns: the same read succeeds, nothing restarted.
    let mut reg2 = Registry::start_with(&s, opts);
    let t = Instant::now();
    let mut out = run_paths(st.ctrd.as_ref().unwrap(), &image, &uncached);
    while !out.status.success() && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        out = run_paths(st.ctrd.as_ref().unwrap(), &image, &uncached);
    }
    let back = t.elapsed();
    assert!(
        out.status.success(),
        "no recovery: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}  {BIG}\n", hex(&big))
    );
    // What an operator sees of it: the cached files came from the disk tier
    // (memory is empty after a restart), the refused requests and their
    // latency are counted, the fetched chunks went into the cache.
    let text = common::metrics(&metrics);
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    assert!(value("remote_snapshotter_cache_disk_hits_total") >= 1.0);
    assert!(value("remote_snapshotter_cache_disk_hit_bytes_total") >= 1.0);
    assert!(value("remote_snapshotter_cache_misses_total") >= 1.0);
    assert!(value("remote_snapshotter_fetch_request_failures_total") >= 1.0);
    assert!(value("remote_snapshotter_cache_inserted_bytes_total") >= BIG_BYTES as f64 / 2.0);
    assert!(value("remote_snapshotter_cache_disk_bytes") >= BIG_BYTES as f64 / 2.0);
    let fg = "remote_snapshotter_fetch_latency_seconds";
    assert!(value(&format!("{fg}_count{{class=\"foreground\"}}")) >= 2.0);
    assert!(value(&format!("{fg}_bucket{{le=\"+Inf\",class=\"foreground\"}}")) >= 2.0);
    eprintln!(
        "FIGURE registry-down-restart: socket up {} ; cached container starts {} ; uncached read EIO in {} ; after the registry returned ok in {}",
        secs(socket_up),
        starts.join(", "),
        secs(eio_in),
        secs(back)
    );
    drop(st);
    reg2.stop();
}
