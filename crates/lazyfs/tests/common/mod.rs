//! Shared by the root-only lazyfs tests: test layers built as tar, converted
//! to eStargz, mounted; and a comparison of a mount with the tar it came from.

#![allow(dead_code)]

use e2e::image::{Kind, LayerBuilder, Meta};
use lazyfs::{ChunkCache, Config, LazyLayer, MountHandle, RangeSource};
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Blob {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub toc_digest: String,
}

/// tar -> eStargz with small chunks so that files have several.
pub fn to_estargz(l: &LayerBuilder, chunk_size: u64, prioritized: &[&str]) -> Blob {
    let opts = estargz::writer::WriterOptions {
        chunk_size,
        compression_level: 1,
        prioritized_files: prioritized.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    let mut out = Vec::new();
    let rep = estargz::writer::convert(std::io::Cursor::new(l.tar()), &mut out, &opts).unwrap();
    assert_eq!(rep.blob_size, out.len() as u64);
    Blob {
        digest: rep.blob_digest,
        toc_digest: rep.toc_digest,
        bytes: out,
    }
}

/// tar -> zstd:chunked, small chunks as in [`to_estargz`].
pub fn to_zstd_chunked(l: &LayerBuilder, chunk_size: u64) -> Blob {
    let opts = estargz::writer::WriterOptions {
        chunk_size,
        compression: estargz::Compression::Zstd,
        ..Default::default()
    };
    let mut out = Vec::new();
    let rep = estargz::writer::convert(std::io::Cursor::new(l.tar()), &mut out, &opts).unwrap();
    assert_eq!(rep.blob_size, out.len() as u64);
    Blob {
        digest: rep.blob_digest,
        toc_digest: rep.toc_digest,
        bytes: out,
    }
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    e2e::image::pseudo_random(len, seed)
}

/// Everything a lower layer should show: sizes around chunk boundaries,
/// links, devices, xattrs, setuid, odd owners and times, things to delete.
pub fn lower_layer() -> LayerBuilder {
    let mut l = LayerBuilder::new();
    l.dir("etc", 0o755);
    l.file("etc/hostname", "lazy\n", 0o644);
    l.entry(
        "etc/shadow",
        Kind::File(b"root:*:1:0:99999:7:::\n".to_vec()),
        Meta::mode(0o640).owner(0, 42),
    );
    l.dir("data", 0o750);
    for (i, len) in [
        0usize,
        1,
        4095,
        4096,
        65_535,
        65_536,
        65_537,
        300_000,
        1 << 20,
    ]
    .iter()
    .enumerate()
    {
        l.file(
            &format!("data/f{i}-{len}"),
            noise(*len, i as u64 + 1),
            0o644,
        );
    }
    l.file("data/zeros", vec![0u8; 700_000], 0o600);
    l.entry(
        "bin/su",
        Kind::File(noise(10_000, 99)),
        Meta::mode(0o4755).owner(0, 0),
    );
    l.entry(
        "bin/sgid",
        Kind::File(b"#!/bin/sh\n".to_vec()),
        Meta::mode(0o2755).owner(0, 50),
    );
    l.symlink("bin/sh", "busybox");
    l.symlink("abs", "/etc/hostname");
    l.symlink("dangling", "nowhere/at/all");
    l.hardlink("bin/su-again", "bin/su");
    l.entry("dev/null", Kind::CharDevice(1, 3), Meta::mode(0o666));
    l.entry(
        "dev/tty5",
        Kind::CharDevice(4, 5),
        Meta::mode(0o620).owner(0, 5),
    );
    l.entry("run/pipe", Kind::Fifo, Meta::mode(0o600));
    l.entry(
        "xattrs/file",
        Kind::File(b"x".to_vec()),
        Meta::mode(0o644)
            .xattr("user.mime", b"text/plain")
            .xattr("user.empty", b"")
            .xattr("trusted.t", b"\x00\x01"),
    );
    let mut old = Meta::mode(0o644);
    old.mtime = 1;
    l.entry("times/epoch+1", Kind::File(b"old".to_vec()), old);
    let mut future = Meta::mode(0o644);
    future.mtime = 4_102_444_800; // 2100-01-01
    l.entry("times/y2100", Kind::File(b"new".to_vec()), future);
    l.entry(
        "home/user/.profile",
        Kind::File(b"PS1=$\n".to_vec()),
        Meta::mode(0o600).owner(1000, 1000),
    );
    l.dir("tmp", 0o1777);
    l.file("del/me", "bye", 0o644);
    l.file("del/keep", "stay", 0o644);
    l.file("opq/old", "hidden by upper", 0o644);
    l.file("sp ace/na\u{e9}me", "unicode and spaces", 0o644);
    l
}

/// An upper layer with whiteouts for the lower one.
pub fn upper_layer() -> LayerBuilder {
    let mut l = LayerBuilder::new();
    l.file("etc/hostname", "upper\n", 0o644);
    l.whiteout("del/me");
    l.opaque("opq");
    l.file("opq/new", "fresh", 0o644);
    l
}

/// What each path must look like, derived from the builder (last entry wins).
pub fn expected(l: &LayerBuilder) -> BTreeMap<String, Kind> {
    let mut m = BTreeMap::new();
    for e in l.entries() {
        m.insert(e.path.trim_end_matches('/').to_string(), e.kind.clone());
    }
    m
}

fn meta_of(l: &LayerBuilder, path: &str) -> Meta {
    l.entries()
        .iter()
        .rev()
        .find(|e| e.path.trim_end_matches('/') == path)
        .unwrap()
        .meta
        .clone()
}

fn xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::lgetxattr(p, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn xattr_names(p: &Path) -> BTreeSet<String> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut buf).unwrap_or(0);
    buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into())
        .collect()
}

