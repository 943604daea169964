//! Kubernetes pull secrets end to end: `[cri_keychain]` makes the daemon
//! serve CRI's `runtime.v1.ImageService` on its socket (the kubelet's
//! `--image-service-endpoint`) and forward it to containerd's, keeping the
//! `AuthConfig` of each `PullImage` for the daemon's own registry requests.
//!
//! An eStargz image in a registry that wants basic auth (htpasswd): pulled
//! through our image service with the secret, its layers mount lazily (a
//! small fraction of the image crosses the wire) and it runs; another one
//! pulled straight from containerd with the same secret falls back (our
//! daemon never saw the secret) and runs too; a wrong password fails the
//! pull. No password reaches the daemon's log or metrics.
//!
//! Real docker-registry (htpasswd), containerd 1.6.20 with its CRI plugin,
//! runc, FUSE; registry bytes counted by a proxy in front of the registry.

mod common;

use base64::Engine;
use e2e::containerd::{mounts_under, Containerd, CriOptions};
use e2e::cri::{api::AuthConfig, write_pause_image, Cri, PodNetwork};
use e2e::registry::{htpasswd, skopeo_push, Registry, RegistryOptions};
use e2e::tcpproxy::CountingProxy;
use std::time::Duration;

const USER: &str = "kube";
const PASSWORD: &str = "pull-Secret-27182-xyzzy";
const WRONG: &str = "wrong-Secret-16180-plugh";
const LAYERS: u64 = 2;

