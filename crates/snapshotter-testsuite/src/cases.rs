//! The conformance cases. Each uses its own key prefix.

use crate::{mount_all, Api, ApiResult, Code};
use snapshotter::{Info, Kind, Labels};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

pub fn labels(kv: &[(&str, &str)]) -> Labels {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn none() -> Labels {
    Labels::new()
}

/// Whether this process may mount (the cases that look at files need it).
/// Without root those checks are skipped with a printed reason, except under
/// `CI`, where a skipped check would be a pass that proved nothing: there
/// this panics (the workspace's one root gate, `e2e::require_root_tools`).
pub fn can_mount() -> bool {
    e2e::require_root_tools(&[])
}

fn mountpoint(scratch: &Path, name: &str) -> PathBuf {
    let p = scratch.join(name);
    std::fs::create_dir_all(&p).expect("create mount point");
    p
}

#[track_caller]
fn expect_code<T: std::fmt::Debug>(r: ApiResult<T>, want: Code, what: &str) {
    match r {
        Err((c, _)) if c == want => {}
        other => panic!("{what}: want {want:?}, got {other:?}"),
    }
}

async fn names(api: &dyn Api, filters: &[&str], prefix: &str) -> BTreeSet<String> {
    api.list(filters)
        .await
        .unwrap_or_else(|e| panic!("list {filters:?}: {e:?}"))
        .into_iter()
        .map(|i| i.name)
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Every case, in order.
pub async fn run_all(api: &dyn Api, scratch: &Path) {
    prepare_commit_chain(api, scratch).await;
    views(api, scratch).await;
    error_codes(api).await;
    removal_rules(api).await;
    labels_exact(api).await;
    update_field_paths(api).await;
    walk_filters(api).await;
    usage_counts(api, scratch).await;
    cleanup_keeps_snapshots(api).await;
}

/// Prepare/commit three layers; files written in each are visible through
/// the overlay of the next, deletions and overwrites included.
pub async fn prepare_commit_chain(api: &dyn Api, scratch: &Path) {
    let m = api
        .prepare("pc-a", "", &none())
        .await
        .expect("prepare pc-a");
    assert_eq!(m.len(), 1);
    assert_eq!(
        m[0].fs_type, "bind",
        "no-parent active is a bind mount: {m:?}"
    );
    assert!(m[0].options.contains(&"rw".to_string()), "{m:?}");
    if can_mount() {
        let g = mount_all(&m, &mountpoint(scratch, "pc-a")).expect("mount pc-a");
        std::fs::write(g.path().join("a.txt"), "A").unwrap();
        std::fs::write(g.path().join("del.txt"), "D").unwrap();
        std::fs::create_dir(g.path().join("d")).unwrap();
        std::fs::write(g.path().join("d/x"), "X").unwrap();
    }
    api.commit("pc-A", "pc-a", &none())
        .await
        .expect("commit pc-A");
    expect_code(
        api.stat("pc-a").await,
        Code::NotFound,
        "active key is gone after commit",
    );
    let a = api.stat("pc-A").await.expect("stat pc-A");
    assert_eq!((a.kind, a.parent.as_str()), (Kind::Committed, ""));

    let m = api
        .prepare("pc-b", "pc-A", &none())
        .await
        .expect("prepare pc-b");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].fs_type, "overlay", "{m:?}");
    for o in ["upperdir=", "workdir=", "lowerdir="] {
        assert!(
            m[0].options.iter().any(|x| x.starts_with(o)),
            "missing {o}: {m:?}"
        );
    }
    assert_eq!(
        api.mounts("pc-b").await.expect("mounts pc-b"),
        m,
        "Mounts repeats Prepare"
    );
    if can_mount() {
        let g = mount_all(&m, &mountpoint(scratch, "pc-b")).expect("mount pc-b");
        assert_eq!(
            std::fs::read_to_string(g.path().join("a.txt")).unwrap(),
            "A"
        );
        std::fs::write(g.path().join("a.txt"), "A2").unwrap();
        std::fs::write(g.path().join("b.txt"), "B").unwrap();
        std::fs::remove_file(g.path().join("del.txt")).unwrap();
    }
    api.commit("pc-B", "pc-b", &none())
        .await
        .expect("commit pc-B");
    assert_eq!(api.stat("pc-B").await.unwrap().parent, "pc-A");

    let m = api
        .prepare("pc-c", "pc-B", &none())
        .await
        .expect("prepare pc-c");
    let lower = m[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("lowerdir="))
        .expect("lowerdir")
        .to_string();
    assert_eq!(lower.split(':').count(), 2, "two lower layers: {lower}");
    if can_mount() {
        let g = mount_all(&m, &mountpoint(scratch, "pc-c")).expect("mount pc-c");
        let read = |p: &str| std::fs::read_to_string(g.path().join(p)).ok();
        assert_eq!(read("a.txt").as_deref(), Some("A2"), "upper layer wins");
        assert_eq!(read("b.txt").as_deref(), Some("B"));
        assert_eq!(read("d/x").as_deref(), Some("X"), "lowest layer visible");
        assert_eq!(
            read("del.txt"),
            None,
            "deletion in a middle layer hides the file"
        );
    }
    for k in ["pc-c", "pc-B", "pc-A"] {
        api.remove(k)
            .await
            .unwrap_or_else(|e| panic!("remove {k}: {e:?}"));
    }
}

