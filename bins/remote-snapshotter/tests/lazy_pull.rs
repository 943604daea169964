//! The mission, end to end with real parts: an image converted by
//! `rsnap convert` sits in a real docker-registry; our daemon serves
//! containerd as its `remote` snapshotter; `rsnap pull` pulls lazily (only a
//! small fraction of the image crosses the wire) and `ctr run` starts
//! containers that read files from several layers and print checksums.

mod common;

use e2e::authfront::{Front, FrontOptions};
use e2e::containerd::{Containerd, NAMESPACE};
use e2e::image::{
    busybox_layer, pseudo_random, rsnap, rsnap_ok, sha256_digest, write_oci_layout, LayerBuilder,
};
use e2e::registry::{skopeo_push, Registry};
use e2e::tcpproxy::CountingProxy;
use std::path::Path;

struct App {
    files: Vec<(&'static str, Vec<u8>)>,
}

/// Three layers: busybox, a layer of data files (one of several chunks),
/// and a layer that deletes a file of the first and adds another.
fn build_app(dir: &Path) -> (App, u64) {
    let big = pseudo_random(9 << 20, 7);
    let mid = pseudo_random(3 << 20, 8);
    let small = b"hello from layer two\n".to_vec();
    let mut l2 = LayerBuilder::new();
    l2.dir("data", 0o755)
        .file("data/big.bin", big.clone(), 0o644)
        .file("data/small.txt", small.clone(), 0o644);
    for i in 0..40 {
        l2.file(
            &format!("data/filler/{i}.bin"),
            pseudo_random(200_000, 100 + i),
            0o644,
        );
    }
    let mut l3 = LayerBuilder::new();
    l3.dir("data", 0o755)
        .file("data/mid.bin", mid.clone(), 0o600)
        .whiteout("etc/group");
    let layers = vec![busybox_layer().tar_gz(), l2.tar_gz(), l3.tar_gz()];
    let total: u64 = layers.iter().map(|l| l.len() as u64).sum();
    write_oci_layout(dir, "v1", layers, &["/bin/sh"]);
    let app = App {
        files: vec![
            ("/data/big.bin", big),
            ("/data/small.txt", small),
            ("/data/mid.bin", mid),
        ],
    };
    (app, total)
}

fn checksum_cmd(app: &App) -> String {
    let paths: Vec<&str> = app.files.iter().map(|f| f.0).collect();
    format!(
        "sha256sum {}; test -e /etc/group || echo group-gone",
        paths.join(" ")
    )
}

fn expected(app: &App) -> String {
    let mut out = String::new();
    for (p, data) in &app.files {
        out.push_str(&format!(
            "{}  {p}\n",
            sha256_digest(data).trim_start_matches("sha256:")
        ));
    }
    out.push_str("group-gone\n");
    out
}

fn pull(ctrd: &Containerd, reference: &str) -> String {
    let sock = ctrd.socket.to_str().unwrap().to_string();
    rsnap_ok(&[
        "pull",
        "-a",
        &sock,
        "-n",
        NAMESPACE,
        "--plain-http",
        reference,
    ])
}

#[test]
fn estargz_image_pulls_lazily_runs_and_survives_a_daemon_restart() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    let dst = scratch.path().join("dst");
    let (app, plain_size) = build_app(&src);
    rsnap_ok(&[
        "convert",
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:v1", dst.display()),
    ]);

    let reg = Registry::start(scratch.path());
    let proxy = CountingProxy::start(reg.port);
    skopeo_push(&dst, "v1", &format!("{}/lazy/app:v1", reg.host()));
    skopeo_push(&src, "v1", &format!("{}/plain/app:v1", reg.host()));

    // No background fetch, so the bytes counted are what the pull and the
    // container really needed. The plain image below checks containerd's
    // own fallback path, so the daemon's fallback pull is switched off
    // (tests/fallback_pull.rs covers that).
    std::fs::write(
        scratch.path().join("config.toml"),
        "no_background_fetch = true\n[blob]\nmax_retries = 2\n[fallback_pull]\nenable = false\n",
    )
    .unwrap();
    let daemon = common::start(scratch.path(), &[]);
    let ctrd = Containerd::start(scratch.path(), Some(&daemon.sock));

    // Through the counting proxy: every registry byte of the lazy pull is seen.
    let lazy_ref = format!("{}/lazy/app:v1", proxy.host());
    let out = pull(&ctrd, &lazy_ref);
    assert!(out.contains("3 lazy, 0 fetched"), "not lazy: {out}");
    let pulled = proxy.bytes_down();
    assert!(
        pulled * 10 < plain_size,
        "lazy pull read {pulled} bytes of a {plain_size}-byte image"
    );

    let run = ctrd.run(
        &lazy_ref,
        Some("remote"),
        &["sh", "-c", &checksum_cmd(&app)],
    );
    assert_eq!(run, expected(&app), "container output");
    // The container read ~12 MiB of 21; the 40 filler files stayed remote.
    let after_run = proxy.bytes_down();
    eprintln!("image {plain_size} B; registry bytes: pull {pulled}, pull+run {after_run}");
    assert!(after_run < plain_size, "read {after_run} of {plain_size}");

