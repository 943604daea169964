//! Layer formats other than plain eStargz, end to end with real parts
//! (docker-registry, containerd, runc, FUSE): legacy CRFS stargz (no chunk
//! digests, 47-byte footer, no TOC digest) runs lazily only with
//! `allow_no_verification`, is counted and checked whole once fetched, and
//! falls back with a reason without it; a min-chunk-size eStargz (small
//! files sharing gzip members) runs lazily and verified; an external-TOC
//! eStargz (TOC in the `<tag>-esgztoc` TOC image) runs lazily and
//! verified, and falls back when its TOC image is missing.

mod common;

use e2e::image::LayerBuilder;
use e2e::image::{busybox_layer, pseudo_random, rsnap_ok, sha256_digest, write_oci_layout};
use e2e::process::wait_until;
use e2e::registry::{skopeo_push, Registry};
use std::path::Path;
use std::time::Duration;

/// Two layers: busybox and data (one big file of several chunks, many
/// small ones). Returns the command to run and its expected output.
fn build(dir: &Path) -> (String, String) {
    let big = pseudo_random(5 << 20, 11);
    let mut data = LayerBuilder::new();
    data.dir("data", 0o755)
        .file("data/big.bin", big.clone(), 0o644);
    let mut small = Vec::new();
    for i in 0..60u64 {
        let bytes = pseudo_random(300 + 97 * i as usize, 200 + i);
        data.file(&format!("data/s/{i:02}"), bytes.clone(), 0o644);
        small.extend_from_slice(&bytes);
    }
    write_oci_layout(
        dir,
        "v1",
        vec![busybox_layer().tar_gz(), data.tar_gz()],
        &["/bin/sh"],
    );
    let cmd = "sha256sum /data/big.bin; cat /data/s/* | sha256sum".to_string();
    let hex = |d: &[u8]| sha256_digest(d).trim_start_matches("sha256:").to_string();
    let want = format!("{}  /data/big.bin\n{}  -\n", hex(&big), hex(&small));
    (cmd, want)
}

fn convert(src: &Path, dst: &Path, flags: &[&str]) {
    let mut args = vec!["convert".to_string()];
    args.extend(flags.iter().map(|s| s.to_string()));
    args.push(format!("oci:{}:v1", src.display()));
    args.push(format!("oci:{}:v1", dst.display()));
    rsnap_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// A fresh daemon (with `config`) and containerd, torn down in order.
fn stack(config: &str) -> common::Stack {
    common::Stack::start(tempfile::tempdir().unwrap(), Some(config))
}

/// A container of `image` runs `cmd` and prints `want`; else the failure
/// shows its stderr and the daemon's warnings.
fn run_checked(st: &common::Stack, image: &str, cmd: &str, want: &str) {
    let (ok, got, err) = st
        .ctrd()
        .run_full(image, Some("remote"), &["sh", "-c", cmd]);
    if !(ok && got == want) {
        let log = st.log();
        let warnings: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        panic!(
            "{cmd}: exit ok {ok}, got {got:?}, want {want:?}; stderr {err:?}; daemon:\n{}",
            warnings.join("\n")
        );
    }
}

/// Per-layer values of the `layer_unverified` gauge.
fn unverified_states(text: &str) -> Vec<u64> {
    text.lines()
        .filter(|l| l.starts_with("remote_snapshotter_layer_unverified{"))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse().ok())
        .collect()
}