/// Views are read-only: one layer is a ro bind, several an overlay with
/// lowerdir only, none a ro bind of an empty dir; views are never parents.
pub async fn views(api: &dyn Api, scratch: &Path) {
    api.prepare("vw-a", "", &none()).await.unwrap();
    if can_mount() {
        let m = api.mounts("vw-a").await.unwrap();
        let g = mount_all(&m, &mountpoint(scratch, "vw-a")).unwrap();
        std::fs::write(g.path().join("f"), "1").unwrap();
    }
    api.commit("vw-A", "vw-a", &none()).await.unwrap();
    api.prepare("vw-b", "vw-A", &none()).await.unwrap();
    api.commit("vw-B", "vw-b", &none()).await.unwrap();

    let one = api
        .view("vw-v1", "vw-A", &none())
        .await
        .expect("view of one layer");
    assert_eq!((one.len(), one[0].fs_type.as_str()), (1, "bind"), "{one:?}");
    assert!(one[0].options.contains(&"ro".to_string()), "{one:?}");
    let two = api
        .view("vw-v2", "vw-B", &none())
        .await
        .expect("view of two layers");
    assert_eq!(two[0].fs_type, "overlay", "{two:?}");
    assert!(
        !two[0].options.iter().any(|o| o.starts_with("upperdir=")),
        "{two:?}"
    );
    let empty = api
        .view("vw-v0", "", &none())
        .await
        .expect("view without parent");
    assert!(empty[0].options.contains(&"ro".to_string()), "{empty:?}");
    assert_eq!(api.stat("vw-v1").await.unwrap().kind, Kind::View);
    if can_mount() {
        for (k, m) in [("vw-v1", &one), ("vw-v2", &two), ("vw-v0", &empty)] {
            let g = mount_all(m, &mountpoint(scratch, k)).unwrap();
            if k != "vw-v0" {
                assert_eq!(
                    std::fs::read_to_string(g.path().join("f")).unwrap(),
                    "1",
                    "{k}"
                );
            }
            assert!(
                std::fs::write(g.path().join("new"), "x").is_err(),
                "{k} must be read-only"
            );
        }
    }
    expect_code(
        api.prepare("vw-c", "vw-v1", &none()).await,
        Code::InvalidArgument,
        "view as parent",
    );
    expect_code(
        api.commit("vw-V", "vw-v1", &none()).await,
        Code::FailedPrecondition,
        "commit a view",
    );
    for k in ["vw-v0", "vw-v1", "vw-v2", "vw-B", "vw-A"] {
        api.remove(k)
            .await
            .unwrap_or_else(|e| panic!("remove {k}: {e:?}"));
    }
}

pub async fn error_codes(api: &dyn Api) {
    expect_code(
        api.prepare("", "", &none()).await,
        Code::InvalidArgument,
        "empty key",
    );
    api.prepare("ec-a", "", &none()).await.unwrap();
    expect_code(
        api.prepare("ec-a", "", &none()).await,
        Code::AlreadyExists,
        "prepare twice",
    );
    expect_code(
        api.view("ec-a", "", &none()).await,
        Code::AlreadyExists,
        "view on an active key",
    );
    expect_code(
        api.prepare("ec-x", "ec-missing", &none()).await,
        Code::NotFound,
        "missing parent",
    );
    expect_code(
        api.prepare("ec-y", "ec-a", &none()).await,
        Code::InvalidArgument,
        "active parent",
    );
    expect_code(
        api.view("ec-v", "ec-a", &none()).await,
        Code::InvalidArgument,
        "view of active",
    );
    expect_code(
        api.stat("ec-x").await,
        Code::NotFound,
        "a failed prepare leaves nothing",
    );
    expect_code(
        api.commit("ec-A", "ec-nokey", &none()).await,
        Code::NotFound,
        "commit missing key",
    );
    api.commit("ec-A", "ec-a", &none()).await.unwrap();
    api.prepare("ec-b", "ec-A", &none()).await.unwrap();
    expect_code(
        api.commit("ec-A", "ec-b", &none()).await,
        Code::AlreadyExists,
        "commit onto existing name",
    );
    assert_eq!(
        api.stat("ec-b").await.unwrap().kind,
        Kind::Active,
        "failed commit keeps the active"
    );
    expect_code(
        api.commit("ec-B", "ec-A", &none()).await,
        Code::FailedPrecondition,
        "commit a committed",
    );
    expect_code(
        api.mounts("ec-A").await,
        Code::FailedPrecondition,
        "mounts of committed",
    );
    expect_code(
        api.mounts("ec-none").await,
        Code::NotFound,
        "mounts of missing",
    );
    expect_code(
        api.remove("ec-none").await,
        Code::NotFound,
        "remove missing",
    );
    expect_code(api.stat("ec-none").await, Code::NotFound, "stat missing");
    expect_code(api.usage("ec-none").await, Code::NotFound, "usage missing");
    expect_code(
        api.update("ec-none", &none(), &[]).await,
        Code::NotFound,
        "update missing",
    );
    expect_code(
        api.update("ec-A", &none(), &["parent"]).await,
        Code::InvalidArgument,
        "update immutable",
    );
    expect_code(
        api.list(&["name=="]).await,
        Code::InvalidArgument,
        "bad filter",
    );
    let big = "v".repeat(5000);
    expect_code(
        api.prepare("ec-c", "ec-A", &labels(&[("k", &big)])).await,
        Code::InvalidArgument,
        "label over 4 KiB",
    );
    for k in ["ec-b", "ec-A"] {
        api.remove(k).await.unwrap();
    }
}