/// All paths under `root`, relative, without following symlinks.
pub fn walk(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                stack.push(r.clone());
            }
            out.insert(r.to_string_lossy().into_owned());
        }
    }
    out
}

/// Compare every entry of `l` with what is mounted at `root`.
pub fn compare(l: &LayerBuilder, root: &Path) {
    let want = expected(l);
    for (path, kind) in &want {
        let name = Path::new(path)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let dir = Path::new(path).parent().unwrap();
        if name == ".wh..wh..opq" {
            let d = root.join(dir);
            assert!(
                !d.join(&name).exists(),
                "{path}: opaque marker must be hidden"
            );
            assert_eq!(
                xattr(&d, "trusted.overlay.opaque").as_deref(),
                Some(&b"y"[..]),
                "{path}"
            );
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let p = root.join(dir).join(hidden);
            let md = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert!(
                md.file_type().is_char_device() && md.rdev() == 0,
                "{path}: whiteout as 0/0 char device"
            );
            assert!(!root.join(path).exists(), "{path}: .wh. name must not show");
            continue;
        }
        let p = root.join(path);
        let md = std::fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{path}: {e}"));
        let meta = meta_of(l, path);
        match kind {
            Kind::Hardlink(target) => {
                let t = std::fs::symlink_metadata(root.join(target)).unwrap();
                assert_eq!(md.ino(), t.ino(), "{path}: hardlink shares the inode");
                assert!(md.nlink() >= 2, "{path}: nlink {}", md.nlink());
                continue;
            }
            Kind::Dir => assert!(md.is_dir(), "{path}: dir"),
            Kind::File(data) => {
                assert!(md.is_file(), "{path}: file");
                assert_eq!(md.len(), data.len() as u64, "{path}: size");
                let got = std::fs::read(&p).unwrap_or_else(|e| panic!("{path}: {e}"));
                assert!(got == *data, "{path}: content differs");
            }
            Kind::Symlink(t) => {
                assert!(md.file_type().is_symlink(), "{path}: symlink");
                assert_eq!(std::fs::read_link(&p).unwrap(), Path::new(t), "{path}");
                continue; // symlink modes and times are not meaningful
            }
            Kind::Fifo => assert!(md.file_type().is_fifo(), "{path}: fifo"),
            Kind::CharDevice(maj, min) => {
                assert!(md.file_type().is_char_device(), "{path}: char device");
                assert_eq!(md.rdev(), libc::makedev(*maj, *min), "{path}: rdev");
            }
        }
        assert_eq!(md.mode() & 0o7777, meta.mode & 0o7777, "{path}: mode");
        assert_eq!(
            (md.uid() as u64, md.gid() as u64),
            (meta.uid, meta.gid),
            "{path}: owner"
        );
        assert_eq!(md.mtime(), meta.mtime as i64, "{path}: mtime");
        let names: BTreeSet<String> = meta.xattrs.iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(xattr_names(&p), names, "{path}: xattr names");
        for (k, v) in &meta.xattrs {
            assert_eq!(
                xattr(&p, k).as_deref(),
                Some(v.as_slice()),
                "{path}: xattr {k}"
            );
        }
    }
    // Nothing extra: every mounted path is an entry, a parent of one, a
    // shown whiteout, or an eStargz landmark.
    let mut allowed: BTreeSet<String> = BTreeSet::new();
    for path in want.keys() {
        let p = Path::new(path);
        let name = p.file_name().unwrap().to_string_lossy();
        if name == ".wh..wh..opq" {
        } else if let Some(h) = name.strip_prefix(".wh.") {
            allowed.insert(p.parent().unwrap().join(h).to_string_lossy().into_owned());
        } else {
            allowed.insert(path.clone());
        }
        for a in p.ancestors().skip(1) {
            if !a.as_os_str().is_empty() {
                allowed.insert(a.to_string_lossy().into_owned());
            }
        }
    }
    for found in walk(root) {
        let landmark = found == ".prefetch.landmark" || found == ".no.prefetch.landmark";
        assert!(
            allowed.contains(&found) || landmark,
            "unexpected path {found}"
        );
    }
}

