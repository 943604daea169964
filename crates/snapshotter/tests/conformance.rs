//! The conformance suite in-process against the library, plus restart and
//! crash-recovery behaviour of the store and layout.

use snapshotter::layout::mounts_under;
use snapshotter::{Kind, NoRemoteFs, Snapshotter};
use snapshotter_testsuite::{self as testsuite, labels, Api};
use std::sync::Arc;

async fn open(root: &std::path::Path) -> Snapshotter {
    Snapshotter::open(root, Arc::new(NoRemoteFs))
        .await
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_in_process() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("root")).await;
    testsuite::run_all(&s, &dir.path().join("mnt")).await;
    assert!(
        s.list(&[]).await.unwrap().is_empty(),
        "the suite removes what it made"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path().join("root/snapshots"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "no directories left: {left:?}");
    assert!(mounts_under(dir.path()).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    {
        let s = open(&root).await;
        Api::prepare(&s, "a", "", &labels(&[("x", "1")]))
            .await
            .unwrap();
        Api::commit(&s, "A", "a", &labels(&[("y", "2")]))
            .await
            .unwrap();
        Api::prepare(&s, "b", "A", &labels(&[])).await.unwrap();
    }
    let s = open(&root).await;
    let a = s.stat("A").await.unwrap();
    assert_eq!((a.kind, a.labels), (Kind::Committed, labels(&[("y", "2")])));
    assert_eq!(s.stat("b").await.unwrap().parent, "A");
    s.mounts("b").await.expect("directories kept");
    // Ids are never reused: a new snapshot gets a fresh directory.
    Api::prepare(&s, "c", "", &labels(&[])).await.unwrap();
    let dirs = std::fs::read_dir(root.join("snapshots")).unwrap().count();
    assert_eq!(dirs, 3);
}

/// What a crash can leave: a directory being created (`new-*`), one being
/// removed (`rm-*`) and one renamed into place whose transaction never
/// committed. Start-up removes all three and keeps live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_removes_what_a_crash_left() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    {
        let s = open(&root).await;
        Api::prepare(&s, "live", "", &labels(&[])).await.unwrap();
    }
    let snaps = root.join("snapshots");
    for d in ["new-999999-0/fs", "rm-7/fs/sub", "42/fs"] {
        std::fs::create_dir_all(snaps.join(d)).unwrap();
    }
    std::fs::write(snaps.join("42/fs/file"), "x").unwrap();
    let s = open(&root).await;
    let mut left: Vec<String> = std::fs::read_dir(&snaps)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["1"], "only the live snapshot's directory remains");
    s.mounts("live").await.unwrap();
}

/// Cleanup at run time never removes a directory through a mount: an
/// orphan with something mounted inside is detached first, so the mount's
/// source survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_never_deletes_through_a_mount() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = open(&dir.path().join("root")).await;
    let src = dir.path().join("precious");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("keep"), "me").unwrap();
    let orphan = dir.path().join("root/snapshots/77/fs");
    std::fs::create_dir_all(&orphan).unwrap();
    rustix::mount::mount_bind(&src, &orphan).unwrap();
    s.cleanup().await.unwrap();
    assert!(!orphan.exists());
    assert_eq!(std::fs::read_to_string(src.join("keep")).unwrap(), "me");
    assert!(mounts_under(dir.path()).unwrap().is_empty());
}

/// Creates, commits and removes from many tasks while Cleanup runs in a
/// loop: Cleanup must never take a directory a record points at.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_and_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(open(&dir.path().join("root")).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cleaner = {
        let (s, stop) = (s.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                s.cleanup().await.unwrap();
                tokio::task::yield_now().await;
            }
        })
    };
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..15 {
                let (k, n) = (format!("k{t}-{i}"), format!("n{t}-{i}"));
                Api::prepare(&*s, &k, "", &labels(&[])).await.unwrap();
                Api::commit(&*s, &n, &k, &labels(&[])).await.unwrap();
                if i % 3 == 0 {
                    Api::remove(&*s, &n).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    cleaner.await.unwrap();
    let all = s.list(&[]).await.unwrap();
    assert_eq!(all.len(), 8 * 10);
    for i in &all {
        let v = Api::view(&*s, &format!("v-{}", i.name), &i.name, &labels(&[]))
            .await
            .unwrap();
        assert!(
            std::path::Path::new(&v[0].source).is_dir(),
            "directory of {} kept",
            i.name
        );
    }
}
