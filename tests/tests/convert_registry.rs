//! `rsnap convert` with registry references (issue #3 item 5): registry to
//! registry, registry to layout, layout to registry, multi-platform indexes,
//! and eStargz passthrough within one registry — against a real
//! docker-registry, checked by skopeo, stock containerd and runc.

use e2e::containerd::Containerd;
use e2e::image::{
    busybox_layer, check_estargz_layout, pseudo_random, rsnap, rsnap_ok, sha256_digest,
    write_oci_layout, LayerBuilder, OciLayout, MT_INDEX,
};
use e2e::registry::{skopeo_push, Registry};
use std::path::Path;
use std::process::Command;

fn skopeo_pull(reference: &str, dir: &Path, tag: &str) {
    let st = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:{tag}", dir.display()))
        .status()
        .unwrap();
    assert!(st.success(), "skopeo copy from {reference}");
}

fn sample(layout: &Path) -> Vec<u8> {
    let big = pseudo_random(6 << 20, 9);
    let mut top = LayerBuilder::new();
    top.dir("data", 0o755)
        .file("data/big.bin", big.clone(), 0o644)
        .file("data/hello.txt", "hello over the registry\n", 0o644);
    write_oci_layout(
        layout,
        "v1",
        vec![busybox_layer().tar_gz(), top.tar_gz()],
        &["/bin/sh"],
    );
    big
}

#[test]
fn registry_to_registry_then_pull_and_run() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    let big = sample(&src);
    let reg = Registry::start(scratch.path());
    let host = reg.host();
    skopeo_push(&src, "v1", &format!("{host}/a:v1"));

    let out = rsnap_ok(&[
        "convert",
        &format!("{host}/a:v1"),
        &format!("{host}/a:v1-esgz"),
    ]);
    assert_eq!(out.matches(" converted").count(), 2, "{out}");

    // What the registry now serves is a valid eStargz image.
    let back = scratch.path().join("back");
    skopeo_pull(&format!("{host}/a:v1-esgz"), &back, "x");
    check_estargz_layout(&back, Some("x"));

    let ctrd = Containerd::start(scratch.path(), None);
    let reference = format!("{host}/a:v1-esgz");
    ctrd.pull_plain_http(&reference, None);
    let out = ctrd.run(
        &reference,
        None,
        &["sh", "-c", "cat /data/hello.txt; sha256sum /data/big.bin"],
    );
    let sum = sha256_digest(&big);
    assert_eq!(
        out,
        format!(
            "hello over the registry\n{}  /data/big.bin\n",
            sum.trim_start_matches("sha256:")
        )
    );
}

#[test]
fn mixed_endpoints_agree_and_passthrough_mounts() {
    if !e2e::require_root_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    sample(&src);
    let reg = Registry::start(scratch.path());
    let host = reg.host();
    skopeo_push(&src, "v1", &format!("{host}/a:v1"));

    // layout -> registry, no tag: the source's tag is kept.
    rsnap_ok(&[
        "convert",
        &format!("oci:{}:v1", src.display()),
        &format!("{host}/b"),
    ]);
    // registry -> layout
    let local = scratch.path().join("local");
    rsnap_ok(&[
        "convert",
        &format!("{host}/a:v1"),
        &format!("oci:{}:esgz", local.display()),
    ]);
    // The conversion is deterministic: both paths give the same manifest.
    let inspect = |r: &str| -> String {
        let out = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{r}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo inspect {r}");
        sha256_digest(&out.stdout)
    };
    let local_digest = OciLayout::open(&local).manifest_desc(Some("esgz"))["digest"].clone();
    assert_eq!(
        inspect(&format!("{host}/b:v1")),
        local_digest.as_str().unwrap()
    );

    // An eStargz image converted again, within the same registry: every
    // layer passes through (pushed with a cross-repository mount request).
    let out = rsnap_ok(&[
        "convert",
        &format!("{host}/b:v1"),
        &format!("{host}/c:again"),
    ]);
    assert_eq!(out.matches("already eStargz").count(), 2, "{out}");
    assert_eq!(
        inspect(&format!("{host}/c:again")),
        local_digest.as_str().unwrap()
    );

    // A missing source fails clearly and pushes nothing.
    let (ok, _, err) = rsnap(&[
        "convert",
        &format!("{host}/nope:v1"),
        &format!("{host}/d:x"),
    ]);
    assert!(!ok);
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn all_platforms_through_the_registry() {
    if !e2e::require_root_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    let mut blobs = Vec::new();
    for arch in ["amd64", "arm64"] {
        let mut l = LayerBuilder::new();
        l.file("arch", format!("{arch}\n"), 0o644);
        blobs.push((
            arch,
            write_oci_layout(&src, arch, vec![l.tar_gz()], &["/x"]),
        ));
    }
    let lay = OciLayout::open(&src);
    let manifests: Vec<_> = blobs
        .iter()
        .map(|(arch, img)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": img.manifest_digest,
                "size": std::fs::metadata(lay.blob_path(&img.manifest_digest)).unwrap().len(),
                "platform": {"os": "linux", "architecture": arch},
            })
        })
        .collect();
    let idx =
        serde_json::json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests});
    let ib = serde_json::to_vec(&idx).unwrap();
    let id = lay.put_blob(&ib);
    lay.set_tag("multi", &id, ib.len() as u64, MT_INDEX);

    let reg = Registry::start(scratch.path());
    let host = reg.host();
    let st = Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:multi", src.display()))
        .arg(format!("docker://{host}/m:multi"))
        .status()
        .unwrap();
    assert!(st.success());

    rsnap_ok(&[
        "convert",
        "--all-platforms",
        &format!("{host}/m:multi"),
        &format!("{host}/m:multi-esgz"),
    ]);
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{host}/m:multi-esgz"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["mediaType"], MT_INDEX);
    let ms = got["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 2);
    // Each platform's image was pushed and is a valid eStargz image.
    for (i, arch) in ["amd64", "arm64"].iter().enumerate() {
        assert_eq!(ms[i]["platform"]["architecture"], *arch);
        let dir = scratch.path().join(format!("back-{arch}"));
        let d = ms[i]["digest"].as_str().unwrap();
        skopeo_pull(&format!("{host}/m@{d}"), &dir, "x");
        check_estargz_layout(&dir, Some("x"));
    }
}

