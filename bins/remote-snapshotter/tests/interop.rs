//! Interoperability with the Go reference (containerd/stargz-snapshotter
//! 0.12, Debian's `ctr-remote`), both ways, and two containers at once:
//! - an image converted by `ctr-remote image convert --estargz` is pulled
//!   lazily by `rsnap pull` and runs on our daemon;
//! - `ctr-remote image rpull --snapshotter remote` (containerd's own unpacker
//!   with the reference's `stargz.*` labels) pulls an `rsnap convert` image
//!   lazily through our daemon;
//! - two containers of one lazily pulled image read the same cold chunks at
//!   the same moment.
//!
//! Real docker-registry, containerd 1.6, runc, FUSE and overlayfs; start
//! order registry, daemon, containerd. Bytes from the registry are counted
//! by a proxy in front of it; no background fetch, so what is counted is what
//! the pull and the containers needed.

mod common;

use e2e::containerd::{mounts_under, unique_id, unmount_under, Containerd, NAMESPACE};
use e2e::image::LayerBuilder;
use e2e::image::{busybox_layer, pseudo_random, rsnap_ok, sha256_digest, write_oci_layout};
use e2e::process::wait_until;
use e2e::registry::{skopeo_push, Registry};
use e2e::tcpproxy::CountingProxy;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LAYERS: u64 = 3;

/// The test image: what it holds and the plain (gzip) size of its layers.
struct App {
    /// Files a container checksums, from all three layers.
    files: Vec<(&'static str, Vec<u8>)>,
    plain_size: u64,
}

/// Three layers, written as the OCI layout `dir` (tag v1):
/// 1. busybox + /etc/base.txt + /etc/motd;
/// 2. /data/big.bin (several 4 MiB chunks), a small file, and 8 MB of
///    filler files no container reads (they must stay in the registry);
/// 3. /data/mid.bin, a new /etc/base.txt over layer 1's, a whiteout of /etc/motd.
fn build_app(dir: &Path) -> App {
    let base_old = b"base from layer one\n".to_vec();
    let base_new = b"base replaced by layer three\n".to_vec();
    let big = pseudo_random(9 << 20, 21);
    let small = b"hello from layer two\n".to_vec();
    let mid = pseudo_random((1 << 20) + 4321, 22);

    let mut l1 = busybox_layer();
    l1.file("etc/base.txt", base_old, 0o644)
        .file("etc/motd", "motd\n", 0o644);
    let mut l2 = LayerBuilder::new();
    l2.dir("data", 0o755)
        .file("data/big.bin", big.clone(), 0o644)
        .file("data/small.txt", small.clone(), 0o644);
    for i in 0..40 {
        l2.file(
            &format!("data/filler/{i}.bin"),
            pseudo_random(200_000, 200 + i),
            0o644,
        );
    }
    let mut l3 = LayerBuilder::new();
    l3.dir("data", 0o755)
        .file("data/mid.bin", mid.clone(), 0o600)
        .file("etc/base.txt", base_new.clone(), 0o644)
        .whiteout("etc/motd");
    let layers = vec![l1.tar_gz(), l2.tar_gz(), l3.tar_gz()];
    let plain_size = layers.iter().map(|l| l.len() as u64).sum();
    write_oci_layout(dir, "v1", layers, &["/bin/sh"]);
    App {
        files: vec![
            ("/bin/busybox", std::fs::read("/bin/busybox").unwrap()),
            ("/etc/base.txt", base_new),
            ("/data/big.bin", big),
            ("/data/small.txt", small),
            ("/data/mid.bin", mid),
        ],
        plain_size,
    }
}

impl App {
    fn script(&self) -> String {
        let paths: Vec<&str> = self.files.iter().map(|f| f.0).collect();
        format!(
            "sha256sum {}; test -e /etc/motd || echo motd-gone",
            paths.join(" ")
        )
    }

