//! Security checks with the real daemon (the socket's 0660 mode is checked
//! in daemon.rs, the client-level redirect and TLS cases in crates/registry):
//! - credentials from a docker config.json reach the registry but never the
//!   daemon's debug log, the snapshot labels, or a host a blob GET was
//!   redirected to;
//! - TLS is verified: with an unrelated CA the daemon does not mount the
//!   layer, with the registry's CA configured (`ca` in the hosts config) it does;
//! - the lazy layer mounts on the host are nosuid,nodev, while inside a
//!   container files keep their owners, modes, setuid bits and device nodes.

mod common;

use e2e::authfront::{Front, FrontOptions};
use e2e::containerd::{Containerd, NAMESPACE};
use e2e::image::{
    busybox_layer, pseudo_random, rsnap_bin, rsnap_ok, sha256_digest, write_oci_layout, Kind,
    LayerBuilder, Meta, OciLayout, TOC_DIGEST,
};
use e2e::registry::{docker_config, htpasswd, skopeo_push, Registry, RegistryOptions};
use snapshotter_testsuite::{labels, Api, Code};
use std::path::Path;

const USER: &str = "alice";
const PASSWORD: &str = "pw-Xyzzy-31415-secret";

/// busybox + a data layer with one multi-chunk file; converted to eStargz
/// into `dir` (tag v1). Returns the file's expected `sha256sum` line.
fn estargz_image(dir: &Path, extra: impl FnOnce(&mut LayerBuilder)) -> String {
    let src = dir.join("src");
    let data = pseudo_random(600_000, 5);
    let mut l = LayerBuilder::new();
    l.dir("data", 0o755).file("data/f.bin", data.clone(), 0o644);
    extra(&mut l);
    write_oci_layout(
        &src,
        "v1",
        vec![busybox_layer().tar_gz(), l.tar_gz()],
        &["/bin/sh"],
    );
    rsnap_ok(&[
        "convert",
        "--chunk-size",
        "131072",
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:v1", dir.join("dst").display()),
    ]);
    format!(
        "{}  /data/f.bin\n",
        sha256_digest(&data).trim_start_matches("sha256:")
    )
}

