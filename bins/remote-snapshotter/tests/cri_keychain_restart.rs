//! Kubernetes pull secrets survive a daemon restart: what `[cri_keychain]`
//! learnt from a `PullImage` is kept in `ROOT/cri-keychain/credentials.json`
//! (0600 in a 0700 directory), so after a SIGTERM or a SIGKILL the daemon
//! mounts the private image's layers again at start with the stored secret,
//! and a new container of that image reads files nobody read before,
//! lazily from the htpasswd-protected registry, without a new pull.
//!
//! Real docker-registry (htpasswd), containerd 1.6.20 with its CRI plugin,
//! runc, FUSE; registry bytes counted by a proxy in front of the registry.

mod common;

use e2e::containerd::{mounts_under, Containerd, CriOptions};
use e2e::cri::{api::AuthConfig, write_pause_image, Cri, PodNetwork};
use e2e::image::{
    busybox_layer, pseudo_random, rsnap_ok, sha256_digest, write_oci_layout, LayerBuilder,
};
use e2e::registry::{htpasswd, skopeo_push, Registry, RegistryOptions};
use e2e::tcpproxy::CountingProxy;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

const USER: &str = "kube";
const PASSWORD: &str = "restart-Secret-31415-frobozz";
const LAYERS: u64 = 2;
/// Incompressible files of this size: reading one moves at least this many
/// bytes from the registry.
const FILE_SIZE: usize = 300_000;
const FILES: [&str; 3] = ["before.bin", "after-term.bin", "after-kill.bin"];