    fn expected(&self) -> String {
        let mut out = String::new();
        for (p, data) in &self.files {
            let hex = sha256_digest(data);
            out.push_str(&format!("{}  {p}\n", hex.trim_start_matches("sha256:")));
        }
        out.push_str("motd-gone\n");
        out
    }
}

/// Scratch dir, registry and counting proxy; [`Env::start_stack`] adds our
/// daemon and a containerd using it. Dropping it (also on a failed assert)
/// stops containerd, then the daemon with SIGINT (which unmounts its
/// layers), then detaches whatever is still mounted under the scratch dir.
struct Env {
    stack: Option<Stack>,
    proxy: CountingProxy,
    reg: Registry,
    scratch: tempfile::TempDir,
}

struct Stack {
    ctrd: Option<Containerd>,
    daemon: Option<common::Daemon>,
    metrics: String,
}

impl Drop for Stack {
    fn drop(&mut self) {
        drop(self.ctrd.take());
        if let Some(mut d) = self.daemon.take() {
            d.svc.signal(libc::SIGINT);
            wait_until(Duration::from_secs(15), || !d.svc.is_running());
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        drop(self.stack.take());
        unmount_under(self.scratch.path());
    }
}

impl Env {
    fn new() -> Env {
        let scratch = tempfile::tempdir().unwrap();
        let reg = Registry::start(scratch.path());
        let proxy = CountingProxy::start(reg.port);
        Env {
            stack: None,
            proxy,
            reg,
            scratch,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.scratch.path().join(name)
    }

    /// Our daemon (no background fetch, metrics on) and a containerd with it
    /// as the proxy snapshotter `remote`.
    fn start_stack(&mut self) {
        std::fs::write(
            self.path("config.toml"),
            "no_background_fetch = true\n[blob]\nmax_retries = 2\n",
        )
        .unwrap();
        let (daemon, metrics) = common::start_with_metrics(self.scratch.path(), &[]);
        let ctrd = Containerd::start(self.scratch.path(), Some(&daemon.sock));
        self.stack = Some(Stack {
            ctrd: Some(ctrd),
            daemon: Some(daemon),
            metrics,
        });
    }

    fn ctrd(&self) -> &Containerd {
        self.stack.as_ref().unwrap().ctrd.as_ref().unwrap()
    }

    fn counter(&self, name: &str) -> u64 {
        let text = common::metrics(&self.stack.as_ref().unwrap().metrics);
        common::counter(&text, name).unwrap_or_else(|| panic!("no counter {name} in:\n{text}"))
    }

    /// A reference to `repo` through the counting proxy.
    fn proxied(&self, repo: &str) -> String {
        format!("{}/{repo}", self.proxy.host())
    }

    /// The daemon mounted every layer remotely, nothing fell back, and only
    /// a small fraction of the image came from the registry.
    fn assert_lazy(&self, app: &App, what: &str) {
        assert_eq!(
            self.counter("remote_mounts"),
            LAYERS,
            "{what}: remote mounts"
        );
        for f in [
            "fallback_not_remote",
            "fallback_unavailable",
            "fallback_error",
        ] {
            assert_eq!(self.counter(f), 0, "{what}: {f}");
        }
        let fuse = fuse_mounts_under(&self.path("root"));
        assert_eq!(fuse.len() as u64, LAYERS, "{what}: FUSE mounts {fuse:?}");
        let pulled = self.proxy.bytes_down();
        eprintln!(
            "{what}: {pulled} registry bytes for a {} B image",
            app.plain_size
        );
        assert!(
            pulled * 10 < app.plain_size,
            "{what}: read {pulled} bytes of a {}-byte image",
            app.plain_size
        );
    }

    /// Run the checksum script in a container on the remote snapshotter,
    /// check its output and that it did not read the whole image.
    fn run_and_check(&self, reference: &str, app: &App) {
        let out = self
            .ctrd()
            .run(reference, Some("remote"), &["sh", "-c", &app.script()]);
        assert_eq!(out, app.expected(), "container output");
        let total = self.proxy.bytes_down();
        eprintln!("pull+run: {total} registry bytes");
        assert!(
            total < app.plain_size,
            "pull+run read {total} of {} bytes",
            app.plain_size
        );
    }

    /// containerd gone, the daemon stopped by SIGINT exits within its
    /// deadline, removes its socket, logs no panic, and nothing stays mounted.
    fn finish(mut self) {
        let mut stack = self.stack.take().unwrap();
        drop(stack.ctrd.take());
        let daemon = stack.daemon.take().unwrap();
        common::stop(daemon, libc::SIGINT);
        let log = std::fs::read_to_string(self.path("daemon.log")).unwrap_or_default();
        assert!(!log.contains("panicked"), "daemon log:\n{log}");
        let left = mounts_under(self.scratch.path());
        assert!(left.is_empty(), "mounts left behind: {left:?}");
    }
}

/// FUSE mount points at or below `dir` (fs type from /proc/self/mountinfo).
fn fuse_mounts_under(dir: &Path) -> Vec<String> {
    use std::os::unix::ffi::OsStrExt;
    mountinfo::read_self()
        .expect("read /proc/self/mountinfo")
        .into_iter()
        .filter(|m| m.fs_type.as_bytes().starts_with(b"fuse") && m.mount_point.starts_with(dir))
        .map(|m| m.mount_point.display().to_string())
        .collect()
}

fn rsnap_convert(src: &Path, dst: &Path) {
    rsnap_ok(&[
        "convert",
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:v1", dst.display()),
    ]);
}

fn rsnap_pull(ctrd: &Containerd, reference: &str) -> String {
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

/// `ctr-remote -a SOCK -n NS ARGS...`, panicking with its stderr on failure.
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
        "ctr-remote {args:?} failed:\n{}\ncontainerd log tail:\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctrd.log_tail()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Convert the OCI layout `src` with the Go reference in a containerd of its
/// own (no remote snapshotter, so nothing of it is left for the pull) and
/// push the result to `dest` with ctr.
fn go_convert_and_push(scratch: &Path, src: &Path, dest: &str) {
    let tarball = scratch.join("src.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(src)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar of the source layout");
    let ctrd = Containerd::start(scratch, None);
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
            "--estargz",
            "--oci",
            "go/src:v1",
            "go/dst:v1",
        ],
    );
    ctrd.ctr_ok(&["images", "push", "--plain-http", dest, "go/dst:v1"]);
}

#[test]
fn image_converted_by_go_ctr_remote_runs_on_our_daemon() {
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
    let app = build_app(&src);
    let pushed = format!("{}/go/app:v1", env.reg.host());
    go_convert_and_push(env.scratch.path(), &src, &pushed);

    env.start_stack();
    let reference = env.proxied("go/app:v1");
    let out = rsnap_pull(env.ctrd(), &reference);
    assert!(out.contains("3 lazy, 0 fetched"), "not lazy: {out}");
    env.assert_lazy(&app, "rsnap pull of a ctr-remote image");
    env.run_and_check(&reference, &app);
    env.finish();
}

#[test]
fn go_ctr_remote_rpull_pulls_lazily_through_our_daemon() {
    if !e2e::require_root_tools(&[
        "docker-registry",
        "containerd",
        "ctr",
        "ctr-remote",
        "runc",
        "skopeo",
    ]) {
        return;
    }
    let mut env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    let app = build_app(&src);
    rsnap_convert(&src, &dst);
    skopeo_push(&dst, "v1", &format!("{}/ours/app:v1", env.reg.host()));

    env.start_stack();
    let reference = env.proxied("ours/app:v1");
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
    env.assert_lazy(&app, "ctr-remote rpull");
    // containerd's unpacker skipped the layers: none is in its content store.
    let manifest = e2e::image::OciLayout::open(&dst).manifest(Some("v1"));
    for layer in manifest["layers"].as_array().unwrap() {
        let digest = layer["digest"].as_str().unwrap();
        let got = env.ctrd().ctr(&["content", "get", digest]);
        assert!(!got.status.success(), "layer {digest} was downloaded");
    }
    env.run_and_check(&reference, &app);
    env.finish();
}

#[test]
fn two_containers_of_one_lazy_image_at_once() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let mut env = Env::new();
    let (src, dst) = (env.path("src"), env.path("dst"));
    let app = build_app(&src);
    rsnap_convert(&src, &dst);
    skopeo_push(&dst, "v1", &format!("{}/two/app:v1", env.reg.host()));
    env.start_stack();
    let reference = env.proxied("two/app:v1");
    let out = rsnap_pull(env.ctrd(), &reference);
    assert!(out.contains("3 lazy, 0 fetched"), "not lazy: {out}");
    env.assert_lazy(&app, "rsnap pull");

