use super::*;
use crate::toc::{EntryType as T, TocEntry};

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn e(name: &str, kind: T) -> TocEntry {
    TocEntry {
        name: name.into(),
        kind,
        mode: 0o644,
        ..Default::default()
    }
}

fn reg(name: &str, size: i64, offset: i64) -> TocEntry {
    TocEntry {
        size,
        offset,
        chunk_digest: D1.into(),
        ..e(name, T::Reg)
    }
}

fn chunk(name: &str, offset: i64, chunk_offset: i64, chunk_size: i64) -> TocEntry {
    TocEntry {
        offset,
        chunk_offset,
        chunk_size,
        chunk_digest: D2.into(),
        ..e(name, T::Chunk)
    }
}

fn build(entries: Vec<TocEntry>) -> Result<Index, TocError> {
    Index::from_toc(
        &Toc {
            version: 1,
            entries,
        },
        10_000,
        10_100,
    )
}

#[test]
fn clean_path_rules() {
    assert_eq!(clean_path("./a/b/").as_deref(), Some("a/b"));
    assert_eq!(clean_path("/a//./b").as_deref(), Some("a/b"));
    assert_eq!(clean_path("./").as_deref(), Some(""));
    assert_eq!(clean_path("a/../b"), None);
    assert_eq!(clean_path(".."), None);
    assert_eq!(clean_path("a\0b"), None);
}

#[test]
fn tree_with_implicit_parents_and_attributes() {
    let mut dir = e("a/", T::Dir);
    dir.mode = 0o40700;
    dir.uid = 7;
    dir.modtime = "2020-01-02T03:04:05Z".into();
    let mut link = e("a/b/l", T::Symlink);
    link.link_name = "../x".into();
    let mut dev = e("dev/c", T::Char);
    dev.dev_major = 1;
    dev.dev_minor = 3;
    let mut x = reg("a/b/f", 5, 100);
    x.xattrs.insert("user.k".into(), vec![1, 2]);
    x.mode = 0o104755;
    let idx = build(vec![x, dir, link, dev, e("./", T::Dir)]).unwrap();
    let a = idx.lookup("a").unwrap();
    let n = idx.node(a).unwrap();
    assert_eq!(
        (n.kind, n.mode, n.uid, n.mtime),
        (NodeKind::Dir, 0o700, 7, 1_577_934_245)
    );
    let b = idx.lookup("/a/b/").unwrap();
    assert_eq!(idx.node(b).unwrap().mode, 0o755, "implicit dir");
    assert_eq!(idx.node(b).unwrap().parent, a);
    assert_eq!(idx.node(a).unwrap().nlink, 3);
    let f = idx.node(idx.lookup("a/b/f").unwrap()).unwrap();
    assert_eq!(
        (f.mode, f.size, f.xattrs["user.k"].as_slice()),
        (0o4755, 5, &[1u8, 2][..])
    );
    assert_eq!(
        f.chunks,
        vec![Chunk {
            blob_offset: 100,
            blob_end: 10_000,
            inner_offset: 0,
            file_offset: 0,
            size: 5,
            digest: D1.into(),
            compression: crate::Compression::Gzip,
            verified: true,
        }]
    );
    let l = idx.node(idx.lookup("a/b/l").unwrap()).unwrap();
    assert_eq!(l.link_target.as_deref(), Some("../x"));
    let c = idx.node(idx.lookup("dev/c").unwrap()).unwrap();
    assert_eq!((c.kind, c.dev_major, c.dev_minor), (NodeKind::Char, 1, 3));
    assert_eq!(
        idx.node(ROOT).unwrap().mode,
        0o644,
        "explicit root entry applies"
    );
    assert_eq!(idx.name_of(b), "b");
    assert_eq!(idx.lookup("a/nope"), None);
}

#[test]
fn chunks_blob_end_and_lookups() {
    let mut first = reg("big", 25, 100);
    first.chunk_size = 10;
    let idx = build(vec![
        first,
        chunk("big", 300, 10, 10),
        chunk("big", 500, 20, 0),
        reg("small", 3, 700),
    ])
    .unwrap();
    let big = idx.lookup("big").unwrap();
    let c = &idx.node(big).unwrap().chunks;
    let spans: Vec<_> = c
        .iter()
        .map(|c| (c.file_offset, c.size, c.blob_offset, c.blob_end))
        .collect();
    assert_eq!(
        spans,
        vec![(0, 10, 100, 300), (10, 10, 300, 500), (20, 5, 500, 700)]
    );
    assert_eq!(idx.chunk_for(big, 0).unwrap().blob_offset, 100);
    assert_eq!(idx.chunk_for(big, 19).unwrap().blob_offset, 300);
    assert_eq!(idx.chunk_for(big, 24).unwrap().blob_offset, 500);
    assert!(idx.chunk_for(big, 25).is_none());
    assert_eq!(idx.chunks_in(big, 5..21).len(), 3);
    assert_eq!(idx.chunks_in(big, 10..20).len(), 1);
    assert!(idx.chunks_in(big, 25..30).is_empty());
    let small = idx.lookup("small").unwrap();
    assert_eq!(idx.node(small).unwrap().chunks[0].blob_end, 10_000);
    assert_eq!(idx.all_chunks().count(), 4);
}