/// `--insecure`: a registry with a self-signed certificate is refused by
/// default (TLS is verified) and converted with the flag, over HTTPS.
#[test]
fn insecure_skips_verification_only_when_asked() {
    if !e2e::require_root_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    sample(&src);
    let ca = e2e::tls::TestCa::create(&scratch.path().join("tls"));
    let reg = Registry::start_with(
        scratch.path(),
        e2e::registry::RegistryOptions {
            tls: Some((ca.cert.clone(), ca.key.clone())),
            ..Default::default()
        },
    );
    let host = reg.host();
    skopeo_push(&src, "v1", &format!("{host}/t:v1"));
    let (s, d) = (format!("{host}/t:v1"), format!("{host}/t:v1-esgz"));

    // Without the flag a loopback registry gets plain HTTP, which a TLS
    // registry refuses; --insecure asks for HTTPS without verification.
    let (ok, _, err) = rsnap(&["convert", &s, &d]);
    assert!(!ok, "plain HTTP to a TLS registry must fail");
    assert!(!err.is_empty());
    let out = rsnap_ok(&["convert", "--insecure", &s, &d]);
    assert_eq!(out.matches(" converted").count(), 2, "{out}");
    let back = scratch.path().join("back");
    skopeo_pull(&d, &back, "x");
    check_estargz_layout(&back, Some("x"));
}

/// Registry to registry behind htpasswd basic auth, with the credentials
/// where users keep them (`$DOCKER_CONFIG/config.json`); without them the
/// error says unauthorized.
#[test]
fn convert_with_basic_auth_from_docker_config() {
    if !e2e::require_root_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    sample(&src);
    let reg = Registry::start_with(
        scratch.path(),
        e2e::registry::RegistryOptions {
            htpasswd: Some(e2e::registry::htpasswd(scratch.path(), "bob", "hunter2")),
            ..Default::default()
        },
    );
    let host = reg.host();
    let st = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .args(["--dest-creds", "bob:hunter2"])
        .arg(format!("oci:{}:v1", src.display()))
        .arg(format!("docker://{host}/private/a:v1"))
        .status()
        .unwrap();
    assert!(st.success(), "skopeo push with credentials");
    let convert = |docker_config: &Path| {
        Command::new(e2e::image::rsnap_bin())
            .env("DOCKER_CONFIG", docker_config)
            .args(["convert", &format!("{host}/private/a:v1")])
            .arg(format!("{host}/private/a:v1-esgz"))
            .output()
            .unwrap()
    };
    let empty = scratch.path().join("no-creds");
    std::fs::create_dir_all(&empty).unwrap();
    let out = convert(&empty);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.to_lowercase().contains("unauthorized"), "{err}");

    let cfg = e2e::registry::docker_config(scratch.path(), &host, "bob", "hunter2");
    let out = convert(&cfg);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("hunter2"), "password in the output: {err}");
    let back = scratch.path().join("back");
    let st = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .args(["--src-creds", "bob:hunter2"])
        .arg(format!("docker://{host}/private/a:v1-esgz"))
        .arg(format!("oci:{}:x", back.display()))
        .status()
        .unwrap();
    assert!(st.success());
    check_estargz_layout(&back, Some("x"));
}
