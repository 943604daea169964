//! zstd:chunked end to end, both ways with the Go reference (0.12):
//! - an image converted by `ctr-remote image convert --zstdchunked --oci` is
//!   pulled lazily by `rsnap pull` through our daemon and runs;
//! - an image `rsnap convert --compression zstd-chunked --oci` wrote passes
//!   the Go reference's zstd:chunked reader (`zstdverify`, built from
//!   Debian's Go sources by scripts/build-zstdverify.sh), is pulled lazily by
//!   `ctr-remote image rpull` (containerd's unpacker) through our daemon and
//!   runs; converted back to eStargz it holds the same chunks.
//!
//! Real docker-registry, containerd 1.6, runc, FUSE and overlayfs; registry
//! bytes counted by a proxy; no background fetch.

mod common;

use e2e::containerd::{mounts_under, unmount_under, Containerd, NAMESPACE};
use e2e::image::{
    busybox_layer, pseudo_random, rsnap_ok, sha256_digest, write_oci_layout, LayerBuilder,
    OciLayout,
};
use e2e::process::wait_until;
use e2e::registry::{skopeo_push, Registry};
use e2e::tcpproxy::CountingProxy;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
const CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
const POSITION: &str = "io.containers.zstd-chunked.manifest-position";

/// Two layers (busybox + a file; a 9 MiB file, a small one and 6 MB of
/// filler no container reads) as OCI layout `dir:v1`. Returns the files a
/// container checks and the gzip image's size.
fn build_app(dir: &Path) -> (Vec<(&'static str, Vec<u8>)>, u64) {
    let big = pseudo_random(9 << 20, 31);
    let small = b"hello from zstd\n".to_vec();
    let mut l1 = busybox_layer();
    l1.file("etc/base.txt", "base\n", 0o644);
    let mut l2 = LayerBuilder::new();
    l2.dir("data", 0o755)
        .file("data/big.bin", big.clone(), 0o644)
        .file("data/small.txt", small.clone(), 0o644);
    for i in 0..30 {
        l2.file(
            &format!("data/filler/{i}.bin"),
            pseudo_random(200_000, 300 + i),
            0o644,
        );
    }
    let layers = vec![l1.tar_gz(), l2.tar_gz()];
    let size = layers.iter().map(|l| l.len() as u64).sum();
    write_oci_layout(dir, "v1", layers, &["/bin/sh"]);
    let files = vec![
        ("/bin/busybox", std::fs::read("/bin/busybox").unwrap()),
        ("/etc/base.txt", b"base\n".to_vec()),
        ("/data/big.bin", big),
        ("/data/small.txt", small),
    ];
    (files, size)
}

/// Registry, counting proxy, scratch dir; our daemon and a containerd using
/// it. Dropped in order (also on a failed assert): containerd, the daemon
/// with SIGINT (it unmounts its layers), leftover mounts.
struct Env {
    ctrd: Option<Containerd>,
    daemon: Option<common::Daemon>,
    metrics: String,
    proxy: CountingProxy,
    reg: Registry,
    scratch: tempfile::TempDir,
}

impl Drop for Env {
    fn drop(&mut self) {
        drop(self.ctrd.take());
        if let Some(mut d) = self.daemon.take() {
            d.svc.signal(libc::SIGINT);
            wait_until(Duration::from_secs(15), || !d.svc.is_running());
        }
        unmount_under(self.scratch.path());
    }
}

impl Env {
    fn new() -> Env {
        let scratch = tempfile::tempdir().unwrap();
        let reg = Registry::start(scratch.path());
        let proxy = CountingProxy::start(reg.port);
        Env {
            ctrd: None,
            daemon: None,
            metrics: String::new(),
            proxy,
            reg,
            scratch,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    fn start_stack(&mut self) {
        std::fs::write(
            self.path("config.toml"),
            "no_background_fetch = true\n[blob]\nmax_retries = 2\n",
        )
        .unwrap();
        let (daemon, metrics) = common::start_with_metrics(self.scratch.path(), &[]);
        self.ctrd = Some(Containerd::start(self.scratch.path(), Some(&daemon.sock)));
        self.daemon = Some(daemon);
        self.metrics = metrics;
    }

    fn ctrd(&self) -> &Containerd {
        self.ctrd.as_ref().unwrap()
    }

    fn counter(&self, name: &str) -> u64 {
        let text = common::metrics(&self.metrics);
        common::counter(&text, name).unwrap_or_else(|| panic!("no counter {name} in:\n{text}"))
    }

    /// Both layers mounted remotely, nothing fell back, a small part of the
    /// image read; then the container's checksums match, still lazily.
    fn check_lazy_run(&self, reference: &str, files: &[(&str, Vec<u8>)], size: u64, what: &str) {
        assert_eq!(self.counter("remote_mounts"), 2, "{what}: remote mounts");
        for f in [
            "fallback_not_remote",
            "fallback_unavailable",
            "fallback_error",
        ] {
            assert_eq!(self.counter(f), 0, "{what}: {f}");
        }
        let pulled = self.proxy.bytes_down();
        eprintln!("{what}: {pulled} registry bytes to pull a {size} B image");
        assert!(pulled * 10 < size, "{what}: pull read {pulled} of {size}");
        let paths: Vec<&str> = files.iter().map(|f| f.0).collect();
        let script = format!("sha256sum {}", paths.join(" "));
        let out = self
            .ctrd()
            .run(reference, Some("remote"), &["sh", "-c", &script]);
        let want: String = files
            .iter()
            .map(|(p, d)| format!("{}  {p}\n", sha256_digest(d).trim_start_matches("sha256:")))
            .collect();
        assert_eq!(out, want, "{what}: container output");
        let total = self.proxy.bytes_down();
        eprintln!("{what}: {total} registry bytes for pull + run");
        assert!(total < size, "{what}: pull + run read {total} of {size}");
    }

    fn finish(mut self) {
        drop(self.ctrd.take());
        common::stop(self.daemon.take().unwrap(), libc::SIGINT);
        let log = std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default();
        assert!(!log.contains("panicked"), "daemon log:\n{log}");
        let left = mounts_under(self.scratch.path());
        assert!(left.is_empty(), "mounts left behind: {left:?}");
    }
}

fn ctr_remote(ctrd: &Containerd, args: &[&str]) -> String {
    let out = Command::new("ctr-remote")
        .arg("-a")
        .arg(&ctrd.socket)
        .args(["-n", NAMESPACE])
        .args(args)
        .output()
        .expect("run ctr-remote");
    assert!(
        out.status.success(),
        "ctr-remote {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every layer of `tag` in `layout` is zstd:chunked with all three
/// annotations, and the stock `zstd` tool decompresses it to a tar that GNU
/// tar lists, with the config's diff ID and the annotated size.
fn assert_zstd_layers(layout: &OciLayout, tag: &str) -> Value {
    let manifest = layout.manifest(Some(tag));
    let config = layout.config(Some(tag));
    for (i, l) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(l["mediaType"], ZSTD, "{l}");
        for a in [TOC_DIGEST, CHECKSUM, POSITION] {
            assert!(l["annotations"][a].is_string(), "{a} missing: {l}");
        }
        let path = layout.blob_path(l["digest"].as_str().unwrap());
        let out = Command::new("zstd").arg("-dc").arg(&path).output().unwrap();
        assert!(out.status.success(), "zstd -dc layer {i}");
        assert_eq!(config["rootfs"]["diff_ids"][i], sha256_digest(&out.stdout));
        assert_eq!(
            l["annotations"]["io.containers.estargz.uncompressed-size"],
            out.stdout.len().to_string()
        );
        let st = Command::new("sh")
            .arg("-c")
            .arg(format!("zstd -dc {} | tar t >/dev/null", path.display()))
            .status()
            .unwrap();
        assert!(st.success(), "zstd -dc | tar t rejected layer {i}");
    }
    manifest
}

#[test]
fn go_zstd_chunked_image_runs_lazily_on_our_daemon() {
    if !e2e::require_root_tools(&[
        "docker-registry",
        "containerd",
        "ctr",
        "ctr-remote",
        "runc",
        "tar",
    ]) {
        return;
    }
    let mut env = Env::new();
    let src = env.path("src");
    let (files, size) = build_app(&src);
    let pushed = format!("{}/go/zstd:v1", env.reg.host());
    {
        // The reference converts in a containerd of its own and pushes.
        let tarball = env.path("src.tar");
        let st = Command::new("tar")
            .arg("-C")
            .arg(&src)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .unwrap();
        assert!(st.success());
        let ctrd = Containerd::start(env.scratch.path(), None);
        ctrd.ctr_ok(&[
            "images",
            "import",
            "--no-unpack",
            "--base-name",
            "go/src",
            tarball.to_str().unwrap(),
        ]);
        ctr_remote(
            &ctrd,
            &[
                "image",
                "convert",
                "--zstdchunked",
                "--oci",
                "go/src:v1",
                "go/dst:v1",
            ],
        );
        ctrd.ctr_ok(&["images", "push", "--plain-http", &pushed, "go/dst:v1"]);
    }
    env.start_stack();
    let reference = format!("{}/go/zstd:v1", env.proxy.host());
    let out = rsnap_ok(&[
        "pull",
        "-a",
        env.ctrd().socket.to_str().unwrap(),
        "-n",
        NAMESPACE,
        "--plain-http",
        &reference,
    ]);
    assert!(out.contains("2 lazy, 0 fetched"), "not lazy: {out}");
    env.check_lazy_run(&reference, &files, size, "ctr-remote zstd:chunked");
    env.finish();
}

/// The Go reference's zstd:chunked reader, built once from Debian's Go sources.
fn zstdverify() -> Option<PathBuf> {
    const OUT: &str = "/var/tmp/rsnap-bench/zstdverify";
    let built = || {
        let p = PathBuf::from(OUT).join("zstdverify");
        p.is_file().then_some(p)
    };
    built().or_else(|| {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-zstdverify.sh");
        let ok = Command::new(&script)
            .arg(OUT)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            built()
        } else {
            None
        }
    })
}

#[test]
fn our_zstd_chunked_image_passes_go_and_rpulls_lazily() {
    if !e2e::require_root_tools(&[
        "docker-registry",
        "containerd",
        "ctr",
        "ctr-remote",
        "runc",
        "skopeo",
        "go",
        "zstd",
    ]) {
        return;
    }
    let mut env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    let (files, size) = build_app(&src);
    let src_s = format!("oci:{}:v1", src.display());
    let dst_s = format!("oci:{}:v1", dst.display());
    // zstd needs OCI media types, as with the reference.
    let (ok, _, err) =
        e2e::image::rsnap(&["convert", "--compression", "zstd-chunked", &src_s, &dst_s]);
    assert!(!ok && err.contains("--oci"), "{err}");
    let out = rsnap_ok(&[
        "convert",
        "--compression",
        "zstd-chunked",
        "--oci",
        &src_s,
        &dst_s,
    ]);
    assert_eq!(out.matches("converted").count(), 2, "{out}");
    let layout = OciLayout::open(&dst);
    let manifest = assert_zstd_layers(&layout, "v1");

    // The Go reference's reader opens, verifies and reads every layer.
    let verify = zstdverify().expect("zstdverify (scripts/build-zstdverify.sh)");
    for l in manifest["layers"].as_array().unwrap() {
        let digest = l["digest"].as_str().unwrap();
        let toc = l["annotations"][TOC_DIGEST].as_str().unwrap();
        let o = Command::new(&verify)
            .arg(layout.blob_path(digest))
            .arg(toc)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && stdout.starts_with("ok "),
            "zstdverify {digest}: {stdout}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        // So does ours, with the same TOC digest.
        rsnap_ok(&[
            "toc",
            "--quiet",
            "--verify",
            "--toc-digest",
            toc,
            layout.blob_path(digest).to_str().unwrap(),
        ]);
    }

    // Converting again keeps the layers; converting to eStargz gives the
    // same chunks in gzip.
    let again = env.path("again");
    let out = rsnap_ok(&[
        "convert",
        "--compression",
        "zstd-chunked",
        "--oci",
        &dst_s,
        &format!("oci:{}:v1", again.display()),
    ]);
    assert_eq!(out.matches("already zstd:chunked").count(), 2, "{out}");
    let back = env.path("back");
    let out = rsnap_ok(&["convert", &dst_s, &format!("oci:{}:v1", back.display())]);
    assert_eq!(out.matches("converted").count(), 2, "{out}");
    let gz_tocs = e2e::image::check_estargz_layout(&back, Some("v1"));
    let chunks = |t: &Value| -> Vec<String> {
        t["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["chunkDigest"].as_str().map(String::from))
            .collect()
    };
    for (i, l) in manifest["layers"].as_array().unwrap().iter().enumerate() {
        let blob = layout.blob_path(l["digest"].as_str().unwrap());
        let toc = rsnap_ok(&["toc", blob.to_str().unwrap()]);
        let toc: Value = serde_json::from_str(&toc).unwrap();
        assert_eq!(chunks(&toc), chunks(&gz_tocs[i]), "layer {i}");
    }

    // containerd's unpacker with the reference's labels, through our daemon.
    skopeo_push(&dst, "v1", &format!("{}/ours/zstd:v1", env.reg.host()));
    env.start_stack();
    let reference = format!("{}/ours/zstd:v1", env.proxy.host());
    ctr_remote(
        env.ctrd(),
        &[
            "image",
            "rpull",
            "--plain-http",
            "--snapshotter",
            "remote",
            &reference,
        ],
    );
    env.check_lazy_run(&reference, &files, size, "rsnap zstd:chunked via rpull");
    env.finish();
}
