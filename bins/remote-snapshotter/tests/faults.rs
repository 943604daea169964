//! Network and process faults with real parts: docker-registry (behind our
//! fault proxy where a fault is injected), our daemon, containerd, runc and
//! FUSE. A running container reads files of a lazily pulled image while the
//! registry dies, stalls, throttles, corrupts or loses its tokens, and while
//! the daemon or containerd is killed. What must hold: no byte that fails
//! its digest is served, no read hangs past the configured timeout, and
//! everything recovers without restarting anything but the failed part.
//!
//! Times are printed as `FIGURE ...` lines (docs/reliability.md).
//! Files of the data layer are read from the last to the first: the blob
//! readahead only looks forward, so files before the last one read stay cold.

mod common;

use e2e::containerd::{mounts_under, unique_id, Containerd, NAMESPACE};
use e2e::faultproxy::{FaultProxy, Kind, ALWAYS};
use e2e::image::{busybox_layer, pseudo_random, rsnap_ok, sha256_digest, write_oci_layout};
use e2e::image::{LayerBuilder, OciLayout};
use e2e::registry::{skopeo_push, Registry, RegistryOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const NFILES: usize = 24;
const FILE_BYTES: usize = 256 << 10;
/// Four chunks per data file.
const CHUNK: &str = "65536";
/// `[blob] fetching_timeout_sec` of these tests: the bound on a read.
const FETCH_TIMEOUT: u64 = 3;
/// Slack for `ctr tasks exec` itself (process start, attach) on a busy CI box.
const EXEC_SLACK: Duration = Duration::from_secs(4);

const TOOLS: &[&str] = &["docker-registry", "containerd", "ctr", "runc", "skopeo"];

fn file(i: usize) -> String {
    format!("/d/f{i:02}.bin")
}

fn hex_sum(data: &[u8]) -> String {
    sha256_digest(data)
        .trim_start_matches("sha256:")
        .to_string()
}

/// An eStargz image in an OCI layout: busybox + a layer of NFILES
/// incompressible files of four chunks each. Returns the layout, the file
/// contents and the data layer's digest.
fn build_image(scratch: &Path) -> (PathBuf, Vec<Vec<u8>>, String) {
    let src = scratch.join("src");
    let dst = scratch.join("dst");
    let files: Vec<Vec<u8>> = (0..NFILES)
        // Odd seeds: pseudo_random treats seeds 2k and 2k+1 alike, and equal
        // files would share cached chunks.
        .map(|i| pseudo_random(FILE_BYTES, 1001 + 2 * i as u64))
        .collect();
    let mut l = LayerBuilder::new();
    l.dir("d", 0o755);
    for (i, f) in files.iter().enumerate() {
        l.file(&file(i)[1..], f.clone(), 0o644);
    }
    write_oci_layout(
        &src,
        "v1",
        vec![busybox_layer().tar_gz(), l.tar_gz()],
        &["/bin/sh"],
    );
    rsnap_ok(&[
        "convert",
        "--chunk-size",
        CHUNK,
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:v1", dst.display()),
    ]);
    let layer = OciLayout::open(&dst).manifest(Some("v1"))["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    (dst, files, layer)
}

fn write_config(scratch: &Path, retries: u32, min_wait_ms: u64) {
    std::fs::write(
        scratch.join("config.toml"),
        format!(
            "noprefetch = true\nno_background_fetch = true\n[blob]\nmax_retries = {retries}\n\
             min_wait_msec = {min_wait_ms}\nfetching_timeout_sec = {FETCH_TIMEOUT}\n"
        ),
    )
    .unwrap();
}

fn pull(ctrd: &Containerd, reference: &str, env: &[(&str, &Path)]) {
    let mut cmd = Command::new(e2e::image::rsnap_bin());
    cmd.args(["pull", "-a"])
        .arg(&ctrd.socket)
        .args(["-n", NAMESPACE, reference]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("2 lazy, 0 fetched"),
        "rsnap pull {reference}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ctr run -d` a container that only sleeps; returns its id.
fn start_sleeper(ctrd: &Containerd, image: &str) -> String {
    let id = unique_id("f");
    let out = common::ctr_when_reconnected(
        ctrd,
        &[
            "run",
            "-d",
            "--snapshotter=remote",
            image,
            &id,
            "sleep",
            "3600",
        ],
    );
    assert!(
        out.status.success(),
        "ctr run -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    id
}

struct Exec {
    ok: bool,
    stdout: Vec<u8>,
    stderr: String,
    /// stdout and stderr as text.
    text: String,
    took: Duration,
}

/// Run `sh -c CMD` inside the running container `id`.
fn exec(ctrd: &Containerd, id: &str, cmd: &str) -> Exec {
    let t = Instant::now();
    let out = ctrd.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        &unique_id("x"),
        id,
        "sh",
        "-c",
        cmd,
    ]);
    Exec {
        ok: out.status.success(),
        text: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        stdout: out.stdout,
        took: t.elapsed(),
    }
}

/// Checksum file `i` in the container and compare; returns the time taken.
fn read_ok(ctrd: &Containerd, id: &str, files: &[Vec<u8>], i: usize) -> Duration {
    let mut e = exec(ctrd, id, &format!("sha256sum {}", file(i)));
    if e.ok && e.text.is_empty() {
        // `ctr tasks exec` sometimes loses all output of a process that
        // exits at once (its stdio fifos were not attached yet): seen once
        // under load. sha256sum always prints, whatever bytes it read, so
        // nothing at all is ctr's loss, not ours: ask again.
        eprintln!("ctr exec printed nothing for {}; again", file(i));
        e = exec(ctrd, id, &format!("sha256sum {}", file(i)));
    }
    assert!(e.ok, "reading {} failed: {}", file(i), e.text);
    assert_eq!(
        e.text,
        format!("{}  {}\n", hex_sum(&files[i]), file(i)),
        "content of {}",
        file(i)
    );
    e.took
}

/// Read file `i` expecting an I/O error, within the fetch timeout (the
/// kernel retries a failed page read itself; lazyfs answers those retries
/// at once); whatever bytes came out before the error must be a prefix of
/// the real file.
fn read_fails(ctrd: &Containerd, id: &str, files: &[Vec<u8>], i: usize) -> Duration {
    let e = exec(ctrd, id, &format!("cat {}", file(i)));
    assert!(!e.ok, "{} read although it should fail", file(i));
    assert!(
        e.stderr.contains("I/O error") || e.stderr.contains("Input/output error"),
        "expected EIO for {}: {}",
        file(i),
        e.stderr
    );
    assert!(
        e.stdout.len() < files[i].len() && files[i].starts_with(&e.stdout),
        "{}: {} bytes came out that are not the file's prefix",
        file(i),
        e.stdout.len()
    );
    assert!(
        e.took < Duration::from_secs(FETCH_TIMEOUT) + EXEC_SLACK,
        "EIO took {:?} (fetch timeout {FETCH_TIMEOUT}s)",
        e.took
    );
    e.took
}

/// Drop the page cache of file `i` in every mount under `dir` that has it,
/// so the next read reaches the daemon (FUSE keeps pages of a layer).
fn drop_page_cache(dir: &Path, i: usize) {
    for m in mounts_under(dir) {
        let p = m.join(&file(i)[1..]);
        if let Ok(f) = std::fs::File::open(&p) {
            use std::os::fd::AsRawFd;
            // SAFETY: a valid open fd; advice only.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

fn daemon_log(scratch: &Path) -> String {
    std::fs::read_to_string(scratch.join("daemon.log")).unwrap_or_default()
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

fn finish(scratch: &Path, ctrd: Containerd, daemon: common::Daemon) {
    drop(ctrd);
    common::stop(daemon, libc::SIGINT);
    assert!(mounts_under(scratch).is_empty(), "mounts left behind");
}

#[test]
fn registry_killed_while_a_container_reads() {
    if !e2e::require_root_tools(TOOLS) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let (layout, files, _) = build_image(s);
    let mut reg = Registry::start(s);
    skopeo_push(&layout, "v1", &format!("{}/f/app:v1", reg.host()));
    write_config(s, 2, 100);
    let daemon = common::start(s, &[]);
    let ctrd = Containerd::start(s, Some(&daemon.sock));
    let image = format!("{}/f/app:v1", reg.host());
    pull(&ctrd, &image, &[]);
    let id = start_sleeper(&ctrd, &image);
    read_ok(&ctrd, &id, &files, 23);
    read_ok(&ctrd, &id, &files, 22);

    let (port, data) = (reg.port, reg.dir.join("data"));
    reg.stop();
    let down = Instant::now();
    // Already read: served from the daemon's cache, the page cache dropped.
    drop_page_cache(s, 23);
    drop_page_cache(s, 22);
    let cached = read_ok(&ctrd, &id, &files, 23);
    read_ok(&ctrd, &id, &files, 22);
    let ls = exec(&ctrd, &id, "ls -l /d | wc -l");
    assert!(
        ls.ok && ls.text.trim() == (NFILES + 1).to_string(),
        "{}",
        ls.text
    );
    // Never read: EIO, bounded, and again on a second try (nothing hangs).
    let eio = read_fails(&ctrd, &id, &files, 10);
    let eio2 = read_fails(&ctrd, &id, &files, 5);

    let reg = Registry::start_with(
        s,
        RegistryOptions {
            port: Some(port),
            data_dir: Some(data),
            ..Default::default()
        },
    );
    let up = Instant::now();
    let recover = read_ok(&ctrd, &id, &files, 10);
    read_ok(&ctrd, &id, &files, 5);
    eprintln!(
        "FIGURE registry-killed: cached read {} ; uncached EIO after {} and {} (timeout {FETCH_TIMEOUT}s) ; \
         outage {} ; first read after restart {} (no restarts of daemon/containerd)",
        secs(cached),
        secs(eio),
        secs(eio2),
        secs(up - down),
        secs(recover)
    );
    // A new container from the same image works too.
    let run = ctrd.run(
        &image,
        Some("remote"),
        &["sh", "-c", &format!("sha256sum {}", file(0))],
    );
    assert_eq!(run, format!("{}  {}\n", hex_sum(&files[0]), file(0)));
    drop(reg);
    finish(s, ctrd, daemon);
}

/// What the proxied cases share: the image in a real registry, our fault
/// proxy in front of it, the daemon (`retries`, 100 ms first backoff) and
/// containerd, and the image pulled lazily through the proxy. Fields are
/// in start order, so they drop (stop) in reverse.
struct Proxied {
    _reg: Registry,
    proxy: FaultProxy,
    daemon: common::Daemon,
    ctrd: Containerd,
    image: String,
    files: Vec<Vec<u8>>,
    layer: String,
}

fn proxied(s: &Path, retries: u32) -> Proxied {
    let (layout, files, layer) = build_image(s);
    let reg = Registry::start(s);
    let proxy = FaultProxy::start(reg.port);
    skopeo_push(&layout, "v1", &format!("{}/f/app:v1", reg.host()));
    write_config(s, retries, 100);
    let daemon = common::start(s, &[]);
    let ctrd = Containerd::start(s, Some(&daemon.sock));
    let image = format!("{}/f/app:v1", proxy.host());
    pull(&ctrd, &image, &[]);
    Proxied {
        _reg: reg,
        proxy,
        daemon,
        ctrd,
        image,
        files,
        layer,
    }
}

#[test]
fn error_storms_and_whole_blob_answers() {
    if !e2e::require_root_tools(TOOLS) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let retries = 3;
    let Proxied {
        _reg,
        proxy,
        daemon,
        ctrd,
        image,
        files,
        ..
    } = proxied(s, retries);
    let id = start_sleeper(&ctrd, &image);
    let baseline = read_ok(&ctrd, &id, &files, 23);

    // 503 storm shorter than the retries: the read succeeds.
    proxy.reset_counts();
    proxy.fail_next(retries as usize, 503, None);
    let t503 = read_ok(&ctrd, &id, &files, 22);
    let c = proxy.counts();
    assert_eq!(c.injected_503, retries as u64, "{c:?}");

    // 429 with Retry-After: 1, twice: honoured, then success.
    proxy.reset_counts();
    proxy.fail_next(2, 429, Some(1));
    let t429 = read_ok(&ctrd, &id, &files, 21);
    let c = proxy.counts();
    assert_eq!(c.injected_429, 2, "{c:?}");
    // Two requests may each take one 429 and wait their second side by side.
    assert!(
        t429 >= Duration::from_millis(900),
        "Retry-After ignored: {t429:?}"
    );

    // An endless 503 storm: EIO within the timeout, a bounded number of tries.
    proxy.reset_counts();
    proxy.fail_next(ALWAYS, 503, None);
    let eio = read_fails(&ctrd, &id, &files, 20);
    std::thread::sleep(Duration::from_secs(1));
    let storm = proxy.counts();
    proxy.pass();
    // Each blob request is tried 1 + retries times; a read makes a few
    // requests (the file, readahead), never an unbounded loop.
    let tries = storm.get(Kind::BlobRange);
    assert!(
        tries > retries as u64 && tries <= 4 * (retries as u64 + 1),
        "{storm:?}"
    );
    let after_storm = read_ok(&ctrd, &id, &files, 20);

    // Connections refused: EIO bounded, then fine.
    proxy.refuse(true);
    let refused = read_fails(&ctrd, &id, &files, 19);
    proxy.refuse(false);
    read_ok(&ctrd, &id, &files, 19);

    // Range answered with the whole blob: right content.
    proxy.reset_counts();
    proxy.whole_blob(ALWAYS);
    let whole = read_ok(&ctrd, &id, &files, 18);
    read_ok(&ctrd, &id, &files, 17);
    let c = proxy.counts();
    proxy.pass();
    assert!(c.whole_for_range > 0, "{c:?}");
    eprintln!(
        "FIGURE storms: baseline read {} ; 503x{retries} read {} ; 429x2 (Retry-After 1) read {} ; \
         endless 503: EIO after {} with {tries} blob requests, next read after it {} ; \
         refused: EIO after {} ; Range answered whole: read {} ({} whole answers, {} B down)",
        secs(baseline),
        secs(t503),
        secs(t429),
        secs(eio),
        secs(after_storm),
        secs(refused),
        secs(whole),
        c.whole_for_range,
        c.bytes_down
    );
    finish(s, ctrd, daemon);
}

#[test]
fn stalled_bodies_and_corrupted_chunks() {
    if !e2e::require_root_tools(TOOLS) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let Proxied {
        _reg,
        proxy,
        daemon,
        ctrd,
        image,
        files,
        layer,
    } = proxied(s, 2);
    let id = start_sleeper(&ctrd, &image);
    read_ok(&ctrd, &id, &files, 23);

    // Bodies that stop after 1000 bytes: the read fails at the timeout.
    proxy.reset_counts();
    proxy.stall_blobs(ALWAYS, 1000);
    let stalled = read_fails(&ctrd, &id, &files, 22);
    assert!(proxy.counts().stalled > 0);
    assert!(
        stalled >= Duration::from_secs(FETCH_TIMEOUT),
        "failed before the timeout: {stalled:?}"
    );
    // The registry is fast again: the same file reads, nothing restarted
    // (lazyfs answers a file's slow failure at once for 250 ms, for the
    // kernel's own retries).
    proxy.stall_blobs(0, 0);
    std::thread::sleep(Duration::from_millis(300));
    let after_stall = read_ok(&ctrd, &id, &files, 22);

    // Corrupted bytes: EIO, never the wrong bytes, logged with layer and file.
    proxy.reset_counts();
    proxy.corrupt_ranges(ALWAYS);
    let corrupt = read_fails(&ctrd, &id, &files, 20);
    let again = read_fails(&ctrd, &id, &files, 20);
    let c = proxy.counts();
    proxy.pass();
    assert!(c.corrupted > 0, "{c:?}");
    let log = daemon_log(s);
    let line = log
        .lines()
        .find(|l| l.contains("failed verification") && l.contains("d/f20.bin"))
        .unwrap_or_else(|| panic!("no verification failure for d/f20.bin in the log"));
    assert!(line.contains(&layer), "layer not named: {line}");
    // Corruption over: the same file reads right.
    let fixed = read_ok(&ctrd, &id, &files, 20);
    eprintln!(
        "FIGURE stall/corrupt: stalled bodies: EIO after {} (timeout {FETCH_TIMEOUT}s), read after the stall {} ; \
         corrupted ranges ({} corrupted answers): EIO after {} and {}, \
         0 wrong bytes served, read after {}",
        secs(stalled),
        secs(after_stall),
        c.corrupted,
        secs(corrupt),
        secs(again),
        secs(fixed)
    );
    finish(s, ctrd, daemon);
}

/// Token auth with a token server of our own: JWTs signed by a key the
/// registry trusts, for user alice:secret only.
mod tokens {
    use e2e::authfront::{TokenRequest, TokenServer};
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;

    pub const SERVICE: &str = "fault-registry";
    pub const ISSUER: &str = "fault-issuer";

    pub struct Tokens {
        pub server: TokenServer,
        pub bundle: std::path::PathBuf,
        /// `exp` of new tokens, in seconds from now (the registry accepts a
        /// token up to 60 s past its `exp`).
        pub exp_in: Arc<AtomicI64>,
        /// The `expires_in` announced to the client.
        pub expires_in: Arc<AtomicU64>,
    }

    pub fn start(dir: &std::path::Path) -> Tokens {
        let exp_in = Arc::new(AtomicI64::new(600));
        let expires_in = Arc::new(AtomicU64::new(300));
        let key = e2e::authfront::TokenKey::create(dir);
        let bundle = key.bundle.clone();
        let (e1, e2) = (exp_in.clone(), expires_in.clone());
        let seq = AtomicU64::new(0);
        let issuer = move |req: &TokenRequest| -> Result<(String, u64), u16> {
            if req.basic != Some(("alice".into(), "secret".into())) {
                return Err(401);
            }
            let access: Vec<_> = req
                .scopes()
                .iter()
                .flat_map(|s| s.split(' ').map(str::to_string).collect::<Vec<_>>())
                .filter_map(|s| {
                    let mut it = s.splitn(3, ':');
                    let (t, name, actions) = (it.next()?, it.next()?, it.next()?);
                    let actions: Vec<&str> = actions.split(',').collect();
                    Some(serde_json::json!({"type": t, "name": name, "actions": actions}))
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let claims = serde_json::json!({
                "iss": ISSUER, "sub": "alice", "aud": SERVICE,
                "exp": now + e1.load(SeqCst), "nbf": now - 1000, "iat": now - 1000,
                "jti": format!("{now}-{}", seq.fetch_add(1, SeqCst)), "access": access,
            });
            Ok((key.sign(&claims)?, e2.load(SeqCst)))
        };
        Tokens {
            server: TokenServer::start(Arc::new(issuer)),
            bundle,
            exp_in,
            expires_in,
        }
    }
}

#[test]
fn token_expiry_mid_run_refreshes_without_failed_reads() {
    use std::sync::atomic::Ordering::SeqCst;
    if !e2e::require_root_tools(TOOLS) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let (layout, files, _) = build_image(s);
    let tok = tokens::start(s);
    let data = s.join("shared-data");
    let reg = Registry::start_with(
        s,
        RegistryOptions {
            token: Some((
                tok.server.realm(),
                tokens::SERVICE.into(),
                tokens::ISSUER.into(),
                tok.bundle.clone(),
            )),
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    );
    // Pushed through an open registry on the same storage.
    let open = Registry::start_with(
        s,
        RegistryOptions {
            data_dir: Some(data),
            ..Default::default()
        },
    );
    skopeo_push(&layout, "v1", &format!("{}/f/app:v1", open.host()));
    drop(open);
    let docker = e2e::registry::docker_config(s, &reg.host(), "alice", "secret");
    // The credentials as config.json holds them, for the log check below.
    let auth = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:secret");
    let env = [("DOCKER_CONFIG", docker.as_path())];

    // Tokens the registry stops accepting ~3 s after they are issued, while
    // the client is told they last 300 s: it learns of the expiry from a 401.
    tok.exp_in.store(-57, SeqCst);
    write_config(s, 2, 100);
    let daemon = common::start_with_env(s, &[], &env);
    let ctrd = Containerd::start(s, Some(&daemon.sock));
    let image = format!("{}/f/app:v1", reg.host());
    pull(&ctrd, &image, &env);
    let id = start_sleeper(&ctrd, &image);
    read_ok(&ctrd, &id, &files, 23);
    let before = tok.server.seen().len();
    std::thread::sleep(Duration::from_millis(4500));
    let after_expiry = read_ok(&ctrd, &id, &files, 22);
    let refetched = tok.server.seen().len() - before;
    assert!(refetched >= 1, "no new token after expiry");
    read_ok(&ctrd, &id, &files, 21);

    // Short announced lifetimes: once the client holds such a token (after
    // the old one expired), it refreshes before using it again.
    tok.expires_in.store(1, SeqCst);
    std::thread::sleep(Duration::from_millis(4500));
    read_ok(&ctrd, &id, &files, 20);
    let before2 = tok.server.seen().len();
    std::thread::sleep(Duration::from_millis(1200));
    let short = read_ok(&ctrd, &id, &files, 19);
    let refreshed = tok.server.seen().len() - before2;
    assert!(refreshed >= 1, "no refresh after expires_in");
    let log = daemon_log(s);
    assert!(
        !log.contains("secret") && !log.contains(&auth),
        "credentials in the daemon log"
    );
    eprintln!(
        "FIGURE token-expiry: read after server-side expiry {} ({refetched} new tokens), \
         read after expires_in=1 {} ({refreshed} refreshes), 0 failed reads, {} token requests in all",
        secs(after_expiry),
        secs(short),
        tok.server.seen().len()
    );
    finish(s, ctrd, daemon);
}

/// Snapshot names containerd knows (`ctr snapshots ls`) and the daemon's
/// own list must agree: containerd's keys are ours (remote layers are
/// committed under their chain ID) or the suffixes of ours (`ns/id/key`).
fn check_snapshots_consistent(ctrd: &Containerd, daemon: &common::Daemon) -> usize {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // containerd removes the snapshots of a removed container in its
    // garbage collection, a moment later: wait for that, not longer.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out =
            common::ctr_when_reconnected(ctrd, &["snapshots", "--snapshotter", "remote", "ls"]);
        assert!(
            out.status.success(),
            "ctr snapshots ls: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        let ours: Vec<String> = rt.block_on(async {
            use snapshotter_testsuite::Api;
            let l = common::api(daemon).await.list(&[]).await.unwrap();
            l.into_iter().map(|i| i.name).collect()
        });
        let known = |o: &String| {
            theirs
                .iter()
                .any(|k| o == k || o.ends_with(&format!("/{k}")))
        };
        let missing: Vec<&String> = theirs
            .iter()
            .filter(|k| {
                !ours
                    .iter()
                    .any(|o| o == *k || o.ends_with(&format!("/{k}")))
            })
            .collect();
        assert!(
            missing.is_empty(),
            "containerd's snapshots {missing:?} are not in the daemon's list {ours:?}"
        );
        if ours.iter().all(known) {
            return theirs.len();
        }
        assert!(
            Instant::now() < deadline,
            "daemon has snapshots containerd does not know: {ours:?} vs {theirs:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Mounts under `dir` whose FUSE server is gone: statfs always asks the
/// server (a stat may be answered from cached attributes).
fn dead_mounts(dir: &Path) -> Vec<PathBuf> {
    mounts_under(dir)
        .into_iter()
        .filter(|m| rustix::fs::statfs(m).err() == Some(rustix::io::Errno::NOTCONN))
        .collect()
}

#[test]
fn daemon_sigkill_and_containerd_restart_under_running_containers() {
    if !e2e::require_root_tools(TOOLS) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let (layout, files, _) = build_image(s);
    let reg = Registry::start(s);
    skopeo_push(&layout, "v1", &format!("{}/f/app:v1", reg.host()));
    write_config(s, 2, 100);
    let mut daemon = common::start(s, &[]);
    let mut ctrd = Containerd::start(s, Some(&daemon.sock));
    let image = format!("{}/f/app:v1", reg.host());
    pull(&ctrd, &image, &[]);
    let before = start_sleeper(&ctrd, &image);
    read_ok(&ctrd, &before, &files, 23);
    let n_before = check_snapshots_consistent(&ctrd, &daemon);

    // SIGKILL: nothing is unmounted, the metadata store is mid-whatever.
    // The fd holder keeps the FUSE connections: no mount dies, reads wait
    // for the next daemon (so nothing here may touch the mounts before it
    // runs).
    daemon.svc.kill();
    let killed = Instant::now();
    let daemon = common::start(s, &[]);
    let restarted = killed.elapsed();
    assert!(
        daemon_log(s).contains("took over FUSE connections from the fd holder"),
        "the restarted daemon did not take the mounts over"
    );
    assert!(
        dead_mounts(s).is_empty(),
        "dead mounts left: {:?}",
        dead_mounts(s)
    );
    // New containers from the same image work (first call waits out
    // containerd's reconnect backoff).
    let t = Instant::now();
    let out = common::ctr_when_reconnected(
        &ctrd,
        &[
            "run",
            "--rm",
            "--snapshotter=remote",
            &image,
            &unique_id("n"),
            "sh",
            "-c",
            &format!("sha256sum {} {}", file(23), file(22)),
        ],
    );
    let first_run = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!(
            "{}  {}\n{}  {}\n",
            hex_sum(&files[23]),
            file(23),
            hex_sum(&files[22]),
            file(22)
        )
    );
    assert_eq!(check_snapshots_consistent(&ctrd, &daemon), n_before);
    // The container that ran across the crash keeps reading its layers
    // (a file it never read: served by the new daemon), and can be stopped
    // and removed cleanly.
    read_ok(&ctrd, &before, &files, 21);
    let old = exec(&ctrd, &before, &format!("cat {} >/dev/null", file(17)));
    assert!(
        old.ok,
        "the container across the crash cannot read: {}",
        old.text
    );
    ctrd.ctr_ok(&["tasks", "kill", "-s", "SIGKILL", &before]);
    e2e::process::wait_until(Duration::from_secs(10), || {
        ctrd.ctr(&["tasks", "rm", "-f", &before]).status.success()
    });
    ctrd.ctr_ok(&["containers", "rm", &before]);
    let n_after_rm = check_snapshots_consistent(&ctrd, &daemon);
    assert_eq!(
        n_after_rm,
        n_before - 1,
        "the container's snapshot went away"
    );
    // Image content is intact: manifest, config and layers are in the store.
    let images = ctrd.ctr_ok(&["images", "check"]);
    assert!(
        images.contains(&image) && images.contains("complete"),
        "{images}"
    );

    // containerd killed and restarted under the running daemon and a running container.
    let running = start_sleeper(&ctrd, &image);
    read_ok(&ctrd, &running, &files, 20);
    let t = Instant::now();
    ctrd.restart();
    let ctrd_back = t.elapsed();
    read_ok(&ctrd, &running, &files, 19);
    let run = ctrd.run(
        &image,
        Some("remote"),
        &["sh", "-c", &format!("sha256sum {}", file(18))],
    );
    assert_eq!(run, format!("{}  {}\n", hex_sum(&files[18]), file(18)));
    check_snapshots_consistent(&ctrd, &daemon);
    eprintln!(
        "FIGURE process: daemon SIGKILL -> socket up again in {} ; first container after it {} ; \
         container across the crash: read ok={} ; containerd SIGKILL+restart {} then reads and runs ok ; \
         snapshots {n_before} before = {n_before} after",
        secs(restarted),
        secs(first_run),
        old.ok,
        secs(ctrd_back)
    );
    finish(s, ctrd, daemon);
}

#[test]
fn daemon_restarts_while_the_registry_is_unreachable() {
    if !e2e::require_root_tools(TOOLS) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path();
    let Proxied {
        _reg,
        proxy,
        daemon,
        ctrd,
        image,
        files,
        ..
    } = proxied(s, 2);
    let run_sums = |ids: &[usize]| -> std::process::Output {
        let cmd = ids
            .iter()
            .map(|&i| format!("sha256sum {}", file(i)))
            .collect::<Vec<_>>()
            .join(" && ");
        common::ctr_when_reconnected(
            &ctrd,
            &[
                "run",
                "--rm",
                "--snapshotter=remote",
                &image,
                &unique_id("u"),
                "sh",
                "-c",
                &cmd,
            ],
        )
    };
    assert!(run_sums(&[23]).status.success());

    let mut figures = Vec::new();
    let mut daemon = daemon;
    // A host that refuses connections, then one that accepts and never answers.
    for (mode, file_i) in [("refused", 22), ("blackholed", 21)] {
        common::stop(daemon, libc::SIGTERM);
        match mode {
            "refused" => proxy.refuse(true),
            _ => proxy.blackhole(true),
        }
        let t = Instant::now();
        daemon = common::start(s, &[]);
        let socket_up = t.elapsed();
        assert!(
            socket_up < Duration::from_secs(10),
            "{mode}: socket up only after {socket_up:?}"
        );
        // While the registry is away a new container fails, and in bounded time.
        let t = Instant::now();
        let out = run_sums(&[23]);
        let failed_in = t.elapsed();
        let during = out.status.success();
        assert!(
            failed_in < Duration::from_secs(20),
            "{mode}: a run during the outage took {failed_in:?}"
        );
        proxy.pass();
        let t = Instant::now();
        let out = run_sums(&[23, file_i]);
        let back = t.elapsed();
        assert!(
            out.status.success(),
            "{mode}: no recovery: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!(
                "{}  {}\n{}  {}\n",
                hex_sum(&files[23]),
                file(23),
                hex_sum(&files[file_i]),
                file(file_i)
            )
        );
        figures.push(format!(
            "{mode}: socket up {} ; run during outage ok={during} in {} ; run after return {}",
            secs(socket_up),
            secs(failed_in),
            secs(back)
        ));
    }
    check_snapshots_consistent(&ctrd, &daemon);
    eprintln!("FIGURE restart-unreachable: {}", figures.join(" | "));
    finish(s, ctrd, daemon);
}