    // Each container announces itself in a shared directory and waits for
    // the other before reading, so both read the same cold chunks together.
    let sync = env.path("sync");
    std::fs::create_dir(&sync).unwrap();
    let mount = format!(
        "type=bind,src={},dst=/sync,options=rbind:rw",
        sync.display()
    );
    let script = |me: &str, other: &str| {
        format!(
            "touch /sync/{me}; i=0; while [ ! -e /sync/{other} ] && [ $i -lt 400 ]; do \
             sleep 0.05; i=$((i+1)); done; test -e /sync/{other} || echo alone; {}",
            app.script()
        )
    };
    let ctrd = env.ctrd();
    let outputs: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = [("a", "b"), ("b", "a")]
            .into_iter()
            .map(|(me, other)| {
                let cmd = script(me, other);
                let mount = mount.clone();
                let reference = reference.clone();
                s.spawn(move || {
                    let id = unique_id(me);
                    ctrd.ctr_ok(&[
                        "run",
                        "--rm",
                        "--snapshotter=remote",
                        "--mount",
                        &mount,
                        &reference,
                        &id,
                        "sh",
                        "-c",
                        &cmd,
                    ])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(out, &app.expected(), "container {i} output");
    }
    // Both read the same ~12 MB of incompressible data: fetched once (the
    // fetcher shares in-flight chunks), plus at most the 8 MiB blob
    // readahead window into the filler; twice would be over 24 MB.
    let read: u64 = app.files.iter().map(|f| f.1.len() as u64).sum();
    let total = env.proxy.bytes_down();
    eprintln!("two containers: {total} registry bytes, {read} bytes read by each");
    assert!(
        total < read + (9 << 20),
        "two containers fetched {total} bytes to read {read} each"
    );
    // The containers' overlay mounts are gone; only the layers stay mounted.
    let ctrd = env.ctrd();
    assert!(ctrd.ctr_ok(&["tasks", "ls", "-q"]).trim().is_empty());
    let mut left = mounts_under(&ctrd.root);
    left.extend(mounts_under(&ctrd.state));
    assert!(left.is_empty(), "container mounts left: {left:?}");
    assert_eq!(fuse_mounts_under(&env.path("root")).len() as u64, LAYERS);
    env.finish();
}
