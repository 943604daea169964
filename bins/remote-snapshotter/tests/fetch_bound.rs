//! Regression guard of issue #10: a lazily pulled container fetches about
//! what it reads. Real docker-registry behind a byte-counting proxy, real
//! containerd and runc, our daemon with no background fetch; the container
//! reads a known set of files (scattered small ones and one sequential big
//! one), and the registry bytes of the pull and of the run are held under
//! bounds derived from the TOCs and from the bytes read.

mod common;

use e2e::containerd::{Containerd, NAMESPACE};
use e2e::image::{
    busybox_layer, pseudo_random, rsnap_ok, sha256_digest, write_oci_layout, LayerBuilder,
};
use e2e::registry::{skopeo_push, Registry};
use e2e::tcpproxy::CountingProxy;
use std::path::Path;

/// Small files in the data layer, in tar order; the container reads every
/// `STRIDE`-th, so what it reads is scattered 4 MiB apart (an 8 MiB
/// readahead window around each read fetches mostly unread neighbours).
const SMALL_FILES: usize = 96;
const SMALL_LEN: usize = 256 << 10;
const STRIDE: usize = 16;
/// One file read whole, front to back: readahead should pay off here.
const SEQ_LEN: usize = 6 << 20;

/// Fixed slack on top of 1.5 × the bytes read: HTTP response headers
/// (~0.5 KiB per request; a few hundred requests at most), the tar header
/// and gzip member framing around each file's chunks (< 1 KiB per file), and
/// the few small files runc and the shell may touch (/etc/passwd, /etc/group).
const RUN_SLACK: u64 = 256 << 10;
/// What the pull may read of each layer: its TOC region (TOC + footer), or
/// the speculative tail that fetches footer and TOC in one request when the
/// TOC fits (`estargz::reader::TAIL_READ`), whichever is larger.
const TAIL_READ: u64 = 64 << 10;
/// Slack on top of that for the pull: the manifest and config (< 4 KiB
/// here) and the HTTP headers of a handful of requests.
const PULL_SLACK: u64 = 16 << 10;

fn small_path(i: usize) -> String {
    format!("data/small/{i:03}.bin")
}

/// busybox, then the data layer; returns the container's command and the
/// bytes it reads (file sizes, busybox counted whole though it is mapped
/// and only partly touched).
fn build(dir: &Path) -> (String, u64) {
    let mut data = LayerBuilder::new();
    data.dir("data", 0o755).dir("data/small", 0o755);
    for i in 0..SMALL_FILES {
        data.file(
            &small_path(i),
            pseudo_random(SMALL_LEN, 1000 + i as u64),
            0o644,
        );
    }
    data.file("data/seq.bin", pseudo_random(SEQ_LEN, 7), 0o644);
    write_oci_layout(
        dir,
        "v1",
        vec![busybox_layer().tar_gz(), data.tar_gz()],
        &["/bin/sh"],
    );
    let read: Vec<String> = (0..SMALL_FILES)
        .step_by(STRIDE)
        .map(|i| format!("/{}", small_path(i)))
        .collect();
    let busybox = std::fs::metadata("/bin/busybox").unwrap().len();
    let bytes = busybox + (read.len() * SMALL_LEN + SEQ_LEN) as u64;
    let cmd = format!(
        "cat {} | sha256sum; sha256sum /data/seq.bin",
        read.join(" ")
    );
    (cmd, bytes)
}

fn expected() -> String {
    let mut cat = Vec::new();
    for i in (0..SMALL_FILES).step_by(STRIDE) {
        cat.extend(pseudo_random(SMALL_LEN, 1000 + i as u64));
    }
    let hex = |d: &[u8]| sha256_digest(d).trim_start_matches("sha256:").to_string();
    format!(
        "{}  -\n{}  /data/seq.bin\n",
        hex(&cat),
        hex(&pseudo_random(SEQ_LEN, 7))
    )
}

/// Bytes of an eStargz blob from its TOC to the end (TOC + footer): the
/// 51-byte footer's gzip extra field holds the TOC offset as 16 hex digits.
fn toc_region(blob: &[u8]) -> u64 {
    let footer = &blob[blob.len() - 51..];
    assert_eq!(&footer[32..38], b"STARGZ", "not an eStargz footer");
    let hex = std::str::from_utf8(&footer[16..32]).unwrap();
    blob.len() as u64 - u64::from_str_radix(hex, 16).unwrap()
}

#[test]
fn lazy_pull_and_run_fetch_about_what_the_container_reads() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    let dst = scratch.path().join("dst");
    let (cmd, read) = build(&src);
    rsnap_ok(&[
        "convert",
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:v1", dst.display()),
    ]);
    let layout = e2e::image::OciLayout::open(&dst);
    let manifest = layout.manifest(Some("v1"));
    let tocs: u64 = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| toc_region(&layout.blob(l["digest"].as_str().unwrap())).max(TAIL_READ))
        .sum();

    let reg = Registry::start(scratch.path());
    let proxy = CountingProxy::start(reg.port);
    skopeo_push(&dst, "v1", &format!("{}/bound/app:v1", reg.host()));
    // No background fetch: every byte counted is one the pull or the
    // container asked for (with the readahead that came with it).
    std::fs::write(
        scratch.path().join("config.toml"),
        "no_background_fetch = true\n[blob]\nmax_retries = 2\n",
    )
    .unwrap();
    let daemon = common::start(scratch.path(), &[]);
    let ctrd = Containerd::start(scratch.path(), Some(&daemon.sock));

    let image = format!("{}/bound/app:v1", proxy.host());
    let sock = ctrd.socket.to_str().unwrap().to_string();
    let out = rsnap_ok(&["pull", "-a", &sock, "-n", NAMESPACE, "--plain-http", &image]);
    assert!(out.contains("2 lazy, 0 fetched"), "not lazy: {out}");
    let pulled = proxy.bytes_down();

    let run = ctrd.run(&image, Some("remote"), &["sh", "-c", &cmd]);
    assert_eq!(run, expected(), "container output");
    let ran = proxy.bytes_down() - pulled;

    let pull_bound = tocs + PULL_SLACK;
    let run_bound = read * 3 / 2 + RUN_SLACK;
    eprintln!(
        "TOC regions (or 64 KiB tails) {tocs} B; pull fetched {pulled} B (bound {pull_bound}); \
         the container read {read} B, its run fetched {ran} B (bound {run_bound}, {:.2}x the bytes read)",
        ran as f64 / read as f64
    );
    assert!(
        pulled <= pull_bound,
        "the pull fetched {pulled} B, more than the TOC regions or tails ({tocs} B) + {PULL_SLACK}"
    );
    assert!(
        ran <= run_bound,
        "the run fetched {ran} B for {read} B read: more than 1.5x + {RUN_SLACK}"
    );

    drop(ctrd);
    common::stop(daemon, libc::SIGINT);
    assert!(
        e2e::containerd::mounts_under(scratch.path()).is_empty(),
        "mounts left behind"
    );
}