#[test]
fn legacy_stargz_runs_unverified_when_allowed_and_falls_back_without() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (src, dst) = (scratch.path().join("src"), scratch.path().join("dst"));
    let (cmd, want) = build(&src);
    convert(&src, &dst, &["--legacy-stargz", "--chunk-size", "1048576"]);
    let reg = Registry::start(scratch.path());
    let image = format!("{}/legacy/app:v1", reg.host());
    skopeo_push(&dst, "v1", &image);

    // Not allowed: containerd pulls it the ordinary way, and the log says why.
    let st = stack("noprefetch = true\n");
    let out = st.pull_ok(&image);
    assert!(
        out.contains("0 lazy, 2 fetched")
            || out.contains("0 lazy, 0 fetched, 2 pulled by the snapshotter"),
        "expected a fallback: {out}"
    );
    run_checked(&st, &image, &cmd, &want);
    let log = st.log();
    assert!(
        log.contains("allow_no_verification"),
        "the fallback names the key that would allow it:\n{log}"
    );
    drop(st);

    // Allowed: lazy, counted, and once background fetch has every chunk,
    // each layer's whole blob is checked against its digest.
    let st = stack("allow_no_verification = true\n");
    let out = st.pull_ok(&image);
    assert!(out.contains("2 lazy, 0 fetched"), "not lazy: {out}");
    run_checked(&st, &image, &cmd, &want);
    assert_eq!(
        st.counter("unverified_layers_mounted"),
        Some(2),
        "{}",
        st.metrics()
    );
    let passed = wait_until(Duration::from_secs(90), || {
        unverified_states(&st.metrics()) == [2, 2]
    });
    let text = st.metrics();
    assert!(
        passed,
        "both blobs checked whole: {:?}",
        unverified_states(&text)
    );
    let log = st.log();
    assert!(log.contains("WITHOUT verification"), "logged per layer");
    assert_eq!(log.matches("layer mounted WITHOUT verification").count(), 2);
    drop(st);
}

#[test]
fn min_chunk_size_estargz_runs_lazily_and_verified() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (src, dst) = (scratch.path().join("src"), scratch.path().join("dst"));
    let (cmd, want) = build(&src);
    convert(&src, &dst, &["--min-chunk-size", "65536"]);
    // Small files really share members.
    let layout = e2e::image::OciLayout::open(&dst);
    let manifest = layout.manifest(Some("v1"));
    let data = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = layout.blob_path(&data);
    let toc = rsnap_ok(&["toc", blob.to_str().unwrap(), "--verify"]);
    assert!(toc.contains("\"innerOffset\""), "no shared members");
    let reg = Registry::start(scratch.path());
    let image = format!("{}/minchunk/app:v1", reg.host());
    skopeo_push(&dst, "v1", &image);

    let st = stack("noprefetch = true\n");
    let out = st.pull_ok(&image);
    assert!(out.contains("2 lazy, 0 fetched"), "not lazy: {out}");
    run_checked(&st, &image, &cmd, &want);
    let log = st.log();
    assert!(!log.contains("WITHOUT verification"), "verified layers");
    drop(st);
}

#[test]
fn external_toc_estargz_runs_lazily_with_its_toc_image() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (src, dst) = (scratch.path().join("src"), scratch.path().join("dst"));
    let (cmd, want) = build(&src);
    convert(&src, &dst, &["--external-toc"]);
    // The TOC image sits next to the image, as the reference lays it out.
    let layout = e2e::image::OciLayout::open(&dst);
    let toc_image = layout.manifest(Some("v1-esgztoc"));
    assert_eq!(toc_image["layers"].as_array().unwrap().len(), 2);
    let reg = Registry::start(scratch.path());
    let image = format!("{}/ext/app:v1", reg.host());
    skopeo_push(&dst, "v1", &image);

    // Without its TOC image the layers cannot be read lazily: fallback.
    let st = stack("noprefetch = true\n");
    let out = st.pull_ok(&image);
    assert!(
        out.contains("0 lazy, 2 fetched")
            || out.contains("0 lazy, 0 fetched, 2 pulled by the snapshotter"),
        "expected a fallback: {out}"
    );
    run_checked(&st, &image, &cmd, &want);
    let log = st.log();
    assert!(
        log.contains("esgztoc"),
        "the fallback names the TOC image:\n{log}"
    );
    drop(st);

    skopeo_push(
        &dst,
        "v1-esgztoc",
        &format!("{}/ext/app:v1-esgztoc", reg.host()),
    );
    let st = stack("noprefetch = true\n");
    let out = st.pull_ok(&image);
    assert!(out.contains("2 lazy, 0 fetched"), "not lazy: {out}");
    run_checked(&st, &image, &cmd, &want);
    let log = st.log();
    assert!(log.contains("external TOC fetched"), "{log}");
    assert!(!log.contains("WITHOUT verification"), "verified layers");
    drop(st);
}
