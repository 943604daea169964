//! A layer built as tar, converted to eStargz (or zstd:chunked), read from a
//! local file and mounted through FUSE, compared path by path with the tar;
//! two such layers under overlayfs; crafted zstd:chunked layers refused.

mod common;

use common::*;
use lazyfs::{ChunkCache, Config, FileSource};
use std::sync::Arc;

fn cfg() -> Config {
    Config {
        neighbour_bytes: 0,
        fetch_timeout_sec: 5,
        no_background_fetch: true,
        ..Config::default()
    }
}

fn file_source(dir: &std::path::Path, blob: &Blob) -> Arc<FileSource> {
    let p = dir.join("blob");
    std::fs::write(&p, &blob.bytes).unwrap();
    Arc::new(FileSource::open(&p).unwrap())
}

#[test]
fn mounted_layer_matches_its_tar() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let l = lower_layer();
    let blob = to_estargz(&l, 64 << 10, &[]);
    let m = mount_source(
        &rt,
        file_source(tmp.path(), &blob),
        &blob,
        &cfg(),
        Arc::new(ChunkCache::memory_only(64 << 20)),
    );
    compare(&l, m.path());
    // And again from the page cache / chunk cache.
    compare(&l, m.path());
    let s = m.layer.stats().snapshot();
    // A request may span a small gap holding a member another request is
    // already fetching (coalescing), so a few bytes can come twice; a
    // layer's worth twice would be a bug.
    let size = blob.bytes.len() as u64;
    assert!(
        s.on_demand_bytes > 0 && s.on_demand_bytes <= size + size / 20,
        "{s:?}, blob {}",
        blob.bytes.len()
    );
}

#[test]
fn zstd_chunked_layer_matches_its_tar() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let l = lower_layer();
    let blob = to_zstd_chunked(&l, 64 << 10);
    let m = mount_source(
        &rt,
        file_source(tmp.path(), &blob),
        &blob,
        &cfg(),
        Arc::new(ChunkCache::memory_only(64 << 20)),
    );
    compare(&l, m.path());
    let s = m.layer.stats().snapshot();
    assert_eq!(s.corrupt_chunks, 0, "{s:?}");
    assert!(s.on_demand_bytes > 0, "{s:?}");
}

/// Crafted zstd:chunked blobs: opening fails with the typed cause, so the
/// daemon falls back (and `rsnap mount` says why) instead of serving.
#[test]
fn crafted_zstd_chunked_layers_are_refused() {
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let blob = to_zstd_chunked(&upper_layer(), 64 << 10);
    let n = blob.bytes.len();
    let open = |bytes: Vec<u8>, toc: &str| {
        let b = Blob {
            bytes,
            digest: blob.digest.clone(),
            toc_digest: toc.to_string(),
        };
        rt.block_on(lazyfs::LazyLayer::open(
            file_source(tmp.path(), &b),
            &b.digest,
            Some(toc),
            &cfg(),
            Arc::new(ChunkCache::memory_only(1 << 20)),
            rt.handle().clone(),
        ))
        .err()
        .expect("a crafted layer must not open")
    };
    // TOC offset past the end of the blob.
    let mut past = blob.bytes.clone();
    past[n - 40..n - 32].copy_from_slice(&(2 * n as u64).to_le_bytes());
    let e = open(past, &blob.toc_digest);
    assert!(
        matches!(
            &e,
            lazyfs::Error::Invalid {
                source: estargz::Error::TocOffsetOutOfRange { .. },
                ..
            }
        ),
        "{e:?}"
    );
    // The TOC's skippable frame claims more bytes than it has.
    let toc_at = u64::from_le_bytes(blob.bytes[n - 40..n - 32].try_into().unwrap()) as usize - 8;
    let mut lying = blob.bytes.clone();
    let real = u32::from_le_bytes(lying[toc_at + 4..toc_at + 8].try_into().unwrap());
    lying[toc_at + 4..toc_at + 8].copy_from_slice(&(real + 100).to_le_bytes());
    let e = open(lying, &blob.toc_digest);
    assert!(
        matches!(
            &e,
            lazyfs::Error::Invalid {
                source: estargz::Error::TocFrameSize { .. },
                ..
            }
        ),
        "{e:?}"
    );
    // A TOC digest the layer does not have.
    let e = open(
        blob.bytes.clone(),
        "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    );
    assert!(
        matches!(&e, lazyfs::Error::TocDigestMismatch { .. }),
        "{e:?}"
    );
}

#[test]
fn upper_layer_shows_whiteouts_and_overlay_applies_them() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let (lo, up) = (lower_layer(), upper_layer());
    let (lb, ub) = (
        to_estargz(&lo, 64 << 10, &[]),
        to_estargz(&up, 64 << 10, &[]),
    );
    let cache = Arc::new(ChunkCache::memory_only(64 << 20));
    let ld = tmp.path().join("l");
    let ud = tmp.path().join("u");
    std::fs::create_dir_all(&ld).unwrap();
    std::fs::create_dir_all(&ud).unwrap();
    let lm = mount_source(&rt, file_source(&ld, &lb), &lb, &cfg(), cache.clone());
    let um = mount_source(&rt, file_source(&ud, &ub), &ub, &cfg(), cache);
    compare(&up, um.path());
    {
        let ov = Overlay::mount(&[um.path(), lm.path()]);
        let o = ov.dir.path();
        assert!(!o.join("del/me").exists(), "whiteout applied");
        assert_eq!(std::fs::read_to_string(o.join("del/keep")).unwrap(), "stay");
        assert!(!o.join("opq/old").exists(), "opaque dir applied");
        assert_eq!(std::fs::read_to_string(o.join("opq/new")).unwrap(), "fresh");
        assert_eq!(
            std::fs::read_to_string(o.join("etc/hostname")).unwrap(),
            "upper\n"
        );
        assert_eq!(
            std::fs::read(o.join("data/f8-1048576")).unwrap(),
            noise(1 << 20, 9)
        );
        assert!(
            std::os::unix::fs::MetadataExt::mode(&std::fs::metadata(o.join("bin/su")).unwrap())
                & 0o4000
                != 0
        );
        let names: Vec<_> = std::fs::read_dir(o.join("opq"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("new")]);
    }
    drop(um);
    drop(lm);
}