/// A two-layer eStargz image in OCI layout `dir/dst` (tag v1): busybox and
/// 8 MB of data with [`FILES`] in `/data`. Returns the gzip image's size and
/// each file's `sha256sum` line.
fn build_image(dir: &Path) -> (u64, Vec<String>) {
    let src = dir.join("src");
    let mut data = LayerBuilder::new();
    data.dir("data", 0o755)
        .file("data/big.bin", pseudo_random(8 << 20, 70), 0o644);
    let mut sums = Vec::new();
    for (i, f) in FILES.iter().enumerate() {
        let bytes = pseudo_random(FILE_SIZE, 71 + i as u64);
        sums.push(format!(
            "{}  /data/{f}\n",
            sha256_digest(&bytes).trim_start_matches("sha256:")
        ));
        data.file(&format!("data/{f}"), bytes, 0o644);
    }
    let layers = vec![busybox_layer().tar_gz(), data.tar_gz()];
    let size = layers.iter().map(|l| l.len() as u64).sum();
    write_oci_layout(&src, "v1", layers, &["/bin/true"]);
    rsnap_ok(&[
        "convert",
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:v1", dir.join("dst").display()),
    ]);
    (size, sums)
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn pull_secrets_survive_sigterm_and_sigkill_restarts() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path().to_path_buf();
    let (app_size, sums) = build_image(&s.join("app"));
    write_pause_image(&s.join("pause"), "v1");

    // One storage, two registries: anonymous (to push to, and for the
    // sandbox image) and htpasswd, behind a byte-counting proxy.
    let data = s.join("registry-data");
    let anon = Registry::start_with(
        &s,
        RegistryOptions {
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    );
    let private = Registry::start_with(
        &s,
        RegistryOptions {
            htpasswd: Some(htpasswd(&s, USER, PASSWORD)),
            data_dir: Some(data),
            ..Default::default()
        },
    );
    let proxy = CountingProxy::start(private.port);
    skopeo_push(
        &s.join("app/dst"),
        "v1",
        &format!("{}/priv/app:v1", anon.host()),
    );
    skopeo_push(&s.join("pause"), "v1", &format!("{}/pause:v1", anon.host()));

    let upstream = s.join("ctrd.sock");
    std::fs::write(
        s.join("config.toml"),
        format!(
            "noprefetch = true\nno_background_fetch = true\n[blob]\nmax_retries = 1\n\
             [cri_keychain]\nenable_keychain = true\nimage_service_path = \"{}\"\n",
            upstream.display()
        ),
    )
    .unwrap();
    let (daemon, metrics) = common::start_with_metrics(&s, &[]);
    let sandbox_image = format!("{}/pause:v1", anon.host());
    let ctrd = Containerd::start_cri(
        &s,
        &daemon.sock,
        &CriOptions {
            sandbox_image: sandbox_image.clone(),
            plain_http: vec![anon.host(), proxy.host()],
            cni: false,
        },
    );
    std::os::unix::fs::symlink(&ctrd.socket, &upstream).unwrap();
    let daemon_sock = daemon.sock.clone();
    let mut stack = common::Stack {
        ctrd: Some(ctrd),
        daemon: Some(daemon),
        scratch,
        metrics: None,
    };
    let counter = |name: &str| common::counter(&common::metrics(&metrics), name).unwrap_or(0);
    let kubelet = Cri::connect_split(&stack.ctrd.as_ref().unwrap().socket, &daemon_sock);
    let logs = s.join("pod-logs");
    let app_ref = format!("{}/priv/app:v1", proxy.host());
    let sha = |f: &str| format!("sha256sum /data/{f}");

    kubelet
        .pull(&sandbox_image)
        .expect("PullImage of the sandbox image");
    proxy.reset();
    kubelet
        .pull_with_auth(
            &app_ref,
            Some(AuthConfig {
                username: USER.into(),
                password: PASSWORD.into(),
                ..Default::default()
            }),
        )
        .expect("PullImage with the secret through our image service");
    assert_eq!(counter("remote_mounts"), LAYERS, "lazy pull");
    let pulled = proxy.bytes_down();
    assert!(pulled * 10 < app_size, "pull read {pulled} of {app_size}");

    // The secret is on disk, for root only.
    let dir = s.join("root/cri-keychain");
    let file = dir.join("credentials.json");
    assert_eq!(mode(&dir), 0o700, "keychain directory mode");
    assert_eq!(mode(&file), 0o600, "keychain file mode");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(
        stored.contains(USER) && stored.contains("priv/app"),
        "{file:?} holds the pull's entry"
    );

    // A container before any restart reads one file.
    let run = |pod: &str, file: &str, expected: &str| {
        // containerd's client of a restarted daemon may still be backing
        // off ("connection refused") for a few seconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let p = loop {
            match kubelet.try_run_pod(pod, PodNetwork::Host, &logs.join(pod)) {
                Ok(p) => break p,
                Err(e)
                    if e.code() == e2e::cri::Code::Unavailable
                        && std::time::Instant::now() < deadline =>
                {
                    eprintln!("RunPodSandbox {pod}: {}; again", e.message());
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => panic!("RunPodSandbox {pod}: {e}"),
            }
        };
        let c = p.start_container("app", &app_ref, &["/bin/sh", "-c", &sha(file)]);
        assert_eq!(
            p.wait_exited(&c, Duration::from_secs(60)),
            0,
            "{pod}: exit code"
        );
        assert_eq!(p.log("app"), expected, "{pod}: output");
    };
    run("before", FILES[0], &sums[0]);

    let mut served = String::new();
    for (i, sig) in [(1, libc::SIGTERM), (2, libc::SIGKILL)] {
        // Restart the daemon; containerd stays up.
        served.push_str(&common::metrics(&metrics));
        let mut d = stack.daemon.take().unwrap();
        // (With containerd connected, a SIGTERM may leave the socket file
        // behind: in-flight streams get 10 s; the next start replaces it.)
        d.svc.signal(sig);
        assert!(
            e2e::process::wait_until(Duration::from_secs(20), || !d.svc.is_running()),
            "daemon did not exit on signal {sig}"
        );
        stack.daemon = Some(common::start(&s, &["--metrics-address", &metrics]));
        // Every layer of the private image was mounted again at start,
        // which needs the registry, so the stored secret.
        assert_eq!(
            (counter("restores"), counter("restore_failures")),
            (LAYERS, 0),
            "after signal {sig}: layers restored with the stored secret"
        );
        // containerd's connection to the restarted daemon is back.
        let out = common::ctr_when_reconnected(
            stack.ctrd.as_ref().unwrap(),
            &["snapshots", "--snapshotter", "remote", "ls"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // A new container reads a file nobody read: lazily, from the
        // registry, with the stored secret (no pull in between).
        proxy.reset();
        run(&format!("after-{i}"), FILES[i], &sums[i]);
        let read = proxy.bytes_down();
        eprintln!("after signal {sig}: {read} registry bytes for a {FILE_SIZE}-byte file");
        assert!(read >= FILE_SIZE as u64, "the file came from the registry");
        assert!(read * 3 < app_size, "lazily: {read} of {app_size}");
        assert_eq!(counter("fallback_unavailable"), 0);
    }

    // No secret in what the daemon wrote or served.
    let text = common::metrics(&metrics) + &served;
    drop(kubelet);
    drop(stack.ctrd.take());
    common::stop(stack.daemon.take().unwrap(), libc::SIGINT);
    let log = std::fs::read_to_string(s.join("daemon.log")).unwrap();
    assert!(
        log.contains("CRI keychain loaded"),
        "the daemon loaded the file"
    );
    let b64 = base64_basic(USER, PASSWORD);
    for secret in [PASSWORD, b64.as_str()] {
        assert!(!log.contains(secret), "a secret in the daemon log");
        assert!(!text.contains(secret), "a secret in the metrics");
    }
    let left = mounts_under(stack.scratch.path());
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}