#[test]
fn hardlinks_share_nodes() {
    let mut h = e("z/h", T::Hardlink);
    h.link_name = "./f".into();
    let mut h2 = e("h2", T::Hardlink);
    h2.link_name = "z/h".into();
    // A link may come before its target and point at another link.
    let idx = build(vec![h2, h, reg("f", 1, 5)]).unwrap();
    let f = idx.lookup("f").unwrap();
    assert_eq!(idx.lookup("z/h"), Some(f));
    assert_eq!(idx.lookup("h2"), Some(f));
    assert_eq!(idx.node(f).unwrap().nlink, 3);
}

#[test]
fn landmarks() {
    let idx = build(vec![
        reg("p", 1, 10),
        reg(".prefetch.landmark", 1, 50),
        reg("q", 1, 90),
    ])
    .unwrap();
    assert_eq!(idx.prefetch_end(), Some(50));
    assert!(!idx.has_no_prefetch_landmark());
    let idx = build(vec![reg(".no.prefetch.landmark", 1, 10)]).unwrap();
    assert_eq!(idx.prefetch_end(), None);
    assert!(idx.has_no_prefetch_landmark());
}

#[test]
fn whiteout_helpers() {
    assert!(is_whiteout(".wh.foo") && is_whiteout(OPAQUE_WHITEOUT) && !is_whiteout("foo"));
    assert_eq!(whiteout_target(".wh.foo"), Some("foo"));
    assert_eq!(whiteout_target(OPAQUE_WHITEOUT), None);
    assert_eq!(whiteout_target(".wh."), None);
    assert!(is_opaque_whiteout(".wh..wh..opq"));
    assert!(is_landmark(".prefetch.landmark") && is_landmark(".no.prefetch.landmark"));
    // Whiteouts stay in the tree under their own names.
    let idx = build(vec![e("d/.wh.x", T::Char), e("d/.wh..wh..opq", T::Reg)]).unwrap();
    assert!(idx.lookup("d/.wh.x").is_some() && idx.lookup("d/.wh..wh..opq").is_some());
}

#[test]
fn rejects_bad_tocs() {
    let bad = |entries: Vec<TocEntry>| build(entries).unwrap_err();
    assert!(matches!(
        bad(vec![e("a/../../etc", T::Dir)]),
        TocError::BadName(_)
    ));
    assert!(matches!(bad(vec![e("./", T::Reg)]), TocError::BadName(_)));
    assert!(matches!(
        bad(vec![e("a", T::Dir), e("./a/", T::Dir)]),
        TocError::Duplicate(_)
    ));
    assert!(matches!(
        bad(vec![reg("a", 0, 0), e("a/b", T::Reg)]),
        TocError::NotADirectory(_)
    ));
    let mut h = e("h", T::Hardlink);
    h.link_name = "missing".into();
    assert!(matches!(bad(vec![h.clone()]), TocError::BadHardlink { .. }));
    h.link_name = "d".into();
    assert!(matches!(
        bad(vec![e("d", T::Dir), h.clone()]),
        TocError::BadHardlink { .. }
    ));
    h.link_name = "h".into();
    assert!(matches!(bad(vec![h]), TocError::BadHardlink { .. }));
    assert!(matches!(
        bad(vec![chunk("x", 1, 0, 0)]),
        TocError::OrphanChunk(_)
    ));
    assert!(matches!(
        bad(vec![reg("x", 4, 1), chunk("y", 2, 2, 0)]),
        TocError::OrphanChunk(_)
    ));
    // Overlap, gap, past the end, missing chunk.
    let mut r = reg("x", 10, 1);
    r.chunk_size = 6;
    assert!(matches!(
        bad(vec![r.clone(), chunk("x", 2, 4, 0)]),
        TocError::ChunkLayout(_)
    ));
    assert!(matches!(
        bad(vec![r.clone(), chunk("x", 2, 7, 0)]),
        TocError::ChunkLayout(_)
    ));
    assert!(matches!(
        bad(vec![r.clone(), chunk("x", 2, 6, 8)]),
        TocError::ChunkLayout(_)
    ));
    assert!(matches!(bad(vec![r.clone()]), TocError::ChunkLayout(_)));
    assert!(matches!(
        bad(vec![reg("e", 0, 0), chunk("e", 2, 0, 1)]),
        TocError::ChunkLayout(_)
    ));
    assert!(matches!(
        bad(vec![reg("x", 3, 10_000)]),
        TocError::ChunkOutOfRange { .. }
    ));
    // A whole-file chunk over the cap (a gzip bomb could back it), and the
    // cap itself, which is accepted.
    let cap = crate::index::MAX_CHUNK_SIZE as i64;
    assert!(matches!(
        bad(vec![reg("x", cap + 1, 5)]),
        TocError::ChunkTooLarge { .. }
    ));
    build(vec![reg("x", cap, 5)]).unwrap();
    let mut skip = reg("x", 3, 5);
    skip.inner_offset = cap;
    assert!(matches!(bad(vec![skip]), TocError::ChunkTooLarge { .. }));
    let mut nd = reg("x", 3, 5);
    nd.chunk_digest = "md5:abc".into();
    assert!(matches!(bad(vec![nd]), TocError::MissingChunkDigest(_)));
    assert!(matches!(
        bad(vec![reg("x", -1, 5)]),
        TocError::FieldRange { .. }
    ));
    let mut u = e("u", T::Dir);
    u.uid = 1 << 40;
    assert!(matches!(bad(vec![u]), TocError::FieldRange { .. }));
    let r = Index::from_toc(
        &Toc {
            version: 2,
            entries: vec![],
        },
        1,
        2,
    );
    assert_eq!(r.unwrap_err(), TocError::Version(2));
    assert!(Index::from_toc(
        &Toc {
            version: 1,
            entries: vec![]
        },
        3,
        2
    )
    .is_err());
}
