//! `rsnap convert` against real components: what it writes is accepted by
//! gzip/tar, skopeo, docker-registry, stock containerd (overlayfs) and runc;
//! what the Go reference (`ctr-remote image convert --estargz`) writes is
//! read by `rsnap toc --verify` and passed through unchanged by
//! `rsnap convert`.

use e2e::containerd::Containerd;
use e2e::image::{
    busybox_layer, gunzip, pseudo_random, rsnap, rsnap_ok, sha256_digest, write_oci_layout, Kind,
    LayerBuilder, Meta, OciLayout,
};
use e2e::registry::{skopeo_push, Registry};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

use e2e::image::{check_estargz_layout, TOC_DIGEST, UNCOMPRESSED};

/// Two layers: busybox plus a few files, then a layer with a multi-chunk
/// file, links, owners, an xattr, a whiteout and an opaque directory.
/// Returns the big file's contents.
fn sample_image(layout: &Path) -> Vec<u8> {
    let mut base = busybox_layer();
    base.file("etc/motd", "base motd\n", 0o644)
        .dir("opq", 0o755)
        .file("opq/old", "old\n", 0o644);
    let big = pseudo_random(9 << 20 | 12345, 42);
    let mut top = LayerBuilder::new();
    top.dir("data", 0o755)
        .file("data/big.bin", big.clone(), 0o644)
        .file("data/hello.txt", "hello from layer 2\n", 0o644)
        .hardlink("data/hello-link", "data/hello.txt")
        .symlink("data/sym", "hello.txt")
        .file("data/empty", Vec::new(), 0o644)
        .entry(
            "data/secret",
            Kind::File(b"s3cret\n".to_vec()),
            Meta::mode(0o600).owner(1000, 1001).xattr("user.test", b"v"),
        )
        .whiteout("etc/motd")
        .opaque("opq")
        .file("opq/new", "new\n", 0o644);
    write_oci_layout(
        layout,
        "v1",
        vec![base.tar_gz(), top.tar_gz()],
        &["/bin/sh"],
    );
    big
}

fn hex_of(d: &str) -> &str {
    d.trim_start_matches("sha256:")
}