pub async fn removal_rules(api: &dyn Api) {
    api.prepare("rr-a", "", &none()).await.unwrap();
    api.commit("rr-A", "rr-a", &none()).await.unwrap();
    api.prepare("rr-b", "rr-A", &none()).await.unwrap();
    expect_code(
        api.remove("rr-A").await,
        Code::FailedPrecondition,
        "remove parent of an active",
    );
    api.view("rr-v", "rr-A", &none()).await.unwrap();
    api.remove("rr-b").await.unwrap();
    expect_code(
        api.remove("rr-A").await,
        Code::FailedPrecondition,
        "remove parent of a view",
    );
    api.remove("rr-v").await.unwrap();
    api.remove("rr-A").await.expect("remove a leaf committed");
    expect_code(api.stat("rr-A").await, Code::NotFound, "removed");
    // Names and keys are reusable after removal.
    api.prepare("rr-a", "", &none()).await.expect("key reuse");
    api.commit("rr-A", "rr-a", &none())
        .await
        .expect("name reuse");
    api.remove("rr-A").await.unwrap();
}

fn assert_times(i: &Info) {
    assert!(i.created <= i.updated, "{i:?}");
    assert!(i.created > std::time::UNIX_EPOCH, "{i:?}");
}

pub async fn labels_exact(api: &dyn Api) {
    let l = labels(&[
        ("a", "1"),
        ("containerd.io/gc.root", "2024"),
        ("weird key =,\"", "v=1,2 \u{e9}"),
    ]);
    api.prepare("lb-a", "", &l).await.unwrap();
    let i = api.stat("lb-a").await.unwrap();
    assert_eq!(i.labels, l, "labels returned exactly");
    assert_times(&i);
    let c = labels(&[("c", "3")]);
    api.commit("lb-A", "lb-a", &c).await.unwrap();
    let i = api.stat("lb-A").await.unwrap();
    assert_eq!(i.labels, c, "a committed snapshot has the commit's labels");
    assert_times(&i);
    api.remove("lb-A").await.unwrap();
}

pub async fn update_field_paths(api: &dyn Api) {
    api.prepare("up-a", "", &labels(&[("c", "3")]))
        .await
        .unwrap();
    let before = api.stat("up-a").await.unwrap();
    let i = api
        .update(
            "up-a",
            &labels(&[("d", "4"), ("ignored", "x")]),
            &["labels.d"],
        )
        .await
        .unwrap();
    assert_eq!(
        i.labels,
        labels(&[("c", "3"), ("d", "4")]),
        "labels.d sets only d"
    );
    assert_eq!((i.name.as_str(), i.kind), ("up-a", Kind::Active));
    assert_eq!(i.created, before.created, "created is immutable");
    assert!(i.updated >= before.updated);
    let i = api
        .update("up-a", &labels(&[("x", "?")]), &["labels.c"])
        .await
        .unwrap();
    assert_eq!(
        i.labels,
        labels(&[("d", "4")]),
        "labels.c absent in the request removes it"
    );
    let dotted = "containerd.io/gc.ref.snapshot.overlayfs";
    let i = api
        .update(
            "up-a",
            &labels(&[(dotted, "sha256:1")]),
            &[&format!("labels.{dotted}")],
        )
        .await
        .unwrap();
    assert_eq!(
        i.labels.get(dotted).map(String::as_str),
        Some("sha256:1"),
        "keys may contain dots"
    );
    let i = api
        .update("up-a", &labels(&[("e", "5")]), &["labels"])
        .await
        .unwrap();
    assert_eq!(i.labels, labels(&[("e", "5")]), "labels replaces all");
    let i = api
        .update("up-a", &labels(&[("f", "6")]), &[])
        .await
        .unwrap();
    assert_eq!(i.labels, labels(&[("f", "6")]), "no mask replaces all");
    assert_eq!(
        api.stat("up-a").await.unwrap().labels,
        i.labels,
        "stat agrees with update"
    );
    api.remove("up-a").await.unwrap();
}

