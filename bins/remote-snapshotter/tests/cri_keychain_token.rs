//! Kubernetes pull secrets for a registry with token auth (docker-registry
//! trusting a token server of the test's): through our CRI image service
//! the `AuthConfig`'s username/password, or its identity (refresh) token,
//! is exchanged by the daemon for registry tokens, and the image's layers
//! mount lazily; straight to containerd the same secret gives a full pull
//! (our daemon never saw it); a wrong secret fails the pull the way the
//! kubelet expects, and no secret reaches the daemon's log or metrics.
//!
//! containerd 1.6's CRI plugin ignores `AuthConfig.registry_token` (it pulls
//! anonymously with it), so that form cannot make a CRI pull succeed here;
//! the keychain's handling of it is unit-tested (`keychain.rs`).
//!
//! Real docker-registry (token auth), containerd 1.6.20 with its CRI
//! plugin, runc, FUSE; registry bytes counted by a proxy in front.

mod common;

use e2e::containerd::{mounts_under, Containerd, CriOptions};
use e2e::cri::{api::AuthConfig, write_pause_image, Cri, PodNetwork};
use e2e::registry::{skopeo_push, Registry, RegistryOptions};
use e2e::tcpproxy::CountingProxy;
use e2e::tokenauth::{Accept, TokenAuth};
use std::time::Duration;

const USER: &str = "kube";
const PASSWORD: &str = "token-Secret-14142-grue";
const IDENTITY: &str = "identity-Token-17320-zorkmid";
const WRONG: &str = "wrong-Token-Secret-22360";
const LAYERS: u64 = 2;