#[test]
fn credentials_stay_out_of_logs_labels_and_redirected_hosts() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let expected = estargz_image(scratch.path(), |_| {});
    // One storage, two registries: with basic auth, and anonymous (standing
    // in for a blob CDN the authenticated one redirects to).
    let data = scratch.path().join("registry-data");
    let reg = Registry::start_with(
        scratch.path(),
        RegistryOptions {
            htpasswd: Some(htpasswd(scratch.path(), USER, PASSWORD)),
            data_dir: Some(data.clone()),
            ..Default::default()
        },
    );
    let anon = Registry::start_with(
        scratch.path(),
        RegistryOptions {
            data_dir: Some(data),
            ..Default::default()
        },
    );
    skopeo_push(
        &scratch.path().join("dst"),
        "v1",
        &format!("{}/sec/app:v1", anon.host()),
    );
    let cdn = Front::start(anon.port, FrontOptions::default());
    let front = Front::start(
        reg.port,
        FrontOptions {
            redirect_blobs_to: Some(cdn.port),
            ..Default::default()
        },
    );
    let dc = docker_config(scratch.path(), &front.host(), USER, PASSWORD);

    std::fs::write(
        scratch.path().join("config.toml"),
        "noprefetch = true\nno_background_fetch = true\n[blob]\nmax_retries = 1\n",
    )
    .unwrap();
    let daemon = common::start_with_env(scratch.path(), &[], &[("DOCKER_CONFIG", &dc)]);
    let ctrd = Containerd::start(scratch.path(), Some(&daemon.sock));
    let image = format!("{}/sec/app:v1", front.host());
    let out = std::process::Command::new(rsnap_bin())
        .args(["--log-level", "debug", "pull", "-a"])
        .arg(&ctrd.socket)
        .args(["-n", NAMESPACE, &image])
        .env("DOCKER_CONFIG", &dc)
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "rsnap pull: {se}");
    assert!(so.contains("2 lazy"), "not lazy: {so}");
    let run = ctrd.run(&image, Some("remote"), &["sha256sum", "/data/f.bin"]);
    assert_eq!(run, expected);

    // The credentials were used (the registry demands them) ...
    let seen = front.seen();
    assert!(
        seen.iter().any(|s| s
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic "))),
        "no authenticated request: {seen:?}"
    );
    // ... and blob GETs were redirected, but no Authorization followed them.
    let redirected = cdn.seen();
    assert!(
        redirected.iter().any(|s| s.path.contains("/blobs/")),
        "no blob GET reached the redirect target: {redirected:?}"
    );
    assert!(
        redirected.iter().all(|s| s.authorization.is_none()),
        "credentials sent to the redirect target: {redirected:?}"
    );

    // Nowhere in logs or labels, in clear or base64.
    let b64 = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        format!("{USER}:{PASSWORD}"),
    );
    let daemon_log = std::fs::read_to_string(scratch.path().join("daemon.log")).unwrap();
    assert!(
        daemon_log.contains("DEBUG"),
        "the daemon log is not at debug level"
    );
    let containerd_log = std::fs::read_to_string(ctrd.dir.join("containerd.log")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let infos = rt.block_on(async {
        let a = common::api(&daemon).await;
        a.list(&[]).await.unwrap()
    });
    assert!(!infos.is_empty());
    let label_text: String = infos
        .iter()
        .flat_map(|i| i.labels.iter().map(|(k, v)| format!("{k}={v}\n")))
        .collect();
    for (what, text) in [
        ("daemon log", &daemon_log),
        ("rsnap output", &format!("{so}{se}")),
        ("containerd log", &containerd_log),
        ("snapshot labels", &label_text),
    ] {
        for secret in [PASSWORD, b64.as_str()] {
            assert!(!text.contains(secret), "{what} contains the credentials");
        }
    }
    eprintln!(
        "credentials: {} authenticated requests, {} redirected requests without Authorization, \
         {} bytes of debug log and {} labels free of the secret",
        seen.iter().filter(|s| s.authorization.is_some()).count(),
        redirected.len(),
        daemon_log.len(),
        infos.iter().map(|i| i.labels.len()).sum::<usize>()
    );

    drop(ctrd);
    common::stop(daemon, libc::SIGINT);
    assert!(e2e::containerd::mounts_under(scratch.path()).is_empty());
}

