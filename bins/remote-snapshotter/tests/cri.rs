//! The Kubernetes node path end to end: containerd 1.6.20's own CRI plugin
//! (`snapshotter = "remote"`, `disable_snapshot_annotations = false`) driven
//! over `runtime.v1` the way the kubelet drives it, with our daemon as the
//! snapshotter. An `rsnap convert`ed eStargz image is pulled lazily by CRI
//! `PullImage` (only the `cri.*` snapshot labels tell our daemon where the
//! layers are), runs in a pod, and is listed, inspected and removed; a plain
//! gzip image through the same config falls back and runs.
//!
//! Pod networks: one pod gets a network namespace of its own through the CNI
//! bridge, host-local and loopback plugins of Debian's
//! containernetworking-plugins (no gateway, no NAT: the host's forwarding
//! settings stay untouched), the other uses the host's network. The sandbox
//! ("pause") image is built offline from busybox-static.
//!
//! Real docker-registry, containerd, runc, FUSE and overlayfs; bytes from the
//! registry are counted by a proxy in front of it; no background fetch, so
//! what is counted is what the pull and the containers needed.

mod common;

use e2e::containerd::{mounts_under, Containerd, CriOptions};
use e2e::cri::{write_pause_image, Cri, PodNetwork};
use e2e::image::{
    busybox_layer, pseudo_random, rsnap_ok, sha256_digest, write_oci_layout, LayerBuilder,
};
use e2e::registry::{skopeo_push, Registry};
use e2e::tcpproxy::CountingProxy;
use std::path::Path;
use std::time::Duration;

const LAYERS: u64 = 2;

/// The test image and what its command prints.
struct App {
    /// Compressed size of its (gzip) layers.
    plain_size: u64,
    expected: String,
}

/// Two layers: busybox, and a data layer with 10 MB nobody reads (it must
/// stay in the registry), a small file the command prints and a 1 MiB file
/// it hashes. The image's own command (no command in the CRI request)
/// does the reading.
fn build_app(dir: &Path) -> App {
    let small = b"hello through CRI\n".to_vec();
    let mid = pseudo_random((1 << 20) + 777, 31);
    let mut data = LayerBuilder::new();
    data.dir("data", 0o755)
        .file("data/big.bin", pseudo_random(6 << 20, 32), 0o644);
    for i in 0..20 {
        data.file(
            &format!("data/filler/{i}.bin"),
            pseudo_random(200_000, 300 + i),
            0o644,
        );
    }
    // Last in the blob: the daemon reads ahead along the blob, and what
    // follows the files read would otherwise be fetched with them.
    data.file("data/small.txt", small.clone(), 0o644)
        .file("data/mid.bin", mid.clone(), 0o644);
    let layers = vec![busybox_layer().tar_gz(), data.tar_gz()];
    let plain_size = layers.iter().map(|l| l.len() as u64).sum();
    write_oci_layout(
        dir,
        "v1",
        layers,
        &[
            "/bin/sh",
            "-c",
            "cat /data/small.txt; sha256sum /data/mid.bin",
        ],
    );
    let expected = format!(
        "hello through CRI\n{}  /data/mid.bin\n",
        sha256_digest(&mid).trim_start_matches("sha256:")
    );
    App {
        plain_size,
        expected,
    }
}

