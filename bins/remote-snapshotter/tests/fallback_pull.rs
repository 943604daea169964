//! The fallback pull end to end: a plain gzip image (never converted, so
//! nothing can be lazy) pulled with `rsnap pull` through real containerd
//! 1.6 and our daemon, which pulls and unpacks every layer itself
//! (`[fallback_pull]`) and answers containerd as for a remote layer. The
//! layers are committed (`ctr snapshots`), a container runs on them and
//! reads the right bytes, and each layer's tree (types, modes, owners,
//! xattrs, whiteouts, opaque dirs, links, devices, mtimes, contents) equals
//! what containerd's own overlayfs snapshotter unpacks from the same image.
//! Faults: a config whose diff ID lies and a registry that dies mid-pull
//! leave nothing committed and no staging directory behind.

mod common;

use e2e::containerd::NAMESPACE;
use e2e::faultproxy::FaultProxy;
use e2e::image::{
    busybox_layer, pseudo_random, rsnap, sha256_digest, write_oci_layout, Kind, LayerBuilder, Meta,
    OciLayout, MT_MANIFEST,
};
use e2e::registry::{skopeo_push, Registry};
use snapshotter_testsuite::Api;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const TOOLS: &[&str] = &["containerd", "ctr", "runc", "docker-registry", "skopeo"];

/// The second layer: every kind of entry the unpack must get right.
fn app_layer(big: &[u8]) -> LayerBuilder {
    let mut l = LayerBuilder::new();
    l.dir("app", 0o750)
        .file("app/big.bin", big.to_vec(), 0o644)
        .file("app/script.sh", "#!/bin/sh\necho hi\n", 0o755)
        .hardlink("app/big.link", "app/big.bin")
        .symlink("app/rel", "script.sh")
        .symlink("app/abs", "/etc/passwd")
        .entry(
            "app/owned",
            Kind::File(b"owned\n".to_vec()),
            Meta::mode(0o4710).owner(1234, 5678),
        )
        .entry(
            "app/attrs",
            Kind::File(b"x".to_vec()),
            Meta::mode(0o600).xattr("user.note", b"kept"),
        )
        .entry("app/fifo", Kind::Fifo, Meta::mode(0o644))
        .entry("app/null", Kind::CharDevice(1, 3), Meta::mode(0o666))
        .whiteout("etc/group")
        .opaque("tmp");
    l
}

/// One tree as a sorted listing: path -> type, mode, owner, size, rdev,
/// link target, mtime (not of the root), xattrs, content digest.
/// An mtime at or after `since` (the test's start) is printed as `now`:
/// directories a layer changes get the time of the unpack.
fn listing(root: &Path, since: i64) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, since: i64, out: &mut BTreeMap<String, String>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        for p in names {
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let ft = m.file_type();
            let mut xattrs = Vec::new();
            let mut buf = vec![0u8; 4096];
            if let Ok(n) = rustix::fs::llistxattr(&p, &mut buf) {
                for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
                    let name = String::from_utf8_lossy(name).into_owned();
                    let mut v = vec![0u8; 4096];
                    let len = rustix::fs::lgetxattr(&p, name.as_str(), &mut v).unwrap_or(0);
                    xattrs.push(format!("{name}={}", String::from_utf8_lossy(&v[..len])));
                }
            }
            xattrs.sort();
            let content = if ft.is_file() {
                sha256_digest(&std::fs::read(&p).unwrap())
            } else if ft.is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else {
                String::new()
            };
            out.insert(
                rel,
                format!(
                    "mode={:o} uid={} gid={} size={} rdev={} nlink={} mtime={} xattrs={:?} {content}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    if ft.is_dir() { 0 } else { m.size() },
                    m.rdev(),
                    if ft.is_dir() { 0 } else { m.nlink() },
                    if m.mtime() >= since { "now".to_string() } else { m.mtime().to_string() },
                    xattrs,
                ),
            );
            if ft.is_dir() {
                walk(root, &p, since, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, since, &mut out);
    out
}

