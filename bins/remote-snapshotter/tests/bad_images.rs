//! Bad input end to end: eStargz layers crafted byte by byte here (gzip
//! members, tar headers, TOC JSON, footer; not with our writer) whose TOC
//! lies in every way we could think of, pushed to a real registry and pulled
//! with `rsnap pull` through our daemon and containerd. Each is refused with
//! a clear error, or falls back to an ordinary pull that containerd's own
//! applier handles; the daemon never panics and keeps serving, and nothing
//! outside the scratch directory is created (a sentinel directory is the
//! target of every traversal name). `rsnap toc --verify` and `rsnap mount`
//! refuse the same blobs cleanly.

mod common;

use e2e::containerd::{Containerd, NAMESPACE};
use e2e::image::{
    busybox_layer, gzip, rsnap, rsnap_ok, sha256_digest, OciLayout, MT_CONFIG, MT_LAYER_GZIP,
    MT_MANIFEST, TOC_DIGEST, UNCOMPRESSED,
};
use e2e::registry::{skopeo_push, Registry};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A ustar header, written out field by field.
fn tar_header(name: &str, size: u64, typeflag: u8) -> [u8; 512] {
    let mut h = [0u8; 512];
    let nb = name.as_bytes();
    assert!(nb.len() <= 100, "test names fit the name field: {name}");
    h[..nb.len()].copy_from_slice(nb);
    let octal = |field: &mut [u8], v: u64| {
        let s = format!("{v:0w$o}\0", w = field.len() - 1);
        field.copy_from_slice(s.as_bytes());
    };
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 1_700_000_000);
    h[148..156].fill(b' ');
    h[156] = typeflag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(512) * 512, 0);
    v
}

/// The 51-byte eStargz footer: an empty gzip member whose Extra field holds
/// the subfield `SG` with `%016x` of the TOC offset and `STARGZ`.
fn footer(toc_offset: u64) -> Vec<u8> {
    let mut f = vec![
        0x1f, 0x8b, 0x08, 0x04, 0, 0, 0, 0, 0, 0xff, 26, 0, b'S', b'G', 22, 0,
    ];
    f.extend_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(f.len(), 51);
    f
}

/// A crafted layer: the blob, what its tar claims to be (for the diff ID an
/// attacker would write in the config) and the real digest of its TOC JSON.
struct Blob {
    bytes: Vec<u8>,
    tar: Vec<u8>,
    toc_digest: String,
}

/// Files as eStargz lays them out (tar header at the end of one member,
/// contents starting the next), a TOC of one whole-file chunk each, which
/// `edit` may then falsify; `cut` removes bytes from the middle of that
/// file's member after its offset was recorded.
fn craft(files: &[(&str, &[u8])], cut: Option<usize>, edit: impl FnOnce(&mut Vec<Value>)) -> Blob {
    let (mut out, mut tar, mut entries) = (Vec::new(), Vec::new(), Vec::new());
    for (i, (name, data)) in files.iter().enumerate() {
        let h = tar_header(name, data.len() as u64, b'0');
        out.extend_from_slice(&gzip(&h, 6));
        tar.extend_from_slice(&h);
        let offset = out.len();
        let mut member = gzip(&padded(data), 6);
        if cut == Some(i) {
            let mid = member.len() / 2;
            member.drain(mid..mid + 16);
        }
        out.extend_from_slice(&member);
        tar.extend_from_slice(&padded(data));
        entries.push(json!({
            "name": name, "type": "reg", "size": data.len(), "mode": 0o644,
            "offset": offset, "chunkDigest": sha256_digest(data),
        }));
    }
    edit(&mut entries);
    let toc = serde_json::to_vec(&json!({"version": 1, "entries": entries})).unwrap();
    let toc_offset = out.len() as u64;
    let mut toc_tar = tar_header("stargz.index.json", toc.len() as u64, b'0').to_vec();
    toc_tar.extend_from_slice(&padded(&toc));
    toc_tar.extend_from_slice(&[0u8; 1024]);
    out.extend_from_slice(&gzip(&toc_tar, 6));
    tar.extend_from_slice(&toc_tar);
    out.extend_from_slice(&footer(toc_offset));
    Blob {
        bytes: out,
        tar,
        toc_digest: sha256_digest(&toc),
    }
}