#[test]
fn cri_pulls_estargz_lazily_runs_pods_and_removes_images() {
    if !e2e::require_root_tools(&[
        "docker-registry",
        "containerd",
        "ctr",
        "runc",
        "skopeo",
        "ip",
    ]) || !e2e::cri::require_cni_plugins()
    {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path().to_path_buf();
    let src = s.join("src");
    let dst = s.join("dst");
    let pause = s.join("pause");
    let app = build_app(&src);
    rsnap_ok(&[
        "convert",
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:v1", dst.display()),
    ]);
    write_pause_image(&pause, "v1");

    let reg = Registry::start(&s);
    let proxy = CountingProxy::start(reg.port);
    skopeo_push(&dst, "v1", &format!("{}/lazy/app:v1", reg.host()));
    skopeo_push(&src, "v1", &format!("{}/plain/app:v1", reg.host()));
    skopeo_push(&pause, "v1", &format!("{}/pause:v1", reg.host()));

    std::fs::write(
        s.join("config.toml"),
        "noprefetch = true\nno_background_fetch = true\n[blob]\nmax_retries = 2\n",
    )
    .unwrap();
    let (daemon, metrics) = common::start_with_metrics(&s, &[]);
    let sandbox_image = format!("{}/pause:v1", reg.host());
    let ctrd = Containerd::start_cri(
        &s,
        &daemon.sock,
        &CriOptions {
            sandbox_image: sandbox_image.clone(),
            plain_http: vec![reg.host(), proxy.host()],
            cni: true,
        },
    );
    let stack = common::Stack {
        ctrd: Some(ctrd),
        daemon: Some(daemon),
        scratch,
        metrics: None,
    };
    let ctrd = stack.ctrd.as_ref().unwrap();
    let counter = |name: &str| {
        let text = common::metrics(&metrics);
        common::counter(&text, name).unwrap_or(0)
    };
    let cri = Cri::connect(&ctrd.socket);

    // The pause image first (a plain image: it falls back), so what follows
    // counts only the app's pulls.
    cri.pull(&sandbox_image)
        .expect("PullImage of the sandbox image");
    let mounts_before = counter("remote_mounts");
    let fallbacks_before = counter("fallback_not_remote");

    // PullImage of the eStargz image: every layer mounted remotely, a small
    // fraction of the image read.
    let lazy_ref = format!("{}/lazy/app:v1", proxy.host());
    let image_id = cri.pull(&lazy_ref).expect("PullImage of the eStargz image");
    let pulled = proxy.bytes_down();
    eprintln!(
        "CRI PullImage (eStargz): {pulled} registry bytes for a {} B image",
        app.plain_size
    );
    assert_eq!(
        counter("remote_mounts") - mounts_before,
        LAYERS,
        "remote mounts after the CRI pull"
    );
    assert_eq!(counter("fallback_not_remote"), fallbacks_before);
    assert!(
        pulled * 10 < app.plain_size,
        "CRI lazy pull read {pulled} bytes of a {}-byte image",
        app.plain_size
    );

    // ImageStatus and ListImages know it by its tag and id.
    let status = cri
        .image_status(&lazy_ref)
        .expect("ImageStatus of the pulled image");
    assert_eq!(status.id, image_id);
    assert!(status.repo_tags.contains(&lazy_ref), "{status:?}");
    assert!(status.size >= app.plain_size / 2, "size {}", status.size);
    let listed = cri.list_images();
    assert!(
        listed
            .iter()
            .any(|i| i.id == image_id && i.repo_tags.contains(&lazy_ref)),
        "ListImages: {listed:?}"
    );

    // A pod with a network of its own runs the image's own command.
    let logs = stack.scratch.path().join("pod-logs");
    let pod = cri.run_pod("lazy", PodNetwork::Pod, &logs.join("lazy"));
    let ip = pod.ip();
    assert!(ip.starts_with("10."), "pod IP from the CNI bridge: {ip:?}");
    let c = pod.start_container("app", &lazy_ref, &[]);
    assert_eq!(pod.wait_exited(&c, Duration::from_secs(60)), 0, "exit code");
    assert_eq!(pod.log("app"), app.expected, "container output");
    let after_run = proxy.bytes_down();
    eprintln!("CRI pull+run (eStargz): {after_run} registry bytes");
    assert!(
        after_run * 2 < app.plain_size,
        "pull+run read {after_run} of {} bytes",
        app.plain_size
    );
    pod.remove_container(&c);
    drop(pod);

    // A plain gzip image through the same CRI config falls back: the whole
    // image crosses the wire, and it runs in a host-network pod.
    proxy.reset();
    let plain_ref = format!("{}/plain/app:v1", proxy.host());
    cri.pull(&plain_ref).expect("PullImage of the gzip image");
    let fetched = proxy.bytes_down();
    eprintln!("CRI PullImage (gzip): {fetched} registry bytes");
    assert!(fetched >= app.plain_size, "full pull read only {fetched}");
    assert_eq!(
        counter("fallback_not_remote") - fallbacks_before,
        LAYERS,
        "fallbacks"
    );
    let pod = cri.run_pod("plain", PodNetwork::Host, &logs.join("plain"));
    assert_eq!(pod.ip(), "", "a host-network pod has no IP of its own");
    let c = pod.start_container("app", &plain_ref, &[]);
    assert_eq!(pod.wait_exited(&c, Duration::from_secs(60)), 0, "exit code");
    assert_eq!(pod.log("app"), app.expected, "fallback container output");
    drop(pod);

    // ImageFsInfo: what the kubelet's image GC weighs; containerd 1.6 sums
    // our snapshots' Usage under its per-snapshotter path.
    let fs_info = |cri: &Cri| {
        let all = cri.image_fs_info();
        assert_eq!(all.len(), 1, "one image filesystem: {all:?}");
        let f = all[0].clone();
        let mp = f
            .fs_id
            .as_ref()
            .map(|i| i.mountpoint.clone())
            .unwrap_or_default();
        assert!(mp.ends_with("io.containerd.snapshotter.v1.remote"), "{f:?}");
        (
            f.used_bytes.map_or(0, |u| u.value),
            f.inodes_used.map_or(0, |u| u.value),
        )
    };
    // (It answers from stats containerd collects every 10 s.)
    let mut usage = (0, 0);
    e2e::process::wait_until(Duration::from_secs(30), || {
        usage = fs_info(&cri);
        usage.0 >= app.plain_size
    });
    let (used, inodes) = usage;
    eprintln!("ImageFsInfo with both images: {used} bytes, {inodes} inodes");
    assert!(
        used >= app.plain_size,
        "used bytes {used} count the gzip image's files"
    );
    assert!(inodes > 10, "inodes {inodes}");

    // The lazy image's layers are FUSE mounts under our root until the
    // image is removed.
    let snapshots_dir = stack.scratch.path().join("root/snapshots");
    let fuse_mounts = || {
        let table = mountinfo::read_self().expect("mountinfo");
        table
            .iter()
            .filter(|m| m.fs_type == "fuse.rsnap" && m.mount_point.starts_with(&snapshots_dir))
            .count() as u64
    };
    assert_eq!(fuse_mounts(), LAYERS, "the lazy image's layers are mounted");

    // RemoveImage forgets the image (and removing it again is not an error,
    // as the kubelet expects); the other images stay.
    cri.remove_image(&lazy_ref).expect("RemoveImage");
    assert!(
        cri.image_status(&lazy_ref).is_none(),
        "removed image still known"
    );
    cri.remove_image(&lazy_ref)
        .expect("RemoveImage of a removed image");
    let listed = cri.list_images();
    assert!(!listed.iter().any(|i| i.id == image_id), "{listed:?}");
    assert!(
        listed.iter().any(|i| i.repo_tags.contains(&plain_ref)),
        "{listed:?}"
    );
    // containerd's GC (synchronous for CRI's RemoveImage) removed the
    // layers' snapshots in our daemon: their FUSE mounts are gone (the
    // chunks they read stay in the cache, evicted by its LRU like any).
    assert!(
        e2e::process::wait_until(Duration::from_secs(20), || fuse_mounts() == 0),
        "the removed image's layers are still mounted"
    );
    // Removing the gzip image too empties the image filesystem but for the
    // small sandbox image (a remote layer counts what it keeps on disk
    // under its snapshot, which is nothing).
    cri.remove_image(&plain_ref)
        .expect("RemoveImage of the gzip image");
    let mut used_after = used;
    e2e::process::wait_until(Duration::from_secs(30), || {
        used_after = fs_info(&cri).0;
        used_after * 4 < app.plain_size
    });
    eprintln!("ImageFsInfo after RemoveImage of both: {used_after} bytes");
    assert!(
        used_after * 4 < app.plain_size,
        "usage {used} -> {used_after}"
    );

    drop(cri);
    let mut stack = stack;
    drop(stack.ctrd.take());
    common::stop(stack.daemon.take().unwrap(), libc::SIGINT);
    let left = mounts_under(stack.scratch.path());
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}
