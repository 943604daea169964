//! Real FUSE mounts (root only) of layers built as index nodes: what the
//! kernel shows, whiteouts, the state file, faults, unmounting.

use crate::testutil::{FakeSource, TestLayer};
use crate::{mount, ChunkCache, Config, LazyLayer, MountHandle};
use estargz::index::NodeKind;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

/// A mounted test layer; fields drop in order: unmount, then the runtime.
struct Mounted {
    handle: Option<MountHandle>,
    src: Arc<FakeSource>,
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
}

impl Mounted {
    fn new(t: &TestLayer, cfg: Config) -> Option<Mounted> {
        Mounted::with_cache(t, cfg, Arc::new(ChunkCache::memory_only(64 << 20)))
    }

    fn with_cache(t: &TestLayer, cfg: Config, cache: Arc<ChunkCache>) -> Option<Mounted> {
        if !e2e::require_root_tools(&[]) {
            return None;
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let src = Arc::new(FakeSource::new(t.blob.clone()));
        let layer = LazyLayer::from_nodes(
            src.clone(),
            DIGEST,
            t.nodes.clone(),
            None,
            &cfg,
            cache,
            rt.handle().clone(),
        );
        let handle = mount(layer, dir.path()).expect("mount");
        Some(Mounted {
            handle: Some(handle),
            src,
            rt,
            dir,
        })
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn counters(&self) -> &crate::fuse::Counters {
        self.handle.as_ref().unwrap().counters()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        drop(self.handle.take());
        let _ = &self.rt;
    }
}

fn cfg() -> Config {
    Config {
        neighbour_bytes: 0,
        fetch_timeout_sec: 2,
        no_background_fetch: true,
        // Each test controls what is fetched when.
        blob_readahead_bytes: 0,
        ..Config::default()
    }
}

fn sample() -> TestLayer {
    let mut t = TestLayer::new(4096);
    t.dir("etc", 0o755);
    t.file("etc/hosts", b"127.0.0.1 localhost\n", 0o644);
    t.file("bin/tool", &data(100_000, 1), 0o4755);
    t.edit("bin/tool", |n| {
        n.uid = 1000;
        n.gid = 2000;
        n.mtime = 1_234_567_890;
    });
    t.file("empty", b"", 0o600);
    t.symlink("bin/link", "tool");
    t.hardlink("bin/hard", "bin/tool");
    t.special("dev/null", NodeKind::Char, 1, 3);
    t.special("dev/sda", NodeKind::Block, 8, 0);
    t.special("run/fifo", NodeKind::Fifo, 0, 0);
    t.edit("etc/hosts", |n| {
        n.xattrs.insert("user.note".into(), b"hello".to_vec());
    });
    // Whiteouts: a deleted file and an opaque directory.
    t.file("var/.wh.gone", b"", 0o644);
    t.file("opq/.wh..wh..opq", b"", 0o644);
    t.file("opq/kept", b"k", 0o644);
    t
}

fn lgetxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(p, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

fn llistxattr(p: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 1024];
    let n = rustix::fs::llistxattr(p, &mut buf).unwrap();
    buf[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into())
        .collect()
}

#[test]
fn mount_shows_files_as_the_index_says() {
    let Some(m) = Mounted::new(&sample(), cfg()) else {
        return;
    };
    let tool = std::fs::symlink_metadata(m.p("bin/tool")).unwrap();
    assert!(tool.is_file());
    assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid bit kept");
    assert_eq!((tool.uid(), tool.gid()), (1000, 2000));
    assert_eq!(tool.mtime(), 1_234_567_890);
    assert_eq!(tool.len(), 100_000);
    assert_eq!(tool.nlink(), 2);
    let hard = std::fs::symlink_metadata(m.p("bin/hard")).unwrap();
    assert_eq!(hard.ino(), tool.ino(), "hardlinks share an inode");
    assert_eq!(
        std::fs::read_link(m.p("bin/link")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(std::fs::read(m.p("bin/link")).unwrap(), data(100_000, 1));
    assert_eq!(
        std::fs::read(m.p("etc/hosts")).unwrap(),
        b"127.0.0.1 localhost\n"
    );
    assert_eq!(std::fs::read(m.p("empty")).unwrap(), b"");
    let null = std::fs::symlink_metadata(m.p("dev/null")).unwrap();
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    let sda = std::fs::symlink_metadata(m.p("dev/sda")).unwrap();
    assert!(sda.file_type().is_block_device());
    assert_eq!(sda.rdev(), libc::makedev(8, 0));
    assert!(std::fs::symlink_metadata(m.p("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        lgetxattr(&m.p("etc/hosts"), "user.note").as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(llistxattr(&m.p("etc/hosts")), vec!["user.note".to_string()]);
    assert!(lgetxattr(&m.p("etc/hosts"), "user.none").is_none());
    // Directories: nlink counts subdirectories; root is mode 755.
    let root = std::fs::metadata(m.dir.path()).unwrap();
    assert_eq!(root.permissions().mode() & 0o7777, 0o755);
    let subdirs = ["bin", "dev", "etc", "opq", "run", "var"].len() as u64;
    assert_eq!(root.nlink(), 2 + subdirs);
    // Writing is refused.
    assert!(std::fs::write(m.p("etc/hosts"), b"x").is_err());
    assert!(std::fs::create_dir(m.p("newdir")).is_err());
    assert!(!m.p("nope").exists());
}

#[test]
fn whiteouts_look_like_overlayfs_ones() {
    let Some(m) = Mounted::new(&sample(), cfg()) else {
        return;
    };
    let names: Vec<String> = std::fs::read_dir(m.p("var"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec!["gone"]);
    let gone = std::fs::symlink_metadata(m.p("var/gone")).unwrap();
    assert!(gone.file_type().is_char_device());
    assert_eq!(gone.rdev(), 0);
    let opq: Vec<String> = std::fs::read_dir(m.p("opq"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(opq, vec!["kept"]);
    assert_eq!(
        lgetxattr(&m.p("opq"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(llistxattr(&m.p("opq")).contains(&"trusted.overlay.opaque".to_string()));
    assert!(lgetxattr(&m.p("var"), "trusted.overlay.opaque").is_none());
}

#[test]
fn state_file_is_hidden_but_readable() {
    let Some(m) = Mounted::new(&sample(), cfg()) else {
        return;
    };
    let root: Vec<String> = std::fs::read_dir(m.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!root.iter().any(|n| n == ".stargz-snapshotter"));
    let path = m.p(&format!(".stargz-snapshotter/{DIGEST}.json"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["digest"], DIGEST);
    assert_eq!(v["fetchedSize"], 0);
    std::fs::read(m.p("bin/tool")).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(v["fetchedSize"].as_u64().unwrap() > 0, "{v}");
    assert!(v["fetchedPercent"].as_f64().unwrap() > 50.0, "{v}");
}

#[test]
fn concurrent_readers_see_the_right_bytes() {
    let mut t = TestLayer::new(64 << 10);
    for k in 0..8u8 {
        t.file(&format!("f{k}"), &data(1 << 20, k), 0o644);
    }
    let Some(m) = Mounted::new(&t, cfg()) else {
        return;
    };
    m.src.delay_ms.store(20, SeqCst);
    let threads: Vec<_> = (0..8u8)
        .map(|k| {
            let p = m.p(&format!("f{}", k % 4));
            std::thread::spawn(move || (k, std::fs::read(p).unwrap()))
        })
        .collect();
    for th in threads {
        let (k, got) = th.join().unwrap();
        assert!(got == data(1 << 20, k % 4), "file f{}", k % 4);
    }
}

#[test]
fn a_slow_fetch_does_not_block_cached_readers() {
    let mut t = TestLayer::new(4096);
    t.file("cached", &data(10_000, 1), 0o644);
    t.file("slow", &data(10_000, 2), 0o644);
    let Some(m) = Mounted::new(
        &t,
        Config {
            neighbour_bytes: 0,
            fetch_timeout_sec: 2,
            fuse_threads: 1,
            ..cfg()
        },
    ) else {
        return;
    };
    std::fs::read(m.p("cached")).unwrap();
    m.src.stall.store(true, SeqCst);
    let slow = m.p("slow");
    let th = std::thread::spawn(move || std::fs::read(slow));
    std::thread::sleep(Duration::from_millis(200));
    // One FUSE thread, stalled fetch in flight: cached data still comes at once.
    let t0 = Instant::now();
    for _ in 0..20 {
        assert_eq!(std::fs::read(m.p("cached")).unwrap(), data(10_000, 1));
    }
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    // (The kernel may retry a failed readahead once with a plain read.)
    let r = th.join().unwrap();
    assert_eq!(
        r.unwrap_err().raw_os_error(),
        Some(libc::EIO),
        "the stalled read fails at the timeout"
    );
    m.src.stall.store(false, SeqCst);
    // Works again once requests still stalled in flight have timed out.
    let t0 = Instant::now();
    let mut r = std::fs::read(m.p("slow"));
    while r.is_err() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(100));
        r = std::fs::read(m.p("slow"));
    }
    assert_eq!(
        r.unwrap(),
        data(10_000, 2),
        "and works once the source does"
    );
}

#[test]
fn unavailable_source_gives_eio_within_the_bound_and_recovers() {
    let Some(m) = Mounted::new(&sample(), cfg()) else {
        return;
    };
    std::fs::read(m.p("etc/hosts")).unwrap();
    m.src.fail.store(true, SeqCst);
    assert!(
        std::fs::read(m.p("etc/hosts")).is_ok(),
        "cached read goes on"
    );
    let t0 = Instant::now();
    let err = std::fs::read(m.p("bin/tool")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    assert!(t0.elapsed() < Duration::from_secs(3));
    m.src.fail.store(false, SeqCst);
    assert_eq!(std::fs::read(m.p("bin/tool")).unwrap(), data(100_000, 1));
}

#[test]
fn corrupted_chunk_gives_eio() {
    let t = sample();
    let tool = &t.nodes[t.id("bin/tool") as usize];
    let at = tool.chunks[3].blob_offset + 20;
    let Some(m) = Mounted::new(&t, cfg()) else {
        return;
    };
    *m.src.corrupt_at.lock() = Some(at);
    let mut f = std::fs::File::open(m.p("bin/tool")).unwrap();
    let mut buf = vec![0u8; 100];
    use std::os::unix::fs::FileExt;
    assert!(f.read_exact_at(&mut buf, 0).is_ok(), "good chunk is served");
    let err = f.read_exact_at(&mut buf, 3 * 4096 + 10).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    use std::io::Read;
    assert!(f.read_to_end(&mut Vec::new()).is_err());
}

#[test]
fn unmount_on_drop_and_busy_mounts_are_detached() {
    let Some(mut m) = Mounted::new(&sample(), cfg()) else {
        return;
    };
    let mp = m.handle.as_ref().unwrap().mountpoint().to_path_buf();
    assert!(m.handle.as_ref().unwrap().is_alive());
    assert!(crate::mounts::is_fuse_mounted(&mp));
    // An open file keeps it busy: unmount detaches and the file still reads.
    let mut f = std::fs::File::open(m.p("bin/tool")).unwrap();
    m.handle.take().unwrap().unmount().unwrap();
    assert!(!crate::mounts::is_fuse_mounted(&mp));
    let mut buf = Vec::new();
    use std::io::Read;
    f.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, data(100_000, 1));
}

#[test]
fn dead_mounts_are_found_and_cleared() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let dead = base.path().join("dead");
    std::fs::create_dir(&dead).unwrap();
    // A FUSE mount whose server is gone: mount, then close the device.
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .unwrap();
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0",
        std::os::fd::AsRawFd::as_raw_fd(&dev)
    );
    let data = std::ffi::CString::new(data).unwrap();
    rustix::mount::mount(
        "test",
        &dead,
        "fuse.rsnap",
        rustix::mount::MountFlags::RDONLY,
        data.as_c_str(),
    )
    .unwrap();
    drop(dev);
    let err = std::fs::metadata(&dead).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTCONN));
    // A live one next to it is left alone.
    let Some(live) = Mounted::new(&sample(), cfg()) else {
        return;
    };
    let base_path = base.path().canonicalize().unwrap();
    let cleared = crate::cleanup_dead_mounts(&base_path).unwrap();
    assert_eq!(cleared, vec![base_path.join("dead")]);
    assert!(!crate::mounts::is_fuse_mounted(&base_path.join("dead")));
    assert!(std::fs::metadata(&dead).unwrap().is_dir());
    assert!(crate::cleanup_dead_mounts(live.dir.path())
        .unwrap()
        .is_empty());
    assert!(live.handle.as_ref().unwrap().is_alive());
}

#[test]
fn big_directories_list_completely() {
    let mut t = TestLayer::new(4096);
    for k in 0..5000 {
        t.file(&format!("many/file-with-a-longish-name-{k:05}"), b"", 0o644);
    }
    let Some(m) = Mounted::new(&t, cfg()) else {
        return;
    };
    let mut names: Vec<String> = std::fs::read_dir(m.p("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let want: Vec<String> = (0..5000)
        .map(|k| format!("file-with-a-longish-name-{k:05}"))
        .collect();
    assert_eq!(names, want);
    // And `find`-style stat of each (lookups, or attributes from readdirplus).
    for n in names.iter().step_by(97) {
        assert!(std::fs::symlink_metadata(m.p("many").join(n))
            .unwrap()
            .is_file());
    }
}

#[test]
fn landmarks_are_hidden_and_missing_names_are_cached_by_the_kernel() {
    let mut t = sample();
    t.file(".no.prefetch.landmark", b"\x0f", 0o644);
    t.file(".prefetch.landmark", b"\x0f", 0o644);
    t.file("etc/.prefetch.landmark", b"not a landmark here", 0o644);
    let Some(m) = Mounted::new(&t, cfg()) else {
        return;
    };
    let root: Vec<String> = std::fs::read_dir(m.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(!root.iter().any(|n| n.contains("landmark")), "{root:?}");
    assert!(!m.p(".prefetch.landmark").exists());
    assert!(!m.p(".no.prefetch.landmark").exists());
    assert!(m.p("etc/.prefetch.landmark").exists());

    // A missing name is asked once, then answered by the kernel (overlayfs
    // asks every lower layer for every name it looks up).
    let lookups = || m.counters().lookups.load(SeqCst);
    assert!(!m.p("etc/nothing-here").exists());
    let after_first = lookups();
    for _ in 0..5 {
        assert!(!m.p("etc/nothing-here").exists());
        assert!(!m.p(".prefetch.landmark").exists());
    }
    assert_eq!(lookups(), after_first, "negative entries not cached");
}

/// A mount with a disk cache and `passthrough` as given; the cache dir.
fn passthrough_mount(t: &TestLayer, on: bool) -> Option<(Mounted, tempfile::TempDir)> {
    let cache_dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        neighbour_bytes: 0,
        passthrough: on,
        cache_dir: Some(cache_dir.path().to_path_buf()),
        ..cfg()
    };
    let cache = Arc::new(ChunkCache::new(&cfg.cache_config()).unwrap());
    let m = Mounted::with_cache(t, cfg, cache)?;
    Some((m, cache_dir))
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fully_cached_files_are_passed_through_to_the_kernel() {
    use std::io::Read;
    let mut t = TestLayer::new(64 << 10);
    let big = data(3 << 20, 5);
    t.file("big", &big, 0o644);
    t.file("other", &data(200_000, 6), 0o644);
    let Some((m, cache_dir)) = passthrough_mount(&t, true) else {
        return;
    };
    let hex = crate::testutil::sha(&big);
    let copy = cache_dir
        .path()
        .join("files")
        .join(hex.trim_start_matches("sha256:"));
    let reads = || m.counters().reads.load(SeqCst);
    let through = || m.counters().passthrough_opens.load(SeqCst);

    // First open: nothing cached, read through the daemon. A second open
    // while it is live stays cached even once a copy exists: the kernel
    // refuses an inode open both ways at once.
    let mut first = std::fs::File::open(m.p("big")).unwrap();
    let mut got = Vec::new();
    first.read_to_end(&mut got).unwrap();
    assert!(got == big);
    assert!(reads() > 0);
    let mut second = std::fs::File::open(m.p("big")).unwrap();
    wait_for("the file to be materialized", || copy.exists());
    let mut third = std::fs::File::open(m.p("big")).unwrap();
    assert_eq!(through(), 0);
    let mut got = Vec::new();
    third.read_to_end(&mut got).unwrap();
    second.read_to_end(&mut Vec::new()).unwrap();
    assert!(got == big);
    let released = m.counters().releases.load(SeqCst);
    drop((first, second, third));
    // Closing returns before the kernel's RELEASEs reach us; until they
    // have, a normal open is live and the next open stays normal.
    wait_for("the three releases", || {
        m.counters().releases.load(SeqCst) >= released + 3
    });

    // Now every open is passed through: the kernel reads the copy, no read
    // reaches us, and the bytes are the same.
    let before = reads();
    for _ in 0..2 {
        assert!(std::fs::read(m.p("big")).unwrap() == big);
    }
    assert_eq!(through(), 2);
    assert_eq!(
        reads(),
        before,
        "reads of a passed-through file reached the daemon"
    );

    // As a container sees it: overlayfs stacks on the mount (passthrough
    // makes the mount stacked itself; one more level is within the limit).
    let ovl = tempfile::tempdir().unwrap();
    let (upper, work, merged) = (
        ovl.path().join("u"),
        ovl.path().join("w"),
        ovl.path().join("m"),
    );
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        m.dir.path().display(),
        upper.display(),
        work.display()
    );
    let opts = std::ffi::CString::new(opts).unwrap();
    rustix::mount::mount(
        "overlay",
        &merged,
        "overlay",
        rustix::mount::MountFlags::empty(),
        opts.as_c_str(),
    )
    .expect("overlayfs over a passthrough mount");
    let via_overlay = std::fs::read(merged.join("big"));
    let _ = rustix::mount::unmount(&merged, rustix::mount::UnmountFlags::DETACH);
    assert!(via_overlay.unwrap() == big);
    assert_eq!(through(), 3);
    assert_eq!(reads(), before);
    // A file never read stays on the daemon's path.
    assert_eq!(std::fs::read(m.p("other")).unwrap(), data(200_000, 6));
    assert!(reads() > before);
}

#[test]
fn without_passthrough_reads_stay_on_the_daemon() {
    let mut t = TestLayer::new(64 << 10);
    let big = data(1 << 20, 7);
    t.file("big", &big, 0o644);
    let Some((m, cache_dir)) = passthrough_mount(&t, false) else {
        return;
    };
    assert!(std::fs::read(m.p("big")).unwrap() == big);
    std::thread::sleep(Duration::from_millis(200));
    assert!(std::fs::read(m.p("big")).unwrap() == big);
    assert_eq!(m.counters().passthrough_opens.load(SeqCst), 0);
    assert!(!cache_dir.path().join("files").exists());
}