/// The `fs` directories of committed layers under a snapshotter's
/// `snapshots/` dir, in creation order (ids are numeric and increase).
fn layer_dirs(snapshots: &Path) -> Vec<PathBuf> {
    let mut ids: Vec<u64> = std::fs::read_dir(snapshots)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
        .collect();
    ids.sort();
    ids.iter()
        .map(|i| snapshots.join(i.to_string()).join("fs"))
        .collect()
}

/// Whatever a failed pull may have left: staging or unpack directories.
fn leftovers(root: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(root.join("fallback-pull"))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    if let Ok(d) = std::fs::read_dir(root.join("snapshots")) {
        for e in d {
            let u = e.unwrap().path().join("unpack");
            if u.exists() {
                out.push(u);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_pull_unpacks_what_containerd_would() {
    if !e2e::require_root_tools(TOOLS) {
        return;
    }
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 1;
    let scratch = tempfile::Builder::new().prefix("rs-fbp").tempdir().unwrap();
    let dir = scratch.path();
    let registry = Registry::start(dir);
    // 24 MiB of which half compresses: several ranged requests per layer.
    let mut big = pseudo_random(12 << 20, 77);
    big.extend(std::iter::repeat_n(b'z', 12 << 20));
    let img = write_oci_layout(
        &dir.join("oci"),
        "1",
        vec![busybox_layer().tar_gz(), app_layer(&big).tar_gz()],
        &["/bin/sh"],
    );
    let image = format!("{}/plain:1", registry.host());
    skopeo_push(&dir.join("oci"), "1", &image);

    let stack = common::Stack::start(
        scratch,
        Some("noprefetch = true\n[blob]\nmax_retries = 2\n[fallback_pull]\nrequest_size_mib = 2\nconcurrency = 3\n"),
    );
    let ctrd = stack.ctrd();

    let out = stack.pull_ok(&image);
    assert!(
        out.contains("0 lazy, 0 fetched, 2 pulled by the snapshotter"),
        "rsnap pull: {out}"
    );
    let m = stack.metrics();
    let warnings = || {
        stack
            .log()
            .lines()
            .filter(|l| l.contains("WARN"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        common::counter(&m, "fallback_pulls"),
        Some(2),
        "{}",
        warnings()
    );
    assert_eq!(
        common::counter(&m, "fallback_pull_failures"),
        Some(0),
        "{m}"
    );
    assert_eq!(common::counter(&m, "fallback_not_remote"), Some(2), "{m}");
    // The first layer's Prepare started the second layer's pull, and the
    // second layer's Prepare took it.
    assert_eq!(
        common::counter(&m, "fallback_pull_ahead_started"),
        Some(1),
        "{m}"
    );
    assert_eq!(
        common::counter(&m, "fallback_pull_ahead_used"),
        Some(1),
        "{m}"
    );
    let log = stack.log();
    for d in &img.layer_digests {
        assert!(
            log.contains("layer pulled and unpacked (digest and diff ID verified)")
                && log.contains(d.as_str()),
            "the daemon's log names layer {d}:\n{log}"
        );
    }
    let snaps = ctrd.ctr_ok(&["snapshots", "--snapshotter", "remote", "ls"]);
    assert_eq!(
        snaps.lines().filter(|l| l.contains("Committed")).count(),
        2,
        "both layers committed:\n{snaps}"
    );

    // A container on the layers reads the right bytes.
    let got = ctrd.run(
        &image,
        Some("remote"),
        &["sh", "-c", "sha256sum /app/big.bin /app/big.link; cat /app/owned; ls /etc/group 2>&1; readlink /app/rel"],
    );
    let want = sha256_digest(&big);
    let want = want.trim_start_matches("sha256:");
    assert_eq!(got.matches(want).count(), 2, "{got}");
    assert!(
        got.contains("owned\n") && got.contains("script.sh"),
        "{got}"
    );
    assert!(
        got.contains("No such file"),
        "etc/group is whited out:\n{got}"
    );

    // containerd's own unpack of the same image, into its overlayfs snapshotter.
    ctrd.pull_plain_http(&image, Some("overlayfs"));
    let ours = layer_dirs(&stack.scratch.path().join("root/snapshots"));
    let theirs = layer_dirs(
        &ctrd
            .root
            .join("io.containerd.snapshotter.v1.overlayfs/snapshots"),
    );
    assert_eq!(ours.len(), 2, "{ours:?}");
    assert_eq!(theirs.len(), 2, "{theirs:?}");
    for (a, b) in ours.iter().zip(&theirs) {
        let (la, lb) = (listing(a, since), listing(b, since));
        assert!(la.len() > 3, "{a:?} holds the layer: {la:?}");
        let diff: Vec<String> = la
            .keys()
            .chain(lb.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .filter(|k| la.get(*k) != lb.get(*k))
            .map(|k| {
                format!(
                    "{k}:\n  ours:       {:?}\n  containerd: {:?}",
                    la.get(k),
                    lb.get(k)
                )
            })
            .collect();
        assert!(diff.is_empty(), "{a:?} vs {b:?}:\n{}", diff.join("\n"));
    }
    // The checks that make the comparison mean something.
    let app = listing(&ours[1], since);
    assert!(
        app["etc/group"].starts_with("mode=20000 "),
        "{}",
        app["etc/group"]
    );
    assert!(
        app["tmp"].contains("trusted.overlay.opaque=y"),
        "{}",
        app["tmp"]
    );
    assert!(
        app["tmp"].starts_with("mode=41777 "),
        "copied up from busybox: {}",
        app["tmp"]
    );
    assert!(
        app["app/null"].starts_with("mode=20666 ") && app["app/null"].contains("rdev=259"),
        "{}",
        app["app/null"]
    );
    assert!(
        app["app/fifo"].starts_with("mode=10644 "),
        "{}",
        app["app/fifo"]
    );
    assert!(
        app["app/owned"].contains("mode=104710 uid=1234 gid=5678"),
        "{}",
        app["app/owned"]
    );
    assert!(
        app["app/attrs"].contains("user.note=kept"),
        "{}",
        app["app/attrs"]
    );
    assert!(
        app["app/big.bin"].contains("nlink=2"),
        "{}",
        app["app/big.bin"]
    );
    drop(registry);
    drop(stack);
}

/// A layer whose image config states another diff ID, then a registry that
/// dies in the middle of the blob: our pull fails, nothing is committed,
/// nothing is left behind, and once the registry is back a pull succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_pull_faults_commit_nothing() {
    if !e2e::require_root_tools(TOOLS) {
        return;
    }
    let scratch = tempfile::Builder::new().prefix("rs-fbf").tempdir().unwrap();
    let dir = scratch.path();
    let registry = Registry::start(dir);
    let proxy = FaultProxy::start(registry.port);
    let mut data = LayerBuilder::new();
    data.file("data.bin", pseudo_random(16 << 20, 91), 0o644);
    let oci = dir.join("oci");
    let img = write_oci_layout(
        &oci,
        "1",
        vec![busybox_layer().tar_gz(), data.tar_gz()],
        &["/bin/sh"],
    );
    // Tag "lie": the same layers, a config whose second diff ID is wrong.
    let layout = OciLayout::open(&oci);
    let mut config = layout.config(Some("1"));
    config["rootfs"]["diff_ids"][1] = sha256_digest(b"not this layer").into();
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let mut manifest = layout.manifest(Some("1"));
    manifest["config"]["digest"] = layout.put_blob(&config_bytes).into();
    manifest["config"]["size"] = config_bytes.len().into();
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let md = layout.put_blob(&manifest_bytes);
    layout.set_tag("lie", &md, manifest_bytes.len() as u64, MT_MANIFEST);
    skopeo_push(&oci, "lie", &format!("{}/faults:lie", registry.host()));
    skopeo_push(&oci, "1", &format!("{}/faults:1", registry.host()));
    // Tag "base": the base layer alone, so an image holds it while the
    // data layer's pull fails (containerd collects unreferenced layers).
    let base = dir.join("oci-base");
    write_oci_layout(&base, "base", vec![busybox_layer().tar_gz()], &["/bin/sh"]);
    skopeo_push(&base, "base", &format!("{}/faults:base", registry.host()));

    let stack = common::Stack::start(
        scratch,
        Some("noprefetch = true\n[blob]\nmax_retries = 1\nfetching_timeout_sec = 3\n[fallback_pull]\nrequest_size_mib = 1\nconcurrency = 2\n"),
    );
    let ctrd = stack.ctrd();
    let root = stack.scratch.path().join("root");
    let api = common::api(stack.daemon.as_ref().unwrap()).await;
    let committed = |api_list: &Vec<snapshotter::Info>| {
        api_list
            .iter()
            .filter(|i| i.kind == snapshotter::Kind::Committed)
            .count()
    };

    // The lie: containerd's own apply refuses it as well, so the pull fails.
    let (ok, out) = stack.pull(&format!("{}/faults:lie", proxy.host()));
    assert!(
        !ok,
        "a layer with a wrong diff ID must not be pulled: {out}"
    );
    let m = stack.metrics();
    assert_eq!(
        common::counter(&m, "fallback_pull_failures"),
        Some(1),
        "{m}"
    );
    let log = stack.log();
    assert!(
        log.contains("the uncompressed tar's digest is") && log.contains(&img.diff_ids[1]),
        "a clear error names the diff ID:\n{log}"
    );
    let list = api.list(&[]).await.unwrap();
    assert_eq!(
        committed(&list),
        1,
        "only the base layer is committed: {list:?}"
    );
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));

    // The base layer, held by an image of its own.
    let (ok, out) = stack.pull(&format!("{}/faults:base", proxy.host()));
    assert!(ok, "{out}");
    // The registry goes silent once the data layer's pull is under way (a
    // few ranged requests answered): our pull of it fails (the base layer
    // is there already, so the data layer is the only one fetched).
    // Looked at the moment it failed, before containerd's own fetch (held
    // as well) gives up.
    proxy.faults().reset_counts();
    let (sock, r) = (
        ctrd.socket.display().to_string(),
        format!("{}/faults:1", proxy.host()),
    );
    let bg = std::thread::spawn(move || {
        rsnap(&["pull", "-a", &sock, "-n", NAMESPACE, "--plain-http", &r])
    });
    let faults = proxy.faults();
    let started = e2e::process::wait_until(std::time::Duration::from_secs(30), || {
        faults.counts().get(e2e::faultproxy::Kind::BlobRange) >= 2
    });
    faults.blackhole(true);
    assert!(started, "the pull never started: {:?}", faults.counts());
    let failed = e2e::process::wait_until(std::time::Duration::from_secs(60), || {
        stack.counter("fallback_pull_failures") == Some(2)
    });
    let log = stack.log();
    assert!(failed, "{}\n{log}", stack.metrics());
    let list = api.list(&[]).await.unwrap();
    assert_eq!(committed(&list), 1, "nothing half-committed: {list:?}");
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
    assert!(
        stack.scratch.path().join("root/snapshots").exists(),
        "the daemon's root is where the test looks"
    );
    // Held connections are closed: containerd's own fetch fails.
    proxy.faults().pass();
    let _ = bg.join();

    // Back: the same pull now works, by our daemon.
    proxy.faults().pass();
    let (ok, out) = stack.pull(&format!("{}/faults:1", proxy.host()));
    assert!(ok, "{out}");
    let list = api.list(&[]).await.unwrap();
    assert_eq!(committed(&list), 2, "{list:?}");
    assert!(leftovers(&root).is_empty(), "{:?}", leftovers(&root));
    drop(stack);
    drop(proxy);
    drop(registry);
}
