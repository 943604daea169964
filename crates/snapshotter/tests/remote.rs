//! The remote-snapshot protocol with fake `RemoteFs` implementations: one
//! bind-mounts a prepared directory read-only (remote snapshots really work,
//! no FUSE needed), others always fail (fallback). Needs root for mounts.

use async_trait::async_trait;
use snapshotter::layout::{detach_mounts_under, mounts_under};
use snapshotter::remote::{LABEL_REMOTE, LABEL_REMOTE_VALUE, LABEL_TARGET_REF};
use snapshotter::{Kind, Labels, MetricsSnapshot, RemoteFs, RemoteFsError, Snapshotter};
use snapshotter_testsuite::{self as testsuite, labels, mount_all, Api, Code};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

const DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";

/// Serves "layers" from local directories keyed by the layer-digest label.
struct BindFs {
    sources: HashMap<String, PathBuf>,
    available: AtomicBool,
    mounts: AtomicU64,
    unmounts: AtomicU64,
}

impl BindFs {
    fn new(sources: &[(&str, &Path)]) -> Arc<BindFs> {
        Arc::new(BindFs {
            sources: sources
                .iter()
                .map(|(d, p)| (d.to_string(), p.to_path_buf()))
                .collect(),
            available: AtomicBool::new(true),
            mounts: AtomicU64::new(0),
            unmounts: AtomicU64::new(0),
        })
    }
}

#[async_trait]
impl RemoteFs for BindFs {
    async fn mount(&self, mp: &Path, l: &Labels) -> Result<(), RemoteFsError> {
        if !self.available.load(Ordering::SeqCst) {
            return Err(RemoteFsError::Unavailable("registry down (fake)".into()));
        }
        let d = l
            .get(DIGEST)
            .ok_or_else(|| RemoteFsError::NotRemote("no digest".into()))?;
        let src = self
            .sources
            .get(d)
            .ok_or_else(|| RemoteFsError::NotRemote(format!("unknown {d}").into()))?;
        rustix::mount::mount_bind(src, mp).map_err(|e| RemoteFsError::Other(e.into()))?;
        let ro = rustix::mount::MountFlags::BIND | rustix::mount::MountFlags::RDONLY;
        rustix::mount::mount_remount(mp, ro, "").map_err(|e| RemoteFsError::Other(e.into()))?;
        self.mounts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn check(&self, mp: &Path, _: &Labels) -> Result<(), RemoteFsError> {
        if mounts_under(mp).unwrap().iter().any(|m| m == mp) {
            Ok(())
        } else {
            Err(RemoteFsError::Other("not mounted".into()))
        }
    }
    async fn unmount(&self, mp: &Path) -> Result<(), RemoteFsError> {
        self.unmounts.fetch_add(1, Ordering::SeqCst);
        rustix::mount::unmount(mp, rustix::mount::UnmountFlags::DETACH)
            .map_err(|e| RemoteFsError::Other(e.into()))
    }
}

/// Fails every mount with the error `make` builds.
struct FailingFs(fn() -> RemoteFsError);

#[async_trait]
impl RemoteFs for FailingFs {
    async fn mount(&self, _: &Path, _: &Labels) -> Result<(), RemoteFsError> {
        Err((self.0)())
    }
    async fn check(&self, _: &Path, _: &Labels) -> Result<(), RemoteFsError> {
        Err((self.0)())
    }
    async fn unmount(&self, _: &Path) -> Result<(), RemoteFsError> {
        Ok(())
    }
}

/// A scratch dir with two prepared "layers"; detaches every mount in it on
/// drop, before the directory is deleted, even when a test fails.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        for (l, f) in [("layerA", "a.txt"), ("layerB", "b.txt")] {
            std::fs::create_dir(dir.path().join(l)).unwrap();
            std::fs::write(dir.path().join(l).join(f), l).unwrap();
        }
        Scratch { dir }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }
    fn root(&self) -> PathBuf {
        self.p("root")
    }
    fn fs(&self) -> Arc<BindFs> {
        BindFs::new(&[
            ("sha256:A", &self.p("layerA")),
            ("sha256:B", &self.p("layerB")),
        ])
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = detach_mounts_under(self.dir.path());
    }
}

fn remote_labels(target: &str, digest: &str) -> Labels {
    labels(&[
        (LABEL_TARGET_REF, target),
        (DIGEST, digest),
        ("containerd.io/snapshot/cri.image-ref", "r/img:1"),
    ])
}

fn metrics(s: &Snapshotter) -> MetricsSnapshot {
    s.metrics().snapshot()
}

