//! A live FUSE connection handed from one session to another (root only):
//! what the next daemon process does, in one process. Reads issued while
//! nobody serves wait in the kernel and are answered by the new session.

use crate::testutil::{FakeSource, TestLayer};
use crate::{adopt, mount, ChunkCache, Config, LazyLayer};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn layer(t: &TestLayer, rt: &tokio::runtime::Runtime) -> Arc<LazyLayer> {
    LazyLayer::from_nodes(
        Arc::new(FakeSource::new(t.blob.clone())),
        DIGEST,
        t.nodes.clone(),
        None,
        &Config::default(),
        Arc::new(ChunkCache::memory_only(64 << 20)),
        rt.handle().clone(),
    )
}

#[test]
fn a_stopped_session_hands_its_connection_to_a_new_one_without_failed_reads() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let data: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    let mut t = TestLayer::new(1 << 16);
    t.dir("d", 0o755);
    t.file("d/f", &data, 0o644);
    let dir = tempfile::tempdir().unwrap();
    let first = mount(layer(&t, &rt), dir.path()).expect("mount");
    let path = dir.path().join("d/f");
    let ino_before = std::fs::metadata(&path).unwrap();
    // An open file across the handover: its handle is the old process's.
    let mut open = std::fs::File::open(&path).unwrap();
    // The holder's dup of the anchor keeps the connection alive.
    let kept = first.anchor().try_clone_to_owned().unwrap();
    let proto = first.proto();
    assert!(proto.is_some_and(|p| p.0 == 7), "{proto:?}");
    first.stop_serving();
    assert_eq!(crate::wait_drained(Duration::from_secs(5)), 0);

    // A read while nobody serves waits (not fails) ...
    let reader = {
        let p = path.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            (std::fs::read(p), t.elapsed())
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !reader.is_finished(),
        "a read failed or finished without a server"
    );
    // ... and the new session answers it, without INIT.
    let second = adopt(layer(&t, &rt), dir.path(), kept, proto).expect("adopt");
    let (got, waited) = reader.join().unwrap();
    assert_eq!(got.expect("read across the handover"), data);
    assert!(waited >= Duration::from_millis(500));
    // Same inode numbers; the old open file reads on.
    let after = std::fs::metadata(&path).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(ino_before.ino(), after.ino());
    let mut buf = Vec::new();
    use std::io::Read;
    open.read_to_end(&mut buf).unwrap();
    assert_eq!(buf, data);
    assert!(second.is_alive());
    let _ = second.anchor().as_fd();
    second.unmount().unwrap();
}