/// A runtime, a layer mounted from `source`, and the temp dir it is in.
pub struct Mounted {
    pub handle: Option<MountHandle>,
    pub layer: Arc<LazyLayer>,
    pub dir: tempfile::TempDir,
}

impl Mounted {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        drop(self.handle.take());
    }
}

pub fn mount_source(
    rt: &tokio::runtime::Runtime,
    source: Arc<dyn RangeSource>,
    blob: &Blob,
    cfg: &Config,
    cache: Arc<ChunkCache>,
) -> Mounted {
    let layer = rt
        .block_on(LazyLayer::open(
            source,
            &blob.digest,
            Some(&blob.toc_digest),
            cfg,
            cache,
            rt.handle().clone(),
        ))
        .expect("open layer");
    let dir = tempfile::tempdir().unwrap();
    let handle = lazyfs::mount(layer.clone(), dir.path()).expect("mount");
    Mounted {
        handle: Some(handle),
        layer,
        dir,
    }
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Overlay (read-only, no upper dir) of `lowers`, top first; unmounted on drop.
pub struct Overlay {
    pub dir: tempfile::TempDir,
}

impl Overlay {
    pub fn mount(lowers: &[&Path]) -> Overlay {
        let dir = tempfile::tempdir().unwrap();
        let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let data = format!("lowerdir={}", lower.join(":"));
        let data = std::ffi::CString::new(data).unwrap();
        rustix::mount::mount(
            "overlay",
            dir.path(),
            "overlay",
            rustix::mount::MountFlags::RDONLY,
            data.as_c_str(),
        )
        .expect("mount overlay");
        Overlay { dir }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.dir.path(), rustix::mount::UnmountFlags::DETACH);
    }
}