/// Prepare a layer of `image` as containerd's unpacker would; `Ok(true)` if
/// the daemon mounted it remotely (AlreadyExists), `Ok(false)` if it fell
/// back to an ordinary snapshot.
async fn prepare_remote(d: &common::Daemon, image: &str, layer: &str, toc: &str) -> bool {
    let a = common::api(d).await;
    let l = labels(&[
        ("containerd.io/snapshot.ref", "sha256:tls-chain"),
        ("containerd.io/snapshot/remote/stargz.reference", image),
        ("containerd.io/snapshot/remote/stargz.digest", layer),
        (TOC_DIGEST, toc),
    ]);
    match a.prepare("tls-key", "", &l).await {
        Err((Code::AlreadyExists, _)) => true,
        Ok(_) => false,
        Err(e) => panic!("prepare: {e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_with_the_configured_ca() {
    if !e2e::require_root_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    estargz_image(scratch.path(), |_| {});
    let ca = e2e::tls::TestCa::create(&scratch.path().join("tls"));
    let other_ca = e2e::tls::TestCa::unrelated_ca(&scratch.path().join("tls"));
    let reg = Registry::start_with(
        scratch.path(),
        RegistryOptions {
            tls: Some((ca.cert.clone(), ca.key.clone())),
            ..Default::default()
        },
    );
    let dst = scratch.path().join("dst");
    skopeo_push(&dst, "v1", &format!("{}/tls/app:v1", reg.host()));
    let m = OciLayout::open(&dst).manifest(Some("v1"));
    let layer = m["layers"][1]["digest"].as_str().unwrap().to_string();
    let toc = m["layers"][1]["annotations"][TOC_DIGEST]
        .as_str()
        .unwrap()
        .to_string();
    let image = format!("{}/tls/app:v1", reg.host());

    // (case, the host's hosts-config lines, mounted remotely?)
    let with_ca = |p: &Path| format!("ca = \"{}\"", p.display());
    for (name, host_cfg, remote) in [
        ("unrelated CA", with_ca(&other_ca), false),
        ("registry CA", with_ca(&ca.ca), true),
        // Explicitly insecure: HTTPS without verification, for this host only.
        ("skip_verify", "skip_verify = true".to_string(), true),
    ] {
        let dir = scratch.path().join(name.replace(' ', "-"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("config.toml"),
            format!(
                "noprefetch = true\nno_background_fetch = true\n[blob]\nmax_retries = 0\n\
                 [resolver.host.\"{}\"]\n{host_cfg}\n",
                reg.host(),
            ),
        )
        .unwrap();
        let d = common::start(&dir, &[]);
        let got = prepare_remote(&d, &image, &layer, &toc).await;
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap();
        eprintln!("tls with {name}: mounted remotely = {got}");
        assert_eq!(got, remote, "{name}:\n{log}");
        if !remote {
            assert!(
                log.to_lowercase().contains("certificate"),
                "the log does not say why: {log}"
            );
        }
        common::stop(d, libc::SIGINT);
        assert!(e2e::containerd::mounts_under(&dir).is_empty());
    }
}

#[test]
fn setuid_and_devices_work_in_containers_but_host_mounts_are_nosuid_nodev() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    estargz_image(scratch.path(), |l| {
        l.entry(
            "bin/su-like",
            Kind::File(b"#!/bin/sh\nid\n".to_vec()),
            Meta::mode(0o4755).owner(0, 0),
        )
        .entry(
            "data/owned",
            Kind::File(b"x".to_vec()),
            Meta::mode(0o2640).owner(1000, 1001),
        )
        .entry("data/null2", Kind::CharDevice(1, 3), Meta::mode(0o666));
    });
    let reg = Registry::start(scratch.path());
    skopeo_push(
        &scratch.path().join("dst"),
        "v1",
        &format!("{}/suid/app:v1", reg.host()),
    );
    let daemon = common::start(scratch.path(), &[]);
    let ctrd = Containerd::start(scratch.path(), Some(&daemon.sock));
    let image = format!("{}/suid/app:v1", reg.host());
    let sock = ctrd.socket.to_str().unwrap().to_string();
    let out = rsnap_ok(&["pull", "-a", &sock, "-n", NAMESPACE, &image]);
    assert!(out.contains("2 lazy"), "not lazy: {out}");

    // Inside: owners, modes with setuid/setgid, the device node usable.
    let run = ctrd.run(
        &image,
        Some("remote"),
        &[
            "sh",
            "-c",
            "stat -c '%a %u %g' /bin/su-like /data/owned; stat -c '%F %t,%T' /data/null2; \
             echo ok > /data/null2 && stat -c '%F' /data/null2",
        ],
    );
    assert_eq!(
        run,
        "4755 0 0\n2640 1000 1001\ncharacter special file 1,3\ncharacter special file\n"
    );

    // Outside: every lazy layer mount of this daemon is nosuid,nodev, so the
    // host cannot use a layer's setuid binary or device node through it.
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let root = scratch.path().join("root");
    let ours: Vec<&str> = mounts
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(1)
                .is_some_and(|p| p.starts_with(root.to_str().unwrap()))
        })
        .filter(|l| l.split(' ').nth(2).is_some_and(|t| t.starts_with("fuse")))
        .collect();
    assert!(!ours.is_empty(), "no FUSE mounts under {}", root.display());
    for l in &ours {
        let opts = l.split(' ').nth(3).unwrap();
        assert!(
            opts.split(',').any(|o| o == "nosuid") && opts.split(',').any(|o| o == "nodev"),
            "mount without nosuid,nodev: {l}"
        );
    }
    // And it is so in practice: the device node of the layer cannot be
    // opened through the host mount (EACCES), although it is there.
    let dev = ours
        .iter()
        .map(|l| Path::new(l.split(' ').nth(1).unwrap()).join("data/null2"))
        .find(|p| p.symlink_metadata().is_ok())
        .expect("the layer with the device node is mounted");
    let err = std::fs::OpenOptions::new()
        .write(true)
        .open(&dev)
        .expect_err("a device node opened through a nodev mount");
    assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
    eprintln!("host mounts: {} FUSE mounts, all nosuid,nodev", ours.len());

    drop(ctrd);
    common::stop(daemon, libc::SIGINT);
    assert!(e2e::containerd::mounts_under(scratch.path()).is_empty());
}
