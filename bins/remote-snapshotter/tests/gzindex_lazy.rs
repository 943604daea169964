//! Images nobody converted, lazily: a plain gzip image in a real
//! docker-registry (2.8: no referrers API, so the `sha256-<hex>` tag
//! schema) is indexed with `rsnap index`, pulled lazily through containerd
//! with our daemon as its `remote` snapshotter (only a fraction of the
//! image crosses the wire), and a container reads files of every layer.
//! Then an index written to the daemon's local directory, and indexes that
//! lie (built for other layers): refused, the layers fall back, the
//! container still gets the right bytes.

mod common;

use e2e::containerd::{Containerd, NAMESPACE};
use e2e::image::{
    busybox_layer, pseudo_random, rsnap_ok, sha256_digest, write_oci_layout, LayerBuilder, OciImage,
};
use e2e::registry::{skopeo_push, Registry};
use e2e::tcpproxy::CountingProxy;
use std::path::Path;

struct App {
    files: Vec<(&'static str, Vec<u8>)>,
    image: OciImage,
    size: u64,
}

/// Three plain gzip layers: busybox, data files (a big one crossing many
/// checkpoints, small ones sharing spans, 40 fillers nobody reads) and a
/// layer that deletes a file of the first and adds another.
fn build_app(dir: &Path, seed: u64) -> App {
    let big = pseudo_random(9 << 20, seed);
    let mid = pseudo_random(3 << 20, seed + 1);
    let small = format!("hello {seed} from layer two\n").into_bytes();
    let mut l2 = LayerBuilder::new();
    l2.dir("data", 0o755)
        .file("data/big.bin", big.clone(), 0o644)
        .file("data/small.txt", small.clone(), 0o644);
    for i in 0..40 {
        l2.file(
            &format!("data/filler/{i}.bin"),
            pseudo_random(200_000, seed * 1000 + i),
            0o644,
        );
    }
    let mut l3 = LayerBuilder::new();
    l3.dir("data", 0o755)
        .file("data/mid.bin", mid.clone(), 0o600)
        .whiteout("etc/group");
    // A base layer of its own per image, so no snapshot is shared.
    let mut l1 = busybox_layer();
    l1.file("etc/app-seed", seed.to_string().into_bytes(), 0o644);
    let layers = vec![l1.tar_gz(), l2.tar_gz(), l3.tar_gz()];
    let size = layers.iter().map(|l| l.len() as u64).sum();
    let image = write_oci_layout(dir, "v1", layers, &["/bin/sh"]);
    App {
        files: vec![
            ("/data/big.bin", big),
            ("/data/small.txt", small),
            ("/data/mid.bin", mid),
        ],
        image,
        size,
    }
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
fn plain_gzip_image_indexed_once_pulls_lazily_and_runs() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (s1, s2, s3, s4) = (
        scratch.path().join("img1"),
        scratch.path().join("img2"),
        scratch.path().join("img3"),
        scratch.path().join("img4"),
    );
    let app = build_app(&s1, 7);
    let local = build_app(&s2, 20);
    let lied = build_app(&s3, 30);
    let mixed = build_app(&s4, 40);

    let reg = Registry::start(scratch.path());
    let proxy = CountingProxy::start(reg.port);
    skopeo_push(&s1, "v1", &format!("{}/plain/app:v1", reg.host()));
    skopeo_push(&s2, "v1", &format!("{}/plain/local:v1", reg.host()));
    skopeo_push(&s3, "v1", &format!("{}/plain/lied:v1", reg.host()));
    skopeo_push(&s4, "v1", &format!("{}/plain/mixed:v1", reg.host()));

    // One index per layer, pushed as a referrer of the image manifest.
    let out = rsnap_ok(&[
        "index",
        "--plain-http",
        &format!("{}/plain/app:v1", reg.host()),
    ]);
    eprintln!("rsnap index:\n{out}");
    assert!(out.contains("<- referrer sha256:"), "{out}");
    let fraction: f64 = out
        .lines()
        .last()
        .and_then(|l| l.rsplit('(').next())
        .and_then(|p| p.trim_end_matches("%)").parse().ok())
        .unwrap_or(100.0);
    assert!(fraction < 10.0, "index is {fraction}% of the layers");

    // The second image's indexes go to the daemon's local directory only.
    let root = scratch.path().join("root");
    let gzdir = root.join("gzindex");
    rsnap_ok(&[
        "index",
        "--plain-http",
        "--out",
        gzdir.to_str().unwrap(),
        &format!("{}/plain/local:v1", reg.host()),
    ]);
    // The third image gets indexes that lie: each layer's file is the
    // index of another image's layer (right format, wrong blob).
    for (from, to) in local
        .image
        .layer_digests
        .iter()
        .zip(&lied.image.layer_digests)
    {
        let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
        std::fs::copy(
            gzdir.join(format!("{}.gzindex", hex(from))),
            gzdir.join(format!("{}.gzindex", hex(to))),
        )
        .unwrap();
    }
    // The fourth image: only its upper two layers have an index (local).
    let mixed_idx = scratch.path().join("mixed-index");
    rsnap_ok(&[
        "index",
        "--plain-http",
        "--out",
        mixed_idx.to_str().unwrap(),
        &format!("{}/plain/mixed:v1", reg.host()),
    ]);
    for d in &mixed.image.layer_digests[1..] {
        let name = format!("{}.gzindex", d.trim_start_matches("sha256:"));
        std::fs::copy(mixed_idx.join(&name), gzdir.join(&name)).unwrap();
    }

    std::fs::write(
        scratch.path().join("config.toml"),
        "no_background_fetch = true\n[blob]\nmax_retries = 2\n",
    )
    .unwrap();
    let (daemon, maddr) = common::start_with_metrics(scratch.path(), &[]);
    let ctrd = Containerd::start(scratch.path(), Some(&daemon.sock));

    // Through the counting proxy: every registry byte of the pull and run.
    let app_ref = format!("{}/plain/app:v1", proxy.host());
    let out = pull(&ctrd, &app_ref);
    assert!(out.contains("3 lazy, 0 fetched"), "not lazy: {out}");
    let pulled = proxy.bytes_down();
    assert!(
        pulled * 10 < app.size,
        "lazy pull read {pulled} bytes of a {} byte image",
        app.size
    );
    let run = ctrd.run(&app_ref, Some("remote"), &["sh", "-c", &checksum_cmd(&app)]);
    assert_eq!(run, expected(&app), "container output");
    let after_run = proxy.bytes_down();
    eprintln!(
        "plain image {} B; registry bytes: pull {pulled}, pull+run {after_run}",
        app.size
    );
    assert!(after_run < app.size, "read {after_run} of {}", app.size);
    // The first Prepare looked up the other layers' indexes at once.
    let log = std::fs::read_to_string(scratch.path().join("daemon.log")).unwrap_or_default();
    assert_eq!(
        log.matches("using the indexed layer opened ahead").count(),
        2,
        "layers 2 and 3 opened ahead"
    );
    // The state file of each layer says it is served through its index.
    let states: Vec<String> = app
        .image
        .layer_digests
        .iter()
        .map(|d| format!("/.stargz-snapshotter/{d}.json"))
        .collect();
    let state = ctrd.run(
        &app_ref,
        Some("remote"),
        &["sh", "-c", &format!("cat {}", states.join(" "))],
    );
    assert_eq!(
        state.matches("\"format\":\"gzindex\"").count(),
        3,
        "state files: {state}"
    );
    // And so do the metrics.
    let m = common::metrics(&maddr);
    assert_eq!(
        m.lines()
            .filter(|l| l.starts_with("remote_snapshotter_layer_format{")
                && l.contains("format=\"gzindex\""))
            .count(),
        3,
        "{m}"
    );

    // An index in the local directory (no referrer in the registry).
    let local_ref = format!("{}/plain/local:v1", reg.host());
    let out = pull(&ctrd, &local_ref);
    assert!(
        out.contains("3 lazy, 0 fetched"),
        "local index not used: {out}"
    );
    let run = ctrd.run(
        &local_ref,
        Some("remote"),
        &["sh", "-c", &checksum_cmd(&local)],
    );
    assert_eq!(run, expected(&local), "container output (local index)");

    // Indexes of other layers: refused, every layer falls back, same bytes.
    let lied_ref = format!("{}/plain/lied:v1", reg.host());
    let out = pull(&ctrd, &lied_ref);
    assert!(
        out.contains("0 lazy, 3 fetched")
            || out.contains("0 lazy, 0 fetched, 3 pulled by the snapshotter"),
        "a lying index was used: {out}"
    );
    let run = ctrd.run(
        &lied_ref,
        Some("remote"),
        &["sh", "-c", &checksum_cmd(&lied)],
    );
    assert_eq!(run, expected(&lied), "container output (fallback)");
    let log = std::fs::read_to_string(scratch.path().join("daemon.log")).unwrap_or_default();
    assert!(log.contains("gzip index of"), "no refusal logged");

    // A first layer without an index, two above it with one: the first is
    // pulled by the daemon, which does not pull the indexed ones ahead.
    let ahead = || common::counter(&common::metrics(&maddr), "fallback_pull_ahead_started");
    let ahead_before = ahead();
    assert!(ahead_before.is_some(), "the metric is there");
    let mixed_ref = format!("{}/plain/mixed:v1", reg.host());
    let out = pull(&ctrd, &mixed_ref);
    assert!(
        out.contains("2 lazy, 0 fetched, 1 pulled by the snapshotter"),
        "{out}"
    );
    assert_eq!(ahead(), ahead_before, "indexed layers were pulled ahead");
    let run = ctrd.run(
        &mixed_ref,
        Some("remote"),
        &["sh", "-c", &checksum_cmd(&mixed)],
    );
    assert_eq!(run, expected(&mixed), "container output (mixed)");

    drop(ctrd);
    common::stop(daemon, libc::SIGINT);
    assert!(
        e2e::containerd::mounts_under(scratch.path()).is_empty(),
        "mounts left behind"
    );
}
