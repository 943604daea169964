//! An image made by `rsnap optimize`, pushed by it to a real registry,
//! pulled lazily by our daemon under containerd, runs the profiled command
//! and reads much less than the image from the registry.

mod common;

use e2e::image::{
    busybox_layer, pseudo_random, rsnap_ok, sha256_digest, write_oci_layout, LayerBuilder,
};
use e2e::registry::Registry;
use e2e::tcpproxy::CountingProxy;

#[test]
fn optimized_image_runs_lazily_through_the_daemon() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    let small = b"read at start\n".to_vec();
    let mut data = LayerBuilder::new();
    data.dir("data", 0o755)
        .file("data/small.txt", small.clone(), 0o644);
    for i in 0..24 {
        data.file(
            &format!("data/unused/{i}.bin"),
            pseudo_random(1 << 20, 500 + i),
            0o644,
        );
    }
    let layers = vec![busybox_layer().tar_gz(), data.tar_gz()];
    let plain_size: u64 = layers.iter().map(|l| l.len() as u64).sum();
    write_oci_layout(&src, "v1", layers, &["/bin/sh"]);

    let reg = Registry::start(scratch.path());
    let proxy = CountingProxy::start(reg.port);
    let opt_ref = format!("{}/opt/app:v1", reg.host());
    let cmd = "sha256sum /data/small.txt";
    rsnap_ok(&[
        "optimize",
        "--plain-http",
        &format!("oci:{}:v1", src.display()),
        &opt_ref,
        "--scratch-dir",
        scratch.path().to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        cmd,
    ]);

    let stack = common::Stack::start(scratch, Some("no_background_fetch = true\n"));
    let ctrd = stack.ctrd();
    let lazy_ref = format!("{}/opt/app:v1", proxy.host());
    let out = stack.pull_ok(&lazy_ref);
    assert!(out.contains("2 lazy, 0 fetched"), "not lazy: {out}");
    let pulled = proxy.bytes_down();
    eprintln!("pull: {pulled} B");
    let run = ctrd.run(&lazy_ref, Some("remote"), &["sh", "-c", cmd]);
    let want = format!(
        "{}  /data/small.txt\n",
        sha256_digest(&small).trim_start_matches("sha256:")
    );
    assert_eq!(run, want);
    let read = proxy.bytes_down();
    eprintln!("image {plain_size} B; registry bytes for pull + run: {read}");
    // busybox (~1 MB) is read whole, and the daemon reads ahead (8 MiB by
    // default) after small.txt; most of the 24 MiB of unused data stays remote.
    assert!(read * 2 < plain_size, "read {read} of {plain_size}");
}