pub async fn walk_filters(api: &dyn Api) {
    api.prepare("wf-a", "", &none()).await.unwrap();
    api.commit("wf-A", "wf-a", &labels(&[("wf", "1"), ("tier", "base")]))
        .await
        .unwrap();
    api.prepare("wf-b", "wf-A", &none()).await.unwrap();
    api.commit(
        "wf-B",
        "wf-b",
        &labels(&[("wf", "1"), ("tier", "app"), ("containerd.io/gc.root", "t")]),
    )
    .await
    .unwrap();
    api.prepare("wf-c", "wf-B", &labels(&[("wf", "1")]))
        .await
        .unwrap();
    api.view("wf-v", "wf-A", &labels(&[("wf", "1")]))
        .await
        .unwrap();
    let all = set(&["wf-A", "wf-B", "wf-c", "wf-v"]);
    let n = |f: &'static [&'static str]| names(api, f, "wf-");
    assert_eq!(n(&[]).await, all, "no filter lists everything");
    assert_eq!(n(&["labels.wf==1"]).await, all);
    assert_eq!(n(&["name==wf-B"]).await, set(&["wf-B"]));
    assert_eq!(
        n(&["parent==wf-A,labels.wf==1"]).await,
        set(&["wf-B", "wf-v"])
    );
    assert_eq!(n(&["kind==active,labels.wf==1"]).await, set(&["wf-c"]));
    assert_eq!(n(&["kind==view,labels.wf==1"]).await, set(&["wf-v"]));
    assert_eq!(
        n(&["kind==committed,labels.wf==1"]).await,
        set(&["wf-A", "wf-B"])
    );
    assert_eq!(
        n(&[r#"labels."containerd.io/gc.root",labels.wf==1"#]).await,
        set(&["wf-B"])
    );
    assert_eq!(
        n(&["labels.tier,labels.wf==1"]).await,
        set(&["wf-A", "wf-B"]),
        "existence"
    );
    assert_eq!(
        n(&["labels.tier!=base,labels.wf==1"]).await,
        set(&["wf-B"]),
        "absent never matches !="
    );
    assert_eq!(
        n(&["name==wf-A", "name==wf-c"]).await,
        set(&["wf-A", "wf-c"]),
        "filters are ORed"
    );
    assert_eq!(n(&["name~=^wf-[AB]$"]).await, set(&["wf-A", "wf-B"]));
    let c = api.list(&["name==wf-c"]).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].parent.as_str(), c[0].kind, &c[0].labels),
        ("wf-B", Kind::Active, &labels(&[("wf", "1")]))
    );
    for k in ["wf-v", "wf-c", "wf-B", "wf-A"] {
        api.remove(k).await.unwrap();
    }
}

pub async fn usage_counts(api: &dyn Api, scratch: &Path) {
    let m = api.prepare("us-a", "", &none()).await.unwrap();
    let empty = api.usage("us-a").await.unwrap();
    assert!(empty.inodes >= 1, "{empty:?}");
    if can_mount() {
        let g = mount_all(&m, &mountpoint(scratch, "us-a")).unwrap();
        std::fs::write(g.path().join("big"), vec![7u8; 1 << 20]).unwrap();
        std::fs::create_dir(g.path().join("dir")).unwrap();
        drop(g);
        let u = api.usage("us-a").await.unwrap();
        assert!(u.size >= 1 << 20, "{u:?}");
        assert_eq!(u.inodes, empty.inodes + 2, "{u:?}");
        api.commit("us-A", "us-a", &none()).await.unwrap();
        assert_eq!(
            api.usage("us-A").await.unwrap(),
            u,
            "committed usage is kept"
        );
    } else {
        api.commit("us-A", "us-a", &none()).await.unwrap();
    }
    api.remove("us-A").await.unwrap();
}

pub async fn cleanup_keeps_snapshots(api: &dyn Api) {
    api.prepare("cl-a", "", &none()).await.unwrap();
    api.cleanup().await.expect("cleanup");
    api.stat("cl-a")
        .await
        .expect("cleanup keeps live snapshots");
    api.mounts("cl-a").await.expect("and their directories");
    api.remove("cl-a").await.unwrap();
}