#[test]
fn prioritized_files_are_prefetched_in_one_request() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let l = lower_layer();
    let blob = to_estargz(&l, 64 << 10, &["data/f7-300000", "etc/hostname"]);
    let src = file_source(tmp.path(), &blob);
    let cache = Arc::new(ChunkCache::memory_only(64 << 20));
    // No readahead: what is read must come from the prefetch alone.
    let c = Config {
        neighbour_bytes: 0,
        blob_readahead_bytes: 0,
        readahead_bytes: 0,
        ..cfg()
    };
    let m = mount_source(&rt, src, &blob, &c, cache);
    // Counted as differences: a process outside this test (a concurrent
    // test scanning mounts, say) may touch the fresh mount before prefetch.
    let before = m.layer.stats().snapshot().requests;
    let rep = rt.block_on(m.layer.prefetch()).unwrap();
    assert!(rep.chunks >= 6, "{rep:?}");
    let after = m.layer.stats().snapshot().requests;
    assert_eq!(after - before, 1, "prefetch is one request");
    assert_eq!(
        std::fs::read(m.path().join("data/f7-300000")).unwrap(),
        noise(300_000, 8)
    );
    assert_eq!(
        m.layer.stats().snapshot().requests,
        after,
        "prefetched file needs no request"
    );
    // The landmark orders the blob; it is not a file of the image.
    assert!(!m.path().join(".prefetch.landmark").exists());
}

#[test]
fn background_fetch_completes_the_layer() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let l = lower_layer();
    let blob = to_estargz(&l, 64 << 10, &[]);
    let c = Config {
        neighbour_bytes: 0,
        no_background_fetch: false,
        ..cfg()
    };
    let m = mount_source(
        &rt,
        file_source(tmp.path(), &blob),
        &blob,
        &c,
        Arc::new(ChunkCache::memory_only(64 << 20)),
    );
    m.layer.start_background_fetch();
    let t0 = std::time::Instant::now();
    while m.layer.background_running() && t0.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let state = m
        .path()
        .join(format!(".stargz-snapshotter/{}.json", blob.digest));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    assert_eq!(v["fetchedPercent"], 100.0, "{v}");
    assert_eq!(v["fetchedSize"], blob.bytes.len() as u64);
    // Files that share content share chunks: fewer bytes came over than the blob has.
    assert!(m.layer.stats().snapshot().background_bytes < blob.bytes.len() as u64);
    let before = m.layer.stats().snapshot().requests;
    compare(&l, m.path());
    assert_eq!(
        m.layer.stats().snapshot().requests,
        before,
        "everything was cached"
    );
}

/// The FUSE mounts are `nosuid,nodev`, yet through the overlayfs above them
/// (mounted without those flags, as containerd does) a setuid binary runs
/// setuid and a device node opens: the overlay's mount flags govern.
#[test]
fn overlay_flags_govern_setuid_and_devices() {
    if !e2e::require_root_tools(&["setpriv"]) {
        return;
    }
    let rt = runtime();
    let tmp = tempfile::tempdir().unwrap();
    let mut lo = e2e::image::LayerBuilder::new();
    lo.file("bin/id", std::fs::read("/usr/bin/id").unwrap(), 0o4755);
    lo.entry(
        "dev/null",
        e2e::image::Kind::CharDevice(1, 3),
        e2e::image::Meta::mode(0o666),
    );
    let mut up = e2e::image::LayerBuilder::new();
    up.file("etc/marker", "up", 0o644);
    let (lb, ub) = (
        to_estargz(&lo, 64 << 10, &[]),
        to_estargz(&up, 64 << 10, &[]),
    );
    let cache = Arc::new(ChunkCache::memory_only(64 << 20));
    let (ld, ud) = (tmp.path().join("l"), tmp.path().join("u"));
    std::fs::create_dir_all(&ld).unwrap();
    std::fs::create_dir_all(&ud).unwrap();
    let lm = mount_source(&rt, file_source(&ld, &lb), &lb, &cfg(), cache.clone());
    let um = mount_source(&rt, file_source(&ud, &ub), &ub, &cfg(), cache);
    let as_nobody = |bin: &std::path::Path| {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(bin)
            .arg("-u")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    // Directly on the FUSE mount: nosuid, nodev.
    assert_eq!(as_nobody(&lm.path().join("bin/id")), "65534");
    let err = std::fs::File::open(lm.path().join("dev/null")).unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(libc::EACCES),
        "nodev on the FUSE mount"
    );
    {
        let ov = Overlay::mount(&[um.path(), lm.path()]);
        assert_eq!(
            as_nobody(&ov.dir.path().join("bin/id")),
            "0",
            "setuid honoured through overlay"
        );
        std::fs::File::open(ov.dir.path().join("dev/null")).expect("device opens through overlay");
    }
    drop(um);
    drop(lm);
}
