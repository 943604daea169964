//! Baseline for the convert tests, and a test of the harness itself: an
//! image built in code (not converted) goes to a real registry with skopeo,
//! stock containerd pulls it with overlayfs and runc runs it. Whatever the
//! converted image is checked against must first work here.

use e2e::containerd::{mounts_under, Containerd};
use e2e::image::{busybox_layer, pseudo_random, sha256_digest, write_oci_layout, LayerBuilder};
use e2e::registry::{skopeo_push, Registry};

#[test]
fn stock_image_runs_under_stock_containerd() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let big = pseudo_random(300_000, 1);
    let mut top = LayerBuilder::new();
    top.dir("data", 0o755)
        .file("data/big.bin", big.clone(), 0o644)
        .file("data/hello.txt", "hello from layer 2\n", 0o644)
        .whiteout("etc/group");
    let layout = scratch.path().join("oci");
    write_oci_layout(
        &layout,
        "v1",
        vec![busybox_layer().tar_gz(), top.tar_gz()],
        &["/bin/sh"],
    );

    let reg = Registry::start(scratch.path());
    let reference = format!("{}/stock/busybox:v1", reg.host());
    skopeo_push(&layout, "v1", &reference);

    let root_dir;
    {
        let ctrd = Containerd::start(scratch.path(), None);
        root_dir = ctrd.root.clone();
        ctrd.pull_plain_http(&reference, None);
        let out = ctrd.run(
            &reference,
            None,
            &[
                "sh",
                "-c",
                "cat /data/hello.txt; sha256sum /data/big.bin; test -e /etc/group || echo gone",
            ],
        );
        let want_sum = sha256_digest(&big);
        let want_sum = want_sum.trim_start_matches("sha256:");
        assert_eq!(
            out,
            format!("hello from layer 2\n{want_sum}  /data/big.bin\ngone\n"),
            "container output"
        );
    }
    // Dropping the harness left nothing mounted.
    assert!(mounts_under(&root_dir).is_empty());
}

/// A test that fails while a container runs must not leak the container,
/// its shim or its mounts: dropping the harness removes them.
#[test]
fn harness_cleans_up_running_containers() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let layout = scratch.path().join("oci");
    write_oci_layout(&layout, "v1", vec![busybox_layer().tar_gz()], &["/bin/sh"]);
    let reg = Registry::start(scratch.path());
    let reference = format!("{}/stock/sleeper:v1", reg.host());
    skopeo_push(&layout, "v1", &reference);
    let ctrd = Containerd::start(scratch.path(), None);
    ctrd.pull_plain_http(&reference, None);
    let id = e2e::containerd::unique_id("sleeper");
    ctrd.ctr_ok(&["run", "-d", &reference, &id, "sleep", "600"]);
    let tasks = ctrd.ctr_ok(&["tasks", "ls", "-q"]);
    assert!(tasks.contains(&id), "{tasks}");
    let shim_pids = pids_with_arg(&id);
    assert!(!shim_pids.is_empty(), "no shim found for {id}");
    let (root, state) = (ctrd.root.clone(), ctrd.state.clone());
    assert!(
        !mounts_under(&state).is_empty(),
        "rootfs of the running task is mounted"
    );
    drop(ctrd);
    assert!(mounts_under(&root).is_empty() && mounts_under(&state).is_empty());
    let ok = e2e::process::wait_until(std::time::Duration::from_secs(10), || {
        shim_pids
            .iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
    });
    assert!(ok, "shim still alive: {shim_pids:?}");
}

/// PIDs whose command line has `arg` as one argument (the shim is started
/// with `-id ID`).
fn pids_with_arg(arg: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if cmd.split(|b| *b == 0).any(|a| a == arg.as_bytes())
            && cmd.starts_with(b"/usr/bin/containerd-shim")
        {
            out.push(pid);
        }
    }
    out
}
