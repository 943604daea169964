//! With REAL containerd 1.6: registry -> our daemon -> containerd (the
//! start order containerd needs), pull a busybox image built here through
//! the `remote` proxy snapshotter, run a container on it, then remove the
//! image and check containerd's garbage collection removed our snapshots.

mod common;

use e2e::containerd::{mounts_under, Containerd};
use e2e::image::{busybox_layer, write_oci_layout, LayerBuilder};
use e2e::registry::{skopeo_push, Registry};
use snapshotter::Kind;
use snapshotter_testsuite::Api;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_and_run_with_real_containerd() {
    let tools = ["containerd", "ctr", "runc", "docker-registry", "skopeo"];
    if !e2e::require_root_tools(&tools) {
        return;
    }
    let scratch = tempfile::Builder::new()
        .prefix("rs-ctrd")
        .tempdir()
        .unwrap();
    let dir = scratch.path();

    // Drop order is the reverse: containerd stops first, then us, then the registry.
    let registry = Registry::start(dir);
    let mut app = LayerBuilder::new();
    app.file("hello.txt", "from the second layer\n", 0o644);
    app.whiteout("etc/group");
    write_oci_layout(
        &dir.join("oci"),
        "1",
        vec![busybox_layer().tar_gz(), app.tar_gz()],
        &["/bin/sh"],
    );
    let image = format!("{}/busybox:1", registry.host());
    skopeo_push(&dir.join("oci"), "1", &image);

    let daemon = common::start(dir, &[]);
    let ctrd = Containerd::start(dir, Some(&daemon.sock));

    ctrd.pull_plain_http(&image, Some("remote"));
    let a = common::api(&daemon).await;
    let snaps = a.list(&[]).await.unwrap();
    let committed = snaps.iter().filter(|i| i.kind == Kind::Committed).count();
    assert_eq!(
        committed, 2,
        "two layers unpacked into our snapshotter: {snaps:?}"
    );
    let out = ctrd.ctr_ok(&["snapshots", "--snapshotter", "remote", "ls"]);
    assert!(
        out.lines().count() >= 3,
        "ctr sees the snapshots through the proxy:\n{out}"
    );

    // containerd forwards label updates of inherited keys (`containerd.io/snapshot/`)
    // to the backend as `labels.KEY` field paths.
    let top = out
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("a snapshot key")
        .to_string();
    let key = "containerd.io/snapshot/e2e-test";
    ctrd.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "remote",
        "label",
        &top,
        &format!("{key}=yes"),
    ]);
    let filter = format!("labels.\"{key}\"==yes");
    let labelled = a.list(&[filter.as_str()]).await.unwrap();
    assert_eq!(
        labelled.len(),
        1,
        "the update reached our store: {labelled:?}"
    );

    let out = ctrd.run(
        &image,
        Some("remote"),
        &[
            "/bin/sh",
            "-c",
            "echo hi; cat /hello.txt; test -e /etc/group || echo whiteout-ok",
        ],
    );
    assert_eq!(out, "hi\nfrom the second layer\nwhiteout-ok\n");

    // Image removal with --sync runs containerd's GC, which walks and
    // removes the backend snapshots (and calls Cleanup).
    ctrd.ctr_ok(&["images", "rm", "--sync", &image]);
    let left = a.list(&[]).await.unwrap();
    assert!(left.is_empty(), "GC removed our snapshots: {left:?}");
    let dirs: Vec<_> = std::fs::read_dir(dir.join("root/snapshots"))
        .unwrap()
        .collect();
    assert!(dirs.is_empty(), "and their directories: {dirs:?}");

    drop(ctrd);
    common::stop(daemon, libc::SIGINT);
    drop(registry);
    assert!(
        mounts_under(dir).is_empty(),
        "nothing left mounted: {:?}",
        mounts_under(dir)
    );
}