/// busybox (plain gzip) + the crafted layer, as an OCI layout tag; the
/// layer's annotations carry `toc_annotation` as its TOC digest.
fn write_image(dir: &Path, tag: &str, bad: &Blob, toc_annotation: &str) {
    let lay = OciLayout::create(dir);
    let base = busybox_layer();
    let base_gz = base.tar_gz();
    let layers = [
        (
            lay.put_blob(&base_gz),
            base_gz.len(),
            sha256_digest(&base.tar()),
            json!({}),
        ),
        (
            lay.put_blob(&bad.bytes),
            bad.bytes.len(),
            sha256_digest(&bad.tar),
            json!({TOC_DIGEST: toc_annotation, UNCOMPRESSED: bad.tar.len().to_string()}),
        ),
    ];
    let config = serde_json::to_vec(&json!({
        "architecture": arch(), "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layers[0].2, layers[1].2]},
    }))
    .unwrap();
    let descs: Vec<Value> = layers
        .iter()
        .map(|(d, size, _, ann)| {
            json!({"mediaType": MT_LAYER_GZIP, "digest": d, "size": size, "annotations": ann})
        })
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": lay.put_blob(&config), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = lay.put_blob(&manifest);
    lay.set_tag(tag, &md, manifest.len() as u64, MT_MANIFEST);
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    }
}

/// What a pull of a bad image may do.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Refused by the lazy path, then an ordinary pull (or its refusal by
    /// containerd's applier) handles the tar.
    FallbackOrRefused,
    /// The pull fails.
    Refused,
    /// Mounted lazily (the TOC is consistent); reads of the bad file fail.
    LazyReadFails,
    /// Mounted lazily with the name taken relative to the layer root, as
    /// the Go reference does: the file is inside the container only.
    LazyInside,
}

struct Case {
    tag: &'static str,
    blob: Blob,
    toc_annotation: String,
    expect: Expect,
    /// Said in the daemon log (the reason for the fallback) or rsnap's error.
    reason: &'static str,
}

const GOOD: &[u8] = b"a good file\n";

/// The name of a file a traversal would create: unique to this run, so a
/// search of the host finds only what the test made.
fn escaped_name(sentinel: &Path, what: &str) -> String {
    let token = sentinel.file_name().unwrap().to_str().unwrap();
    format!("{token}-{what}")
}