#[test]
fn pull_secrets_through_our_image_service_make_private_images_lazy() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path().to_path_buf();
    let (app_size, app_expected) =
        common::cri_image::build_image(&s.join("app"), "private and lazy", 41);
    let (direct_size, direct_expected) =
        common::cri_image::build_image(&s.join("direct"), "private, pulled", 51);
    write_pause_image(&s.join("pause"), "v1");

    // One storage, two registries: anonymous (to push to, and for the
    // sandbox image containerd pulls without a secret) and htpasswd.
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
    skopeo_push(
        &s.join("direct/dst"),
        "v1",
        &format!("{}/priv/direct:v1", anon.host()),
    );
    skopeo_push(&s.join("pause"), "v1", &format!("{}/pause:v1", anon.host()));

    // containerd's socket exists only once it runs (after our daemon):
    // the daemon forwards to a link the test points at it then.
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
    let stack = common::Stack {
        ctrd: Some(ctrd),
        daemon: Some(daemon),
        scratch,
        metrics: None,
    };
    let ctrd = stack.ctrd.as_ref().unwrap();
    let counter = |name: &str| common::counter(&common::metrics(&metrics), name).unwrap_or(0);
    let secret = AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    // The kubelet with `--image-service-endpoint` at our socket, and
    // containerd's CRI as it is without us.
    let kubelet = Cri::connect_split(&ctrd.socket, &daemon_sock);
    let plain = Cri::connect(&ctrd.socket);
    let logs = stack.scratch.path().join("pod-logs");

    // The sandbox image through our proxy without a secret: forwarded as is.
    kubelet
        .pull(&sandbox_image)
        .expect("PullImage of the sandbox image through our image service");

    // Straight to containerd with the secret: containerd pulls the image,
    // our daemon cannot read it, so every layer falls back.
    let (mounts0, fallbacks0) = (counter("remote_mounts"), counter("fallback_not_remote"));
    proxy.reset();
    let direct_ref = format!("{}/priv/direct:v1", proxy.host());
    plain
        .pull_with_auth(&direct_ref, Some(secret.clone()))
        .expect("PullImage with the secret straight to containerd");
    let fetched = proxy.bytes_down();
    eprintln!("PullImage without our keychain: {fetched} registry bytes of {direct_size}");
    assert_eq!(counter("remote_mounts"), mounts0, "nothing mounted lazily");
    assert_eq!(
        counter("fallback_not_remote") - fallbacks0,
        LAYERS,
        "fallbacks"
    );
    // The pushed blobs are the eStargz ones, a little smaller than the gzip
    // layers `direct_size` counts: all of them crossed the wire.
    assert!(
        fetched * 10 >= direct_size * 9,
        "full pull read only {fetched}"
    );
    let pod = kubelet.run_pod("direct", PodNetwork::Host, &logs.join("direct"));
    let c = pod.start_container("app", &direct_ref, &[]);
    assert_eq!(pod.wait_exited(&c, Duration::from_secs(60)), 0, "exit code");
    assert_eq!(pod.log("app"), direct_expected, "fallback container output");
    drop(pod);

    // A wrong secret through our image service: the pull fails, as the
    // kubelet expects (ErrImagePull), and the error carries no secret.
    let err = kubelet
        .pull_with_auth(
            &direct_ref,
            Some(AuthConfig {
                auth: base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{WRONG}")),
                ..Default::default()
            }),
        )
        .expect_err("PullImage with a wrong password");
    eprintln!("PullImage with a wrong password: {err}");
    assert!(
        err.message().to_ascii_lowercase().contains("unauthorized"),
        "{err}"
    );
    assert!(!err.message().contains(WRONG), "{err}");

    // Through our image service with the secret: every layer of the
    // private image mounts lazily.
    let (mounts0, fallbacks0) = (counter("remote_mounts"), counter("fallback_not_remote"));
    proxy.reset();
    let app_ref = format!("{}/priv/app:v1", proxy.host());
    kubelet
        .pull_with_auth(&app_ref, Some(secret.clone()))
        .expect("PullImage with the secret through our image service");
    let pulled = proxy.bytes_down();
    eprintln!("PullImage through our keychain: {pulled} registry bytes of {app_size}");
    assert_eq!(
        counter("remote_mounts") - mounts0,
        LAYERS,
        "remote mounts after the pull through our image service"
    );
    assert_eq!(counter("fallback_not_remote"), fallbacks0, "fallbacks");
    assert!(
        pulled * 10 < app_size,
        "lazy pull read {pulled} bytes of a {app_size}-byte image"
    );
    // The image service answers for containerd's images, ours included.
    assert!(kubelet.image_status(&app_ref).is_some(), "ImageStatus");
    assert!(
        kubelet
            .list_images()
            .iter()
            .any(|i| i.repo_tags.contains(&direct_ref)),
        "ListImages through our image service"
    );

    // It runs, reading its files through the daemon with the secret.
    let pod = kubelet.run_pod("app", PodNetwork::Host, &logs.join("app"));
    let c = pod.start_container("app", &app_ref, &[]);
    assert_eq!(pod.wait_exited(&c, Duration::from_secs(60)), 0, "exit code");
    assert_eq!(pod.log("app"), app_expected, "lazy container output");
    drop(pod);
    let after_run = proxy.bytes_down();
    eprintln!("pull + run through our keychain: {after_run} registry bytes");
    assert!(
        after_run * 3 < app_size,
        "pull+run read {after_run} of {app_size} bytes"
    );

    // No secret in what the daemon wrote or serves.
    let text = common::metrics(&metrics);
    let b64 = |p: &str| base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{p}"));
    drop(kubelet);
    drop(plain);
    let mut stack = stack;
    drop(stack.ctrd.take());
    common::stop(stack.daemon.take().unwrap(), libc::SIGINT);
    let log = std::fs::read_to_string(stack.scratch.path().join("daemon.log")).unwrap();
    assert!(
        log.contains("serving the CRI image service"),
        "the daemon served the image service"
    );
    for secret in [PASSWORD, WRONG, &b64(PASSWORD), &b64(WRONG)] {
        assert!(!log.contains(secret), "a secret in the daemon log");
        assert!(!text.contains(secret), "a secret in the metrics");
    }
    let left = mounts_under(stack.scratch.path());
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}
