//! Profiles from real runs, end to end (real registry, containerd, runc,
//! FUSE): with `[profile] record = true` a lazily pulled image runs once
//! through containerd; the daemon keeps the files the container opened;
//! `rsnap profile export` writes them as a record; `rsnap optimize
//! --reuse-record` builds the optimized image from it without a trial run:
//! its data layer has the opened files first, before the prefetch landmark,
//! and pulled lazily it runs reading a fraction of the image.

mod common;

use e2e::image::{
    busybox_layer, pseudo_random, rsnap, rsnap_ok, sha256_digest, write_oci_layout, LayerBuilder,
    OciLayout,
};
use e2e::process::wait_until;
use e2e::registry::Registry;
use e2e::tcpproxy::CountingProxy;
use std::time::Duration;

const WINDOW_SEC: u64 = 3;

#[test]
fn a_profile_recorded_by_the_daemon_optimizes_the_image() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path().to_path_buf();
    let src = s.join("src");
    let small = b"read at start\n".to_vec();
    let mid = pseudo_random(300_000, 77);
    let mut data = LayerBuilder::new();
    data.dir("data", 0o755);
    // Unused files before and after the two the command reads, so "first"
    // is a change of order, not an accident of it.
    for i in 0..12 {
        data.file(
            &format!("data/a{i:02}.bin"),
            pseudo_random(1 << 20, 900 + i),
            0o644,
        );
    }
    data.file("data/small.txt", small.clone(), 0o644)
        .file("data/mid.bin", mid.clone(), 0o644);
    for i in 0..12 {
        data.file(
            &format!("data/z{i:02}.bin"),
            pseudo_random(1 << 20, 950 + i),
            0o644,
        );
    }
    let cmd = "cat /data/small.txt; sha256sum /data/mid.bin";
    let layers = vec![busybox_layer().tar_gz(), data.tar_gz()];
    let plain_size: u64 = layers.iter().map(|l| l.len() as u64).sum();
    write_oci_layout(&src, "v1", layers, &["/bin/sh", "-c", cmd]);
    let reg = Registry::start(&s);
    let image = format!("{}/prof/app:v1", reg.host());
    rsnap_ok(&[
        "convert",
        "--plain-http",
        &format!("oci:{}:v1", src.display()),
        &image,
    ]);

    let stack = common::Stack::start(
        scratch,
        Some(&format!(
            "no_background_fetch = true\n[profile]\nrecord = true\nwindow_sec = {WINDOW_SEC}\n"
        )),
    );
    let ctrd = stack.ctrd();
    let pull = |r: &str| {
        let out = stack.pull_ok(r);
        assert!(out.contains("2 lazy, 0 fetched"), "not lazy: {out}");
    };
    pull(&image);
    let want = format!(
        "{}{}  /data/mid.bin\n",
        String::from_utf8_lossy(&small),
        sha256_digest(&mid).trim_start_matches("sha256:")
    );
    assert_eq!(ctrd.run(&image, Some("remote"), &["sh", "-c", cmd]), want);

    // The window closes, the profile is kept; export it as a record.
    let root = s.join("root");
    let root_s = root.to_str().unwrap();
    let listed = wait_until(Duration::from_secs(WINDOW_SEC + 15), || {
        rsnap(&["profile", "list", "--root", root_s])
            .1
            .contains("prof/app:v1")
    });
    assert!(listed, "no profile kept");
    let rec = s.join("record.json");
    rsnap_ok(&[
        "profile",
        "export",
        "app:v1",
        "-o",
        rec.to_str().unwrap(),
        "--root",
        root_s,
        "--plain-http",
    ]);
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(&rec).unwrap()).unwrap();
    eprintln!("record: {record:#}");
    let files_of = |needle: &str| -> Vec<String> {
        record["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                l["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
            })
            .find(|f| f.iter().any(|p| p.contains(needle)))
            .unwrap_or_else(|| panic!("no layer with {needle} in {record:#}"))
    };
    // The data layer: exactly the two files, in the order they were opened.
    assert_eq!(files_of("data/"), ["data/small.txt", "data/mid.bin"]);
    // The busybox layer: the shell and its applets are one executable.
    assert!(files_of("bin/busybox").contains(&"bin/busybox".to_string()));

    // Optimize from the record alone (no trial run), into a layout and a
    // registry: the same record gives the same image.
    let out_dir = s.join("opt");
    let opt_ref = format!("{}/prof/app:opt", reg.host());
    for dst in [format!("oci:{}:v1", out_dir.display()), opt_ref.clone()] {
        rsnap_ok(&[
            "optimize",
            "--plain-http",
            "--reuse-record",
            rec.to_str().unwrap(),
            "--scratch-dir",
            s.to_str().unwrap(),
            &image,
            &dst,
        ]);
    }
    let layout = OciLayout::open(&out_dir);
    let m = layout.manifest(Some("v1"));
    let data_blob = layout.blob_path(m["layers"][1]["digest"].as_str().unwrap());
    let toc: serde_json::Value =
        serde_json::from_str(&rsnap_ok(&["toc", data_blob.to_str().unwrap()])).unwrap();
    // The regular files before the landmark, in blob order.
    let mut head = Vec::new();
    let mut landmark = None;
    for e in toc["entries"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().trim_start_matches("./");
        if name == ".prefetch.landmark" || name == ".no.prefetch.landmark" {
            landmark = Some(name.to_string());
            break;
        }
        if e["type"] == "reg" {
            head.push(name.to_string());
        }
    }
    assert_eq!(landmark.as_deref(), Some(".prefetch.landmark"), "{toc:#}");
    assert_eq!(head, ["data/small.txt", "data/mid.bin"], "{toc:#}");

    // The optimized image, pulled lazily through a counting proxy, runs the
    // command reading a fraction of it.
    let proxy = CountingProxy::start(reg.port);
    let lazy_ref = format!("{}/prof/app:opt", proxy.host());
    pull(&lazy_ref);
    assert_eq!(
        ctrd.run(&lazy_ref, Some("remote"), &["sh", "-c", cmd]),
        want
    );
    let read = proxy.bytes_down();
    eprintln!(
        "FIGURE profile-record: image {plain_size} B; optimized from the daemon's record, pull + run read {read} B"
    );
    assert!(read * 2 < plain_size, "read {read} of {plain_size}");
    drop(stack);
}