fn cases(sentinel: &Path) -> Vec<Case> {
    // Enough ../ to reach / from the snapshot and mount directories (depth <= 10).
    let up = "../".repeat(12);
    let target = sentinel.strip_prefix("/").unwrap().display().to_string();
    let payload = b"escaped\n".as_slice();
    let esc = |what: &str| format!("{up}{target}/{}", escaped_name(sentinel, what));
    let mut out = Vec::new();
    let mut case = |tag, blob: Blob, lie: Option<&str>, expect, reason| {
        let toc_annotation = lie.map_or(blob.toc_digest.clone(), str::to_string);
        out.push(Case {
            tag,
            blob,
            toc_annotation,
            expect,
            reason,
        });
    };
    let dotdot = esc("dotdot");
    case(
        "dotdot",
        craft(&[("good.txt", GOOD), (&dotdot, payload)], None, |_| {}),
        None,
        Expect::FallbackOrRefused,
        "not a clean relative path",
    );
    let abs = format!("{}/{}", sentinel.display(), escaped_name(sentinel, "abs"));
    case(
        "absolute",
        craft(&[("good.txt", GOOD), (&abs, payload)], None, |_| {}),
        None,
        Expect::LazyInside,
        "",
    );
    let mid = format!("a/../{}", esc("mid"));
    case(
        "inner-dotdot",
        craft(&[("good.txt", GOOD), (&mid, payload)], None, |_| {}),
        None,
        Expect::FallbackOrRefused,
        "not a clean relative path",
    );
    // A TOC may name the TOC's own traversal only: the tar is clean.
    case(
        "toc-only-dotdot",
        craft(&[("good.txt", GOOD), ("x.txt", payload)], None, |e| {
            e[1]["name"] = json!(esc("toc-only"));
        }),
        None,
        Expect::FallbackOrRefused,
        "not a clean relative path",
    );
    case(
        "hardlink-dotdot",
        craft(&[("good.txt", GOOD)], None, |e| {
            e.push(json!({"name": "link", "type": "hardlink", "linkName": esc("hardlink")}));
        }),
        None,
        Expect::FallbackOrRefused,
        "points to missing or unusable",
    );
    case(
        "huge-chunk-size",
        craft(
            &[("good.txt", GOOD), ("big.bin", &[7u8; 3000])],
            None,
            |e| {
                e[1]["chunkSize"] = json!(1u64 << 62);
            },
        ),
        None,
        Expect::FallbackOrRefused,
        "chunks overlap",
    );
    case(
        "offset-past-blob",
        craft(
            &[("good.txt", GOOD), ("big.bin", &[7u8; 3000])],
            None,
            |e| {
                e[1]["offset"] = json!(1u64 << 40);
            },
        ),
        None,
        Expect::FallbackOrRefused,
        "at or past the TOC offset",
    );
    case(
        "negative-size",
        craft(
            &[("good.txt", GOOD), ("big.bin", &[7u8; 3000])],
            None,
            |e| {
                e[1]["size"] = json!(-5);
            },
        ),
        None,
        Expect::FallbackOrRefused,
        "out of range",
    );
    case(
        "duplicate",
        craft(
            &[
                ("good.txt", GOOD),
                ("dup.txt", b"one\n"),
                ("dup.txt", b"two\n"),
            ],
            None,
            |_| {},
        ),
        None,
        Expect::FallbackOrRefused,
        "duplicate entry",
    );
    case(
        "lying-toc-digest",
        craft(&[("good.txt", GOOD)], None, |_| {}),
        Some(&format!("sha256:{}", "ab".repeat(32))),
        Expect::FallbackOrRefused,
        "TOC digest",
    );
    // A gzip bomb: one honest whole-file chunk just over the chunk cap
    // (64 MiB of zeros, 64 KiB compressed). Without the cap a few MB of blob
    // could make the daemon allocate GiBs for one read.
    let zeros = vec![0u8; (64 << 20) + 1];
    case(
        "chunk-over-cap",
        craft(&[("good.txt", GOOD), ("zeros.bin", &zeros)], None, |_| {}),
        None,
        Expect::FallbackOrRefused,
        "over the cap",
    );
    // The whole-blob digest in the manifest is the truncated blob's, so the
    // registry serves it; the footer is gone and the tar ends early.
    let mut truncated = craft(
        &[("good.txt", GOOD), ("big.bin", &[7u8; 3000])],
        None,
        |_| {},
    );
    truncated.bytes.truncate(truncated.bytes.len() - 30);
    case(
        "truncated",
        truncated,
        None,
        Expect::Refused,
        "no eStargz or stargz footer",
    );
    // Consistent TOC, so the layer mounts lazily; the file's own member is
    // short: its reads must fail, never return other bytes.
    case(
        "cut-member",
        craft(
            &[("good.txt", GOOD), ("big.bin", &crate_noise(200_000))],
            Some(1),
            |_| {},
        ),
        None,
        Expect::LazyReadFails,
        "",
    );
    // 2^62 bytes claimed for a file of 3000 as one whole-file chunk: over
    // the chunk cap (and covering it with capped chunks would take more
    // entries than the TOC may have).
    case(
        "huge-size",
        craft(
            &[("good.txt", GOOD), ("big.bin", &[7u8; 3000])],
            None,
            |e| {
                e[1]["size"] = json!(1u64 << 62);
            },
        ),
        None,
        Expect::FallbackOrRefused,
        "over the cap",
    );
    out
}

fn crate_noise(n: usize) -> Vec<u8> {
    e2e::image::pseudo_random(n, 99)
}

fn pull(ctrd: &Containerd, reference: &str) -> (bool, String, String) {
    let sock = ctrd.socket.to_str().unwrap().to_string();
    rsnap(&["pull", "-a", &sock, "-n", NAMESPACE, reference])
}