#[test]
fn token_registry_secrets_through_our_image_service_make_pulls_lazy() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let s = scratch.path().to_path_buf();
    let images = [
        ("pw", "token registry, password", 61),
        ("idt", "token registry, identity token", 71),
        ("direct", "token registry, pulled by containerd", 81),
    ];
    let built: Vec<(u64, String)> = images
        .iter()
        .map(|(name, marker, seed)| common::cri_image::build_image(&s.join(name), marker, *seed))
        .collect();
    write_pause_image(&s.join("pause"), "v1");

    // One storage, two registries: anonymous (to push to, and for the
    // sandbox image) and token-protected, behind a byte-counting proxy.
    let tokens = TokenAuth::start(
        &s,
        Accept {
            username: USER.into(),
            password: PASSWORD.into(),
            identity_token: IDENTITY.into(),
        },
    );
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
            data_dir: Some(data),
            ..tokens.registry_options()
        },
    );
    let proxy = CountingProxy::start(private.port);
    for (name, _, _) in &images {
        skopeo_push(
            &s.join(name).join("dst"),
            "v1",
            &format!("{}/priv/{name}:v1", anon.host()),
        );
    }
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
    let fallbacks = || {
        counter("fallback_not_remote") + counter("fallback_unavailable") + counter("fallback_error")
    };
    let ctrd_socket = stack.ctrd.as_ref().unwrap().socket.clone();
    let kubelet = Cri::connect_split(&ctrd_socket, &daemon_sock);
    let plain = Cri::connect(&ctrd_socket);
    let logs = s.join("pod-logs");
    let reference = |name: &str| format!("{}/priv/{name}:v1", proxy.host());
    let password = AuthConfig {
        username: USER.into(),
        password: PASSWORD.into(),
        ..Default::default()
    };
    let identity = AuthConfig {
        identity_token: IDENTITY.into(),
        ..Default::default()
    };
    let run = |pod: &str, image: &str, expected: &str| {
        let p = kubelet.run_pod(pod, PodNetwork::Host, &logs.join(pod));
        let c = p.start_container("app", image, &[]);
        assert_eq!(
            p.wait_exited(&c, Duration::from_secs(60)),
            0,
            "{pod}: exit code"
        );
        assert_eq!(p.log("app"), expected, "{pod}: output");
    };
    kubelet
        .pull(&sandbox_image)
        .expect("PullImage of the sandbox image");

    // Wrong secrets through our image service fail the pull (ErrImagePull)
    // and leave nothing behind in the keychain; the errors carry no secret.
    for wrong in [
        AuthConfig {
            username: USER.into(),
            password: WRONG.into(),
            ..Default::default()
        },
        AuthConfig {
            identity_token: WRONG.into(),
            ..Default::default()
        },
    ] {
        let err = kubelet
            .pull_with_auth(&reference("pw"), Some(wrong))
            .expect_err("PullImage with a wrong secret");
        eprintln!("PullImage with a wrong secret: {err}");
        let m = err.message().to_ascii_lowercase();
        assert!(m.contains("401") || m.contains("unauthorized"), "{err}");
        assert!(!err.message().contains(WRONG), "{err}");
    }

    // Straight to containerd: a full pull, every layer falls back.
    let (mounts0, fallbacks0) = (counter("remote_mounts"), fallbacks());
    proxy.reset();
    plain
        .pull_with_auth(&reference("direct"), Some(password.clone()))
        .expect("PullImage with the secret straight to containerd");
    let fetched = proxy.bytes_down();
    eprintln!(
        "token registry, no keychain: {fetched} registry bytes of {}",
        built[2].0
    );
    assert_eq!(counter("remote_mounts"), mounts0, "nothing mounted lazily");
    assert_eq!(fallbacks() - fallbacks0, LAYERS, "fallbacks");
    assert!(
        fetched * 10 >= built[2].0 * 9,
        "full pull read only {fetched}"
    );
    run("direct", &reference("direct"), &built[2].1);

    // Through our image service: password, then identity token; each
    // image's layers mount lazily with tokens the daemon fetched itself.
    for (i, (name, auth)) in [("pw", password), ("idt", identity)]
        .into_iter()
        .enumerate()
    {
        let (mounts0, fallbacks0) = (counter("remote_mounts"), fallbacks());
        proxy.reset();
        kubelet
            .pull_with_auth(&reference(name), Some(auth))
            .unwrap_or_else(|e| panic!("PullImage {name} through our image service: {e}"));
        let pulled = proxy.bytes_down();
        let size = built[i].0;
        eprintln!("token registry, {name} through our keychain: {pulled} registry bytes of {size}");
        assert_eq!(
            counter("remote_mounts") - mounts0,
            LAYERS,
            "{name}: remote mounts"
        );
        assert_eq!(fallbacks(), fallbacks0, "{name}: fallbacks");
        assert!(
            pulled * 10 < size,
            "{name}: lazy pull read {pulled} of {size}"
        );
        run(name, &reference(name), &built[i].1);
        let after = proxy.bytes_down();
        assert!(after * 3 < size, "{name}: pull+run read {after} of {size}");
    }
    // The daemon, not only containerd, got its tokens with the secrets.
    let seen = tokens.requests();
    assert!(
        seen.iter().any(|r| r.method == "GET"
            && r.basic == Some((USER.to_string(), PASSWORD.to_string()))),
        "the daemon asked for a token with the password"
    );
    assert!(
        seen.iter()
            .any(|r| r.param("client_id") == Some("remote-snapshotter")
                && r.param("refresh_token") == Some(IDENTITY)),
        "the daemon asked for a token with the identity token"
    );

    // No secret in what the daemon wrote or serves.
    let text = common::metrics(&metrics);
    drop(kubelet);
    drop(plain);
    drop(stack.ctrd.take());
    common::stop(stack.daemon.take().unwrap(), libc::SIGINT);
    let log = std::fs::read_to_string(s.join("daemon.log")).unwrap();
    let b64 = |p: &str| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{p}"))
    };
    for secret in [PASSWORD, IDENTITY, WRONG, &b64(PASSWORD), &b64(WRONG)] {
        assert!(!log.contains(secret), "a secret in the daemon log");
        assert!(!text.contains(secret), "a secret in the metrics");
    }
    let left = mounts_under(stack.scratch.path());
    assert!(left.is_empty(), "mounts left behind: {left:?}");
}