fn toc_names(toc: &Value, kind: &str) -> Vec<String> {
    toc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn converted_image_runs_on_stock_containerd() {
    if !e2e::require_root_tools(&[
        "docker-registry",
        "containerd",
        "ctr",
        "runc",
        "skopeo",
        "gunzip",
        "tar",
    ]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    let dst = scratch.path().join("dst");
    let big = sample_image(&src);
    let src_s = format!("oci:{}:v1", src.display());
    let dst_s = format!("oci:{}:v1-esgz", dst.display());
    let out = rsnap_ok(&["convert", "--chunk-size", "1048576", &src_s, &dst_s]);
    assert!(out.contains("converted"), "{out}");

    let tocs = check_estargz_layout(&dst, Some("v1-esgz"));
    assert_eq!(tocs.len(), 2);
    let chunks: Vec<String> = toc_names(&tocs[1], "chunk");
    assert_eq!(
        chunks.iter().filter(|n| *n == "data/big.bin").count(),
        9,
        "1 MiB chunks of a 9 MiB+ file"
    );
    assert!(toc_names(&tocs[1], "hardlink").contains(&"data/hello-link".to_string()));
    assert!(toc_names(&tocs[1], "reg").contains(&"etc/.wh.motd".to_string()));
    // The config other than diff IDs is kept.
    let lay = OciLayout::open(&dst);
    assert_eq!(lay.config(Some("v1-esgz"))["config"]["Cmd"][0], "/bin/sh");

    let reg = Registry::start(scratch.path());
    let reference = format!("{}/convert/sample:v1-esgz", reg.host());
    skopeo_push(&dst, "v1-esgz", &reference);
    let ctrd = Containerd::start(scratch.path(), None);
    ctrd.pull_plain_http(&reference, None);
    let script = "sha256sum /data/big.bin; cat /data/hello-link; readlink /data/sym; \
                  test -e /etc/motd || echo motd-gone; stat -c '%a %u %g' /data/secret; \
                  cat /data/secret; ls /opq; wc -c </data/empty";
    let out = ctrd.run(&reference, None, &["sh", "-c", script]);
    let want = format!(
        "{}  /data/big.bin\nhello from layer 2\nhello.txt\nmotd-gone\n600 1000 1001\ns3cret\nnew\n0\n",
        hex_of(&sha256_digest(&big))
    );
    assert_eq!(out, want);
}

/// ctr-remote runs against a containerd: import our layout, convert it
/// there, export the result as an OCI layout.
fn go_convert(ctrd: &Containerd, scratch: &Path, src: &Path, out_dir: &Path) {
    let tarball = scratch.join("src.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(src)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    ctrd.ctr_ok(&[
        "images",
        "import",
        "--no-unpack",
        "--base-name",
        "go/src",
        tarball.to_str().unwrap(),
    ]);
    let out = Command::new("ctr-remote")
        .arg("-a")
        .arg(&ctrd.socket)
        .args([
            "-n",
            e2e::containerd::NAMESPACE,
            "image",
            "convert",
            "--estargz",
            "--oci",
        ])
        .args(["--estargz-chunk-size", "1048576", "go/src:v1", "go/dst:v1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr-remote: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exported = scratch.join("go.tar");
    ctrd.ctr_ok(&["images", "export", exported.to_str().unwrap(), "go/dst:v1"]);
    std::fs::create_dir_all(out_dir).unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(out_dir)
        .arg("-xf")
        .arg(&exported)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn reads_and_passes_through_go_reference_output() {
    if !e2e::require_root_tools(&["containerd", "ctr", "ctr-remote", "gunzip", "tar"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    sample_image(&src);
    let go = scratch.path().join("go");
    {
        let ctrd = Containerd::start(scratch.path(), None);
        go_convert(&ctrd, scratch.path(), &src, &go);
    }
    // Our reader opens and verifies every blob the reference wrote.
    let tocs = check_estargz_layout(&go, None);
    assert_eq!(
        toc_names(&tocs[1], "chunk")
            .iter()
            .filter(|n| *n == "data/big.bin")
            .count(),
        9
    );

    // Converting again keeps every layer byte for byte.
    let again = scratch.path().join("again");
    let out = rsnap_ok(&[
        "convert",
        &format!("oci:{}", go.display()),
        &format!("oci:{}:v2", again.display()),
    ]);
    assert_eq!(out.matches("already eStargz").count(), 2, "{out}");
    let (g, a) = (OciLayout::open(&go), OciLayout::open(&again));
    let (gm, am) = (g.manifest(None), a.manifest(Some("v2")));
    for i in 0..2 {
        assert_eq!(gm["layers"][i]["digest"], am["layers"][i]["digest"]);
        assert_eq!(
            gm["layers"][i]["annotations"][TOC_DIGEST],
            am["layers"][i]["annotations"][TOC_DIGEST]
        );
        assert_eq!(
            gm["layers"][i]["annotations"][UNCOMPRESSED],
            am["layers"][i]["annotations"][UNCOMPRESSED]
        );
    }
    assert_eq!(g.config(None)["rootfs"], a.config(Some("v2"))["rootfs"]);
}

#[test]
fn go_reference_and_rsnap_agree_on_contents() {
    if !e2e::require_root_tools(&["containerd", "ctr", "ctr-remote", "gunzip", "tar"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    sample_image(&src);
    let go = scratch.path().join("go");
    {
        let ctrd = Containerd::start(scratch.path(), None);
        go_convert(&ctrd, scratch.path(), &src, &go);
    }
    let ours = scratch.path().join("ours");
    rsnap_ok(&[
        "convert",
        "--chunk-size",
        "1048576",
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:v1", ours.display()),
    ]);
    let go_tocs = check_estargz_layout(&go, None);
    let our_tocs = check_estargz_layout(&ours, Some("v1"));
    // Same files, same chunking, same chunk digests, in the same order.
    let key = |t: &Value| -> Vec<(String, String, String)> {
        t["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
                (s("name"), s("type"), s("chunkDigest"))
            })
            .collect()
    };
    for (g, o) in go_tocs.iter().zip(&our_tocs) {
        assert_eq!(key(g), key(o));
    }
}

#[test]
fn corrupt_or_inconsistent_input_is_refused() {
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    sample_image(&src);
    let lay = OciLayout::open(&src);
    let m = lay.manifest(Some("v1"));
    let layer = m["layers"][1]["digest"].as_str().unwrap().to_string();

    // A config whose diff ID does not match the layer.
    let mut cfg = lay.config(Some("v1"));
    cfg["rootfs"]["diff_ids"][1] = Value::from(sha256_digest(b"not this layer"));
    let cfg_bytes = serde_json::to_vec(&cfg).unwrap();
    let mut m2 = m.clone();
    m2["config"]["digest"] = Value::from(lay.put_blob(&cfg_bytes));
    m2["config"]["size"] = Value::from(cfg_bytes.len());
    let m2_bytes = serde_json::to_vec(&m2).unwrap();
    let m2_digest = lay.put_blob(&m2_bytes);
    lay.set_tag(
        "bad-diffid",
        &m2_digest,
        m2_bytes.len() as u64,
        e2e::image::MT_MANIFEST,
    );
    let dst = scratch.path().join("dst");
    let (ok, _, err) = rsnap(&[
        "convert",
        &format!("oci:{}:bad-diffid", src.display()),
        &format!("oci:{}:x", dst.display()),
    ]);
    assert!(!ok, "diff ID mismatch accepted");
    assert!(err.contains("diff ID"), "{err}");

    // A layer blob that does not match its digest.
    let p = lay.blob_path(&layer);
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0xff;
    std::fs::write(&p, &bytes).unwrap();
    let (ok, _, err) = rsnap(&[
        "convert",
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:x", dst.display()),
    ]);
    assert!(!ok, "corrupt layer accepted");
    assert!(err.contains(&layer), "{err}");
    // Nothing was tagged, and no temp files are left.
    assert_eq!(
        OciLayout::open(&dst).index()["manifests"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let leftovers: Vec<_> = std::fs::read_dir(dst.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn docker_media_types_tar_layers_and_prioritized_files() {
    if !e2e::require_root_tools(&["gunzip", "tar"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    let mut a = LayerBuilder::new();
    a.file("bin/tool", pseudo_random(100_000, 1), 0o755)
        .file("etc/conf", "x=1\n", 0o644);
    let mut b = LayerBuilder::new();
    b.file("app/main", "main\n", 0o755)
        .file("app/data", pseudo_random(50_000, 2), 0o644);
    // Layer 2 uncompressed; the whole image with Docker schema 2 media types.
    write_oci_layout(&src, "v1", vec![a.tar_gz(), b.tar()], &["/app/main"]);
    let lay = OciLayout::open(&src);
    let mut m = lay.manifest(Some("v1"));
    m["mediaType"] = "application/vnd.docker.distribution.manifest.v2+json".into();
    m["config"]["mediaType"] = "application/vnd.docker.container.image.v1+json".into();
    m["layers"][0]["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar.gzip".into();
    m["layers"][1]["mediaType"] = "application/vnd.docker.image.rootfs.diff.tar".into();
    let mb = serde_json::to_vec(&m).unwrap();
    let md = lay.put_blob(&mb);
    lay.set_tag(
        "docker",
        &md,
        mb.len() as u64,
        "application/vnd.docker.distribution.manifest.v2+json",
    );

    let list = scratch.path().join("prio");
    std::fs::write(&list, "/app/main\n/etc/conf\n").unwrap();
    let dst = scratch.path().join("dst");
    rsnap_ok(&[
        "convert",
        "--prioritized-files",
        list.to_str().unwrap(),
        "--compression-level",
        "1",
        &format!("oci:{}:docker", src.display()),
        &format!("oci:{}", dst.display()),
    ]);
    let out = OciLayout::open(&dst);
    let om = out.manifest(Some("docker"));
    assert_eq!(
        om["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        om["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    let tocs = check_estargz_layout(&dst, Some("docker"));
    // Prioritized files come first in their layer, then the landmark.
    let names = |t: &Value| -> Vec<String> {
        t["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_string())
            .collect()
    };
    let n0 = names(&tocs[0]);
    let n1 = names(&tocs[1]);
    let pos = |n: &[String], x: &str| n.iter().position(|s| s == x);
    assert!(
        pos(&n0, "etc/conf") < pos(&n0, ".prefetch.landmark"),
        "{n0:?}"
    );
    assert!(
        pos(&n0, "bin/tool") > pos(&n0, ".prefetch.landmark"),
        "{n0:?}"
    );
    assert!(
        pos(&n1, "app/main") < pos(&n1, ".prefetch.landmark"),
        "{n1:?}"
    );
    assert!(
        pos(&n1, "app/data") > pos(&n1, ".prefetch.landmark"),
        "{n1:?}"
    );
}

#[test]
fn index_selects_host_platform_or_all() {
    let scratch = tempfile::tempdir().unwrap();
    let src = scratch.path().join("src");
    let mut l = LayerBuilder::new();
    l.file("x", "amd64\n", 0o644);
    let img1 = write_oci_layout(&src, "amd", vec![l.tar_gz()], &["/x"]);
    let mut l = LayerBuilder::new();
    l.file("x", "arm64\n", 0o644);
    let img2 = write_oci_layout(&src, "arm", vec![l.tar_gz()], &["/x"]);
    let lay = OciLayout::open(&src);
    let size = |d: &str| std::fs::metadata(lay.blob_path(d)).unwrap().len();
    let host = match std::env::consts::ARCH {
        "aarch64" => "arm64",
        _ => "amd64",
    };
    let other = if host == "amd64" { "arm64" } else { "amd64" };
    let (host_img, other_img) = if host == "amd64" {
        (&img1, &img2)
    } else {
        (&img2, &img1)
    };
    let idx = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other_img.manifest_digest,
             "size": size(&other_img.manifest_digest), "platform": {"os": "linux", "architecture": other}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": host_img.manifest_digest,
             "size": size(&host_img.manifest_digest), "platform": {"os": "linux", "architecture": host}},
        ]
    });
    let ib = serde_json::to_vec(&idx).unwrap();
    let id = lay.put_blob(&ib);
    lay.set_tag(
        "multi",
        &id,
        ib.len() as u64,
        "application/vnd.oci.image.index.v1+json",
    );

    let s = format!("oci:{}:multi", src.display());
    let one = scratch.path().join("one");
    rsnap_ok(&["convert", &s, &format!("oci:{}", one.display())]);
    let o = OciLayout::open(&one);
    let oi = o.json(o.manifest_desc(Some("multi"))["digest"].as_str().unwrap());
    let ms = oi["manifests"].as_array().unwrap();
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0]["platform"]["architecture"], host);
    let m = o.json(ms[0]["digest"].as_str().unwrap());
    let blob = gunzip(&o.blob(m["layers"][0]["digest"].as_str().unwrap()));
    assert!(String::from_utf8_lossy(&blob).contains(&format!("{host}\n")));

    let all = scratch.path().join("all");
    rsnap_ok(&[
        "convert",
        "--all-platforms",
        &s,
        &format!("oci:{}", all.display()),
    ]);
    let a = OciLayout::open(&all);
    let ai = a.json(a.manifest_desc(Some("multi"))["digest"].as_str().unwrap());
    assert_eq!(ai["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(ai["manifests"][0]["platform"]["architecture"], other);

    let (ok, _, err) = rsnap(&[
        "convert",
        "--platform",
        "linux/s390x",
        &s,
        &format!("oci:{}", all.display()),
    ]);
    assert!(!ok && err.contains("linux/s390x"), "{err}");
}