/// Files a traversal name would have created, anywhere under the usual
/// writable places outside `allowed` (the scratch dir), and whatever is in
/// the sentinel dir.
fn escapes(allowed: &Path, sentinel: &Path) -> Vec<PathBuf> {
    let out = std::process::Command::new("find")
        .args(["/tmp", "/var/tmp", "/etc", "/run", "/root", "/var/lib"])
        .args(["-xdev", "-name", &escaped_name(sentinel, "*"), "-print"])
        .output()
        .unwrap();
    let mut bad: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .filter(|p| !p.starts_with(allowed))
        .collect();
    bad.extend(
        std::fs::read_dir(sentinel)
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    bad
}

#[test]
fn crafted_bad_estargz_images_are_refused_or_fall_back_safely() {
    if !e2e::require_root_tools(&["docker-registry", "containerd", "ctr", "runc", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    // Outside the scratch dir: where every traversal name points.
    let sentinel = tempfile::Builder::new()
        .prefix("rsnap-sentinel-")
        .tempdir_in("/tmp")
        .unwrap();
    let layout = scratch.path().join("bad");
    let cases = cases(sentinel.path());
    for c in &cases {
        write_image(&layout, c.tag, &c.blob, &c.toc_annotation);
    }
    let reg = Registry::start(scratch.path());
    for c in &cases {
        skopeo_push(&layout, c.tag, &format!("{}/bad/{}:v1", reg.host(), c.tag));
    }
    std::fs::write(
        scratch.path().join("config.toml"),
        "noprefetch = true\nno_background_fetch = true\n[blob]\nmax_retries = 1\nfetching_timeout_sec = 5\n",
    )
    .unwrap();
    let mut daemon = common::start(scratch.path(), &[]);
    let ctrd = Containerd::start(scratch.path(), Some(&daemon.sock));
    let log = || std::fs::read_to_string(scratch.path().join("daemon.log")).unwrap_or_default();

    for c in &cases {
        let r = format!("{}/bad/{}:v1", reg.host(), c.tag);
        let (ok, out, err) = pull(&ctrd, &r);
        let lazy = ok && out.contains(": 1 lazy,");
        eprintln!("{}: ok={ok} {}{}", c.tag, out.trim(), err.trim());
        assert!(
            !err.contains("panicked"),
            "{}: rsnap panicked: {err}",
            c.tag
        );
        assert!(
            daemon.svc.is_running(),
            "{}: daemon died:\n{}",
            c.tag,
            log()
        );
        match c.expect {
            Expect::FallbackOrRefused => {
                assert!(!lazy, "{}: mounted lazily: {out}", c.tag);
                assert!(
                    log().contains(c.reason),
                    "{}: the daemon log does not say {:?}:\n{}",
                    c.tag,
                    c.reason,
                    log()
                );
                if ok {
                    // The ordinary pull applied the tar: its good file is there.
                    let run = ctrd.run(&r, Some("remote"), &["cat", "/good.txt"]);
                    assert_eq!(run.as_bytes(), GOOD, "{}", c.tag);
                }
            }
            Expect::LazyInside => {
                assert!(lazy, "{}: expected a lazy mount: {out}{err}", c.tag);
                let abs = format!(
                    "{}/{}",
                    sentinel.path().display(),
                    escaped_name(sentinel.path(), "abs")
                );
                let run = ctrd.run(&r, Some("remote"), &["cat", &abs]);
                assert_eq!(run, "escaped\n", "{}: inside the container", c.tag);
            }
            Expect::Refused => {
                assert!(!ok, "{}: pull succeeded: {out}", c.tag);
                assert!(!err.is_empty(), "{}: no error message", c.tag);
                assert!(
                    log().contains(c.reason),
                    "{}: log lacks {:?}",
                    c.tag,
                    c.reason
                );
            }
            Expect::LazyReadFails => {
                assert!(lazy, "{}: expected a lazy mount: {out}{err}", c.tag);
                let id = e2e::containerd::unique_id("bad");
                let started = std::time::Instant::now();
                let res = ctrd.ctr(&[
                    "run",
                    "--rm",
                    "--snapshotter=remote",
                    &r,
                    &id,
                    "sh",
                    "-c",
                    "cat /good.txt; cat /big.bin > /tmp/out; echo rc=$?; wc -c < /tmp/out",
                ]);
                let so = String::from_utf8_lossy(&res.stdout).into_owned();
                let se = String::from_utf8_lossy(&res.stderr);
                eprintln!("{}: container in {:?}: {so}{se}", c.tag, started.elapsed());
                assert!(so.starts_with("a good file\n"), "{}: {so}{se}", c.tag);
                assert!(
                    so.contains("rc=1"),
                    "{}: the bad read did not fail: {so}",
                    c.tag
                );
                // Not one byte of the unverifiable file was served.
                assert!(
                    so.trim_end().ends_with("\n0"),
                    "{}: bytes served: {so}",
                    c.tag
                );
                assert!(
                    started.elapsed() < Duration::from_secs(30),
                    "{}: the failing read took {:?}",
                    c.tag,
                    started.elapsed()
                );
            }
        }
    }

    // Still serving: a good image pulls lazily and runs.
    let good_src = scratch.path().join("good-src");
    let good_dst = scratch.path().join("good-dst");
    let mut data = e2e::image::LayerBuilder::new();
    data.file("hello.txt", "still serving\n", 0o644);
    e2e::image::write_oci_layout(
        &good_src,
        "v1",
        vec![busybox_layer().tar_gz(), data.tar_gz()],
        &["/bin/sh"],
    );
    rsnap_ok(&[
        "convert",
        &format!("oci:{}:v1", good_src.display()),
        &format!("oci:{}:v1", good_dst.display()),
    ]);
    let good = format!("{}/good/app:v1", reg.host());
    skopeo_push(&good_dst, "v1", &good);
    let (ok, out, err) = pull(&ctrd, &good);
    assert!(ok && out.contains("2 lazy"), "good image: {out}{err}");
    assert_eq!(
        ctrd.run(&good, Some("remote"), &["cat", "/hello.txt"]),
        "still serving\n"
    );
    assert!(daemon.svc.is_running());
    assert!(
        !log().contains("panicked"),
        "the daemon panicked:\n{}",
        log()
    );

    drop(ctrd);
    let bad = escapes(scratch.path(), sentinel.path());
    assert!(bad.is_empty(), "files outside the scratch dir: {bad:?}");
    common::stop(daemon, libc::SIGINT);
    assert!(e2e::containerd::mounts_under(scratch.path()).is_empty());
}

/// The same blobs through the command line: `rsnap toc --verify` fails on
/// every one, `rsnap mount --blob` on every one whose TOC is invalid; no
/// panic, a message naming the cause.
#[test]
fn rsnap_toc_and_mount_refuse_the_bad_blobs() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let sentinel = tempfile::Builder::new()
        .prefix("rsnap-sentinel-")
        .tempdir_in("/tmp")
        .unwrap();
    for c in cases(sentinel.path()) {
        let file = scratch.path().join(format!("{}.blob", c.tag));
        std::fs::write(&file, &c.blob.bytes).unwrap();
        let f = file.to_str().unwrap();
        let (ok, _, err) = rsnap(&[
            "toc",
            "--verify",
            "--quiet",
            "--toc-digest",
            &c.toc_annotation,
            f,
        ]);
        eprintln!("toc {}: {}", c.tag, err.trim());
        assert!(!err.contains("panicked"), "{}: {err}", c.tag);
        if c.expect == Expect::LazyInside {
            // A sound blob (names are relative to the layer root).
            assert!(ok, "{}: {err}", c.tag);
            continue;
        }
        assert!(!ok, "{}: rsnap toc --verify accepted it", c.tag);
        if c.expect == Expect::LazyReadFails {
            assert!(err.contains("failed verification"), "{}: {err}", c.tag);
            continue;
        }
        assert!(err.contains(c.reason), "{}: {err}", c.tag);
        if c.tag == "lying-toc-digest" {
            // The blob itself is sound: only the annotation lies.
            continue;
        }
        let mnt = scratch.path().join(format!("mnt-{}", c.tag));
        std::fs::create_dir_all(&mnt).unwrap();
        let mut child = std::process::Command::new(e2e::image::rsnap_bin())
            .args(["mount", "--blob", f])
            .arg(&mnt)
            .env("RUST_BACKTRACE", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let exited = e2e::process::wait_until(Duration::from_secs(20), || {
            child.try_wait().unwrap().is_some()
        });
        if !exited {
            // Mounted after all: stop it (it unmounts on SIGINT), then fail.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
            e2e::containerd::unmount_under(scratch.path());
            panic!("{}: rsnap mount accepted the blob", c.tag);
        }
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: rsnap mount succeeded", c.tag);
        assert!(!err.contains("panicked"), "{}: {err}", c.tag);
        assert!(
            err.contains(c.reason) || c.expect == Expect::Refused,
            "{}: rsnap mount said {err}",
            c.tag
        );
    }
    assert!(e2e::containerd::mounts_under(scratch.path()).is_empty());
    assert_eq!(std::fs::read_dir(sentinel.path()).unwrap().count(), 0);
}

/// A manifest changed in the registry's storage after the push (its TOC
/// digest annotation swapped, as an attacker would): the registry still
/// serves it under the old digest. `rsnap pull` by tag and by digest refuse
/// it, and the daemon, asked to mount a layer of it without a TOC digest
/// label (so it reads the manifest itself), does not trust it: it falls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_that_is_not_what_its_digest_says_is_refused() {
    if !e2e::require_root_tools(&["docker-registry", "skopeo"]) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let (src, dst) = (scratch.path().join("src"), scratch.path().join("dst"));
    let mut data = e2e::image::LayerBuilder::new();
    data.file("hello.txt", "hello\n", 0o644);
    e2e::image::write_oci_layout(
        &src,
        "v1",
        vec![busybox_layer().tar_gz(), data.tar_gz()],
        &["/bin/sh"],
    );
    rsnap_ok(&[
        "convert",
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:v1", dst.display()),
    ]);
    let reg = Registry::start(scratch.path());
    let reference = format!("{}/m/app:v1", reg.host());
    skopeo_push(&dst, "v1", &reference);

    // The registry's own record of what the tag points at.
    let storage = scratch
        .path()
        .join(format!("registry-{}/data/docker/registry/v2", reg.port));
    let link = storage.join("repositories/m/app/_manifests/tags/v1/current/link");
    let digest = std::fs::read_to_string(&link).unwrap().trim().to_string();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let data_file = storage.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]));
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&data_file).unwrap()).unwrap();
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let forged = format!("sha256:{}", "0".repeat(64));
    manifest["layers"][1]["annotations"][TOC_DIGEST] = json!(forged);
    std::fs::write(&data_file, serde_json::to_vec(&manifest).unwrap()).unwrap();

    let no_containerd = scratch.path().join("none.sock");
    let sock = no_containerd.to_str().unwrap();
    for r in [reference.clone(), format!("{}/m/app@{digest}", reg.host())] {
        let (ok, out, err) = rsnap(&["pull", "-a", sock, "-n", NAMESPACE, &r]);
        eprintln!("pull {r}: {out}{err}");
        assert!(!ok, "pulled a forged manifest: {out}");
        assert!(err.contains("digest mismatch"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }

    let d = common::start(scratch.path(), &[]);
    let api = common::api(&d).await;
    use snapshotter_testsuite::{labels, Api};
    let l = labels(&[
        ("containerd.io/snapshot.ref", "sha256:forged-chain"),
        ("containerd.io/snapshot/remote/stargz.reference", &reference),
        ("containerd.io/snapshot/remote/stargz.digest", &layer),
    ]);
    let mounts = api
        .prepare("forged", "", &l)
        .await
        .expect("an ordinary snapshot, not a remote one");
    assert_eq!(mounts.len(), 1);
    let log = std::fs::read_to_string(scratch.path().join("daemon.log")).unwrap();
    assert!(log.contains("digest mismatch"), "{log}");
    assert!(
        !log.contains(&forged),
        "the forged TOC digest was used:\n{log}"
    );
    common::stop(d, libc::SIGINT);
    assert!(e2e::containerd::mounts_under(scratch.path()).is_empty());
}