    // SIGTERM keeps state; the restarted daemon restores the remote layers.
    common::stop(daemon, libc::SIGTERM);
    let daemon = common::start(scratch.path(), &[]);
    let run = run_when_reconnected(&ctrd, &lazy_ref, &checksum_cmd(&app));
    assert_eq!(
        run,
        expected(&app),
        "container output after a daemon restart"
    );

    // A plain gzip image through the same snapshotter falls back and runs.
    let plain_ref = format!("{}/plain/app:v1", reg.host());
    let out = pull(&ctrd, &plain_ref);
    assert!(
        out.contains("0 lazy, 3 fetched"),
        "expected a fallback: {out}"
    );
    let run = ctrd.run(
        &plain_ref,
        Some("remote"),
        &["sh", "-c", &checksum_cmd(&app)],
    );
    assert_eq!(run, expected(&app), "fallback container output");

    drop(ctrd);
    common::stop(daemon, libc::SIGINT);
    assert!(
        e2e::containerd::mounts_under(scratch.path()).is_empty(),
        "mounts left behind"
    );
}

/// containerd's gRPC client backs off after the proxy socket went away and
/// refuses calls for a few seconds (it redials with a growing delay); wait
/// that out, nothing else.
fn run_when_reconnected(ctrd: &Containerd, image: &str, cmd: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let id = e2e::containerd::unique_id("r");
        let out = ctrd.ctr(&[
            "run",
            "--rm",
            "--snapshotter=remote",
            image,
            &id,
            "sh",
            "-c",
            cmd,
        ]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            err.contains("connection refused") && std::time::Instant::now() < deadline,
            "ctr run failed: {err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

#[test]
fn rsnap_pull_reports_an_unknown_image_clearly() {
    if !e2e::require_root_tools(&["docker-registry", "containerd"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let reg = Registry::start(scratch.path());
    let ctrd = Containerd::start(scratch.path(), None);
    let sock = ctrd.socket.to_str().unwrap().to_string();
    let (ok, _, err) = rsnap(&[
        "pull",
        "-a",
        &sock,
        "-n",
        NAMESPACE,
        &format!("{}/none/such:v1", reg.host()),
    ]);
    assert!(!ok);
    assert!(err.contains("none/such"), "{err}");
}

/// The round trips of a lazy pull, counted so they cannot creep back: no
/// HEAD for a blob's size, and one ranged request per layer (footer, TOC
/// and size in one suffix range), the other layers' opened alongside the
/// manifest that holds their TOC digests.
#[test]
fn a_lazy_pull_costs_one_request_per_layer() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    let dst = scratch.path().join("dst");
    let (app, _) = build_app(&src);
    rsnap_ok(&[
        "convert",
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:v1", dst.display()),
    ]);
    let reg = Registry::start(scratch.path());
    skopeo_push(&dst, "v1", &format!("{}/lazy/app:v1", reg.host()));
    let front = Front::start(reg.port, FrontOptions::default());
    std::fs::write(
        scratch.path().join("config.toml"),
        "no_background_fetch = true\n",
    )
    .unwrap();
    let daemon = common::start(scratch.path(), &[]);
    let ctrd = Containerd::start(scratch.path(), Some(&daemon.sock));

    let image = format!("{}/lazy/app:v1", front.host());
    let out = pull(&ctrd, &image);
    assert!(out.contains("3 lazy, 0 fetched"), "not lazy: {out}");
    let seen = front.seen();
    let list: Vec<String> = seen
        .iter()
        .map(|s| format!("{} {} {:?} {}", s.method, s.path, s.range, s.status))
        .collect();
    assert!(
        !seen
            .iter()
            .any(|s| s.method == "HEAD" && s.path.contains("/blobs/")),
        "a HEAD for a blob: {list:#?}"
    );
    let ranged: Vec<_> = seen
        .iter()
        .filter(|s| s.path.contains("/blobs/") && s.range.is_some())
        .collect();
    assert_eq!(ranged.len(), 3, "ranged requests: {list:#?}");
    assert!(
        ranged
            .iter()
            .all(|s| s.range.as_deref() == Some("bytes=-65536") && s.status == 206),
        "{list:#?}"
    );
    // rsnap's own manifest and the daemon's one (for the other layers' TOC
    // digests), rsnap's config; nothing else.
    assert!(seen.len() <= 6, "{list:#?}");

    let run = ctrd.run(&image, Some("remote"), &["sh", "-c", &checksum_cmd(&app)]);
    assert_eq!(run, expected(&app), "container output");
    drop(ctrd);
    common::stop(daemon, libc::SIGINT);
    assert!(
        e2e::containerd::mounts_under(scratch.path()).is_empty(),
        "mounts left behind"
    );
}