/// Prepares the two-layer remote chain chain-A <- chain-B.
async fn remote_chain(s: &Snapshotter) {
    let r = Api::prepare(s, "extract-A", "", &remote_labels("chain-A", "sha256:A")).await;
    assert_eq!(
        r.map_err(|e| e.0),
        Err(Code::AlreadyExists),
        "remote prepare answers AlreadyExists"
    );
    let r = Api::prepare(
        s,
        "extract-B",
        "chain-A",
        &remote_labels("chain-B", "sha256:B"),
    )
    .await;
    assert_eq!(r.map_err(|e| e.0), Err(Code::AlreadyExists));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_both_fakes() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let sc = Scratch::new();
    let s = Snapshotter::open(&sc.p("r1"), sc.fs()).await.unwrap();
    testsuite::run_all(&s, &sc.p("m1")).await;
    let s = Snapshotter::open(
        &sc.p("r2"),
        Arc::new(FailingFs(|| RemoteFsError::Unavailable("x".into()))),
    )
    .await
    .unwrap();
    testsuite::run_all(&s, &sc.p("m2")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_layers_are_committed_mounted_and_stacked() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let sc = Scratch::new();
    let fs = sc.fs();
    let s = Snapshotter::open(&sc.root(), fs.clone()).await.unwrap();
    remote_chain(&s).await;
    assert_eq!(metrics(&s).remote_mounts, 2);
    expect_missing(&s, "extract-A").await;
    let a = s.stat("chain-A").await.unwrap();
    assert_eq!(a.kind, Kind::Committed);
    assert_eq!(
        a.labels.get(LABEL_REMOTE).map(String::as_str),
        Some(LABEL_REMOTE_VALUE)
    );
    assert_eq!(
        a.labels.get(DIGEST).map(String::as_str),
        Some("sha256:A"),
        "prepare labels kept"
    );
    assert_eq!(s.stat("chain-B").await.unwrap().parent, "chain-A");
    assert_eq!(
        s.usage("chain-A").await.unwrap().size,
        0,
        "remote layers are not walked"
    );

    // A second unpack of the same layer finds the target and mounts nothing.
    let r = Api::prepare(&s, "extract-A2", "", &remote_labels("chain-A", "sha256:A")).await;
    assert_eq!(r.map_err(|e| e.0), Err(Code::AlreadyExists));
    assert_eq!(fs.mounts.load(Ordering::SeqCst), 2);

    let m = Api::prepare(&s, "ctr", "chain-B", &Labels::new())
        .await
        .unwrap();
    let g = mount_all(&m, &mountpoint(&sc, "ctr")).unwrap();
    assert_eq!(
        std::fs::read_to_string(g.path().join("a.txt")).unwrap(),
        "layerA"
    );
    assert_eq!(
        std::fs::read_to_string(g.path().join("b.txt")).unwrap(),
        "layerB"
    );
    std::fs::write(g.path().join("a.txt"), "changed in the container").unwrap();
    drop(g);
    assert_eq!(
        std::fs::read_to_string(sc.p("layerA/a.txt")).unwrap(),
        "layerA",
        "layers are read-only"
    );

    let r = Api::remove(&s, "chain-B").await;
    assert_eq!(r.map_err(|e| e.0), Err(Code::FailedPrecondition));
    assert!(
        s.mounts("ctr").await.is_ok(),
        "a refused remove leaves the layer mounted"
    );
    for k in ["ctr", "chain-B", "chain-A"] {
        Api::remove(&s, k).await.unwrap();
    }
    assert_eq!(fs.unmounts.load(Ordering::SeqCst), 2);
    assert!(mounts_under(&sc.root()).unwrap().is_empty());
    assert_eq!(
        std::fs::read_to_string(sc.p("layerB/b.txt")).unwrap(),
        "layerB",
        "removal never deletes through a mount"
    );
}

async fn expect_missing(s: &Snapshotter, key: &str) {
    assert_eq!(
        Api::stat(s, key).await.map_err(|e| e.0).err(),
        Some(Code::NotFound),
        "{key}"
    );
}

fn mountpoint(sc: &Scratch, name: &str) -> PathBuf {
    let p = sc.p("mnt").join(name);
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_fall_back_to_ordinary_snapshots_and_are_counted() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let sc = Scratch::new();
    type Case = (fn() -> RemoteFsError, fn(&MetricsSnapshot) -> u64);
    let cases: [Case; 3] = [
        (
            || RemoteFsError::NotRemote("not estargz".into()),
            |m| m.fallback_not_remote,
        ),
        (
            || RemoteFsError::Unavailable("401".into()),
            |m| m.fallback_unavailable,
        ),
        (|| RemoteFsError::Other("boom".into()), |m| m.fallback_other),
    ];
    for (i, (err, counter)) in cases.into_iter().enumerate() {
        let s = Snapshotter::open(&sc.p(&format!("r{i}")), Arc::new(FailingFs(err)))
            .await
            .unwrap();
        let m = Api::prepare(&s, "extract", "", &remote_labels("chain-A", "sha256:A"))
            .await
            .expect("fallback");
        assert_eq!(m[0].fs_type, "bind");
        assert_eq!(counter(&metrics(&s)), 1);
        assert_eq!(metrics(&s).remote_mounts, 0);
        // containerd then applies the layer and commits it itself.
        let g = mount_all(&m, &mountpoint(&sc, &format!("x{i}"))).unwrap();
        std::fs::write(g.path().join("f"), "applied").unwrap();
        drop(g);
        Api::commit(&s, "chain-A", "extract", &Labels::new())
            .await
            .unwrap();
        let a = s.stat("chain-A").await.unwrap();
        assert!(
            !a.labels.contains_key(LABEL_REMOTE),
            "an ordinary layer is not marked remote"
        );
    }
    // A layer the fake does not know is NotRemote even on a working fs.
    let s = Snapshotter::open(&sc.p("r9"), sc.fs()).await.unwrap();
    Api::prepare(
        &s,
        "extract",
        "",
        &remote_labels("chain-X", "sha256:unknown"),
    )
    .await
    .expect("fallback");
    assert_eq!(metrics(&s).fallback_not_remote, 1);
    // Without the image-fact labels a target ref alone is an ordinary prepare.
    Api::prepare(&s, "plain", "", &labels(&[(LABEL_TARGET_REF, "chain-Y")]))
        .await
        .unwrap();
    assert_eq!(metrics(&s).fallback_not_remote, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_layers_are_refreshed_or_reported_unavailable() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let sc = Scratch::new();
    let fs = sc.fs();
    let s = Snapshotter::open(&sc.root(), fs.clone()).await.unwrap();
    remote_chain(&s).await;
    let a_mp = mounts_under(&sc.root())
        .unwrap()
        .into_iter()
        .find(|m| m.join("a.txt").exists())
        .expect("chain-A mounted");

    // The layer dies behind our back; the next Prepare notices and remounts.
    rustix::mount::unmount(&a_mp, rustix::mount::UnmountFlags::DETACH).unwrap();
    let m = Api::prepare(&s, "c1", "chain-B", &Labels::new())
        .await
        .expect("refreshed");
    let mm = metrics(&s);
    assert_eq!((mm.check_failures, mm.refreshes), (1, 1), "{mm:?}");
    let g = mount_all(&m, &mountpoint(&sc, "c1")).unwrap();
    assert_eq!(
        std::fs::read_to_string(g.path().join("a.txt")).unwrap(),
        "layerA"
    );
    drop(g);

    // Dies again while the registry is down: Mounts reports Unavailable.
    rustix::mount::unmount(&a_mp, rustix::mount::UnmountFlags::DETACH).unwrap();
    fs.available.store(false, Ordering::SeqCst);
    let r = Api::mounts(&s, "c1").await;
    assert_eq!(r.map_err(|e| e.0).err(), Some(Code::Unavailable));
    assert_eq!(metrics(&s).refresh_failures, 1);
    let r = Api::view(&s, "v1", "chain-B", &Labels::new()).await;
    assert_eq!(
        r.map_err(|e| e.0).err(),
        Some(Code::Unavailable),
        "View checks the chain too"
    );
    expect_missing(&s, "v1").await;

    // Registry back: the layer is mounted again on next use.
    fs.available.store(true, Ordering::SeqCst);
    Api::mounts(&s, "c1").await.expect("remounted");
    assert!(metrics(&s).restores >= 1);
    assert!(mounts_under(&sc.root()).unwrap().contains(&a_mp));
    s.unmount_all().await;
    assert!(
        mounts_under(&sc.root()).unwrap().is_empty(),
        "unmount_all leaves nothing mounted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_restores_remote_layers_even_when_the_registry_is_down() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let sc = Scratch::new();
    {
        let s = Snapshotter::open(&sc.root(), sc.fs()).await.unwrap();
        remote_chain(&s).await;
        Api::prepare(&s, "c1", "chain-B", &Labels::new())
            .await
            .unwrap();
        // Dropped without unmounting, as after SIGTERM or a crash.
    }
    assert_eq!(mounts_under(&sc.root()).unwrap().len(), 2);

    let down = sc.fs();
    down.available.store(false, Ordering::SeqCst);
    let s = Snapshotter::open(&sc.root(), down.clone())
        .await
        .expect("a down registry does not stop the start");
    assert_eq!(metrics(&s).restore_failures, 2);
    assert!(
        mounts_under(&sc.root()).unwrap().is_empty(),
        "stale mounts were detached"
    );
    assert_eq!(s.stat("chain-B").await.unwrap().kind, Kind::Committed);
    let r = Api::mounts(&s, "c1").await;
    assert_eq!(r.map_err(|e| e.0).err(), Some(Code::Unavailable));

    down.available.store(true, Ordering::SeqCst);
    let m = Api::mounts(&s, "c1").await.expect("lazily restored");
    assert_eq!(metrics(&s).restores, 2);
    let g = mount_all(&m, &mountpoint(&sc, "c1")).unwrap();
    assert_eq!(
        std::fs::read_to_string(g.path().join("b.txt")).unwrap(),
        "layerB"
    );
    drop(g);
    drop(s);

    let up = sc.fs();
    let s = Snapshotter::open(&sc.root(), up.clone()).await.unwrap();
    assert_eq!(
        (metrics(&s).restores, up.mounts.load(Ordering::SeqCst)),
        (2, 2),
        "restored at start"
    );
    for k in ["c1", "chain-B", "chain-A"] {
        Api::remove(&s, k).await.unwrap();
    }
    assert!(mounts_under(&sc.root()).unwrap().is_empty());
}

/// Mounts nothing; `unpack` writes the layer (a file named after the digest
/// label, and the lowers it was given) or, for digest "sha256:BAD", writes
/// a file and then fails.
struct UnpackFs;

#[async_trait]
impl RemoteFs for UnpackFs {
    async fn mount(&self, _: &Path, _: &Labels) -> Result<(), RemoteFsError> {
        Err(RemoteFsError::NotRemote("plain layer".into()))
    }
    async fn check(&self, _: &Path, _: &Labels) -> Result<(), RemoteFsError> {
        Ok(())
    }
    async fn unmount(&self, _: &Path) -> Result<(), RemoteFsError> {
        Ok(())
    }
    async fn unpack(
        &self,
        dir: &Path,
        lowers: &[PathBuf],
        l: &Labels,
    ) -> Result<snapshotter::Unpack, RemoteFsError> {
        let d = l[DIGEST].trim_start_matches("sha256:");
        std::fs::write(dir.join(d), format!("{}", lowers.len())).unwrap();
        if d == "BAD" {
            return Err(RemoteFsError::Other("digest mismatch".into()));
        }
        Ok(snapshotter::Unpack::Done)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpacked_layers_are_committed_and_failures_leave_nothing() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    let sc = Scratch::new();
    let s = Snapshotter::open(&sc.root(), Arc::new(UnpackFs))
        .await
        .unwrap();
    let r = Api::prepare(&s, "extract-A", "", &remote_labels("chain-A", "sha256:A")).await;
    assert_eq!(r.map_err(|e| e.0), Err(Code::AlreadyExists));
    let r = Api::prepare(
        &s,
        "extract-B",
        "chain-A",
        &remote_labels("chain-B", "sha256:B"),
    )
    .await;
    assert_eq!(r.map_err(|e| e.0), Err(Code::AlreadyExists));
    let m = metrics(&s);
    assert_eq!((m.unpacked, m.unpack_failures, m.remote_mounts), (2, 0, 0));
    let b = s.stat("chain-B").await.unwrap();
    assert_eq!((b.kind, b.parent.as_str()), (Kind::Committed, "chain-A"));
    assert!(
        !b.labels.contains_key(LABEL_REMOTE),
        "an unpacked layer is an ordinary directory"
    );
    assert!(
        s.usage("chain-B").await.unwrap().size > 0,
        "walked like any layer"
    );
    // The layers' contents are the lower dirs of a view on top.
    let mounts = Api::view(&s, "v", "chain-B", &Labels::new()).await.unwrap();
    let mp = sc.p("view");
    std::fs::create_dir(&mp).unwrap();
    let guard = mount_all(&mounts, &mp).unwrap();
    assert_eq!(std::fs::read_to_string(mp.join("A")).unwrap(), "0");
    assert_eq!(
        std::fs::read_to_string(mp.join("B")).unwrap(),
        "1",
        "B saw A below it"
    );
    drop(guard);

    // A failed unpack: the ordinary active snapshot, empty, for containerd.
    let r = Api::prepare(
        &s,
        "extract-C",
        "chain-B",
        &remote_labels("chain-C", "sha256:BAD"),
    )
    .await
    .unwrap();
    assert_eq!(metrics(&s).unpack_failures, 1);
    let upper = r
        .iter()
        .flat_map(|m| m.options.iter())
        .find_map(|o| o.strip_prefix("upperdir="))
        .expect("an overlay with an upper dir")
        .to_string();
    let upper = Path::new(&upper);
    assert_eq!(
        std::fs::read_dir(upper).unwrap().count(),
        0,
        "nothing of the failed pull"
    );
    assert!(
        !upper.parent().unwrap().join("unpack").exists(),
        "its unpack dir is gone"
    );
    assert!(s.stat("chain-C").await.is_err(), "nothing committed");
}
