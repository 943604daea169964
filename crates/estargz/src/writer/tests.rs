use super::*;
use std::io::Read;

#[test]
fn gzip_member_is_go_shaped_and_valid() {
    for (level, xfl) in [(9, 2), (1, 4), (6, 0), (0, 0)] {
        let m = gzip_member(b"hello hello hello", level);
        assert_eq!(m[..10], [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff]);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&m[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"hello hello hello");
    }
}

#[test]
fn modtime_and_names_follow_the_reference() {
    assert_eq!(format_modtime(0), "");
    assert_eq!(format_modtime(1_704_164_645), "2024-01-02T03:04:05Z");
    let mut seen = HashMap::new();
    assert_eq!(name_if_changed(&mut seen, 0, "root"), "root");
    assert_eq!(name_if_changed(&mut seen, 0, "root"), "");
    assert_eq!(name_if_changed(&mut seen, 0, "admin"), "admin");
    assert_eq!(name_if_changed(&mut seen, 1, ""), "");
}

fn entry(name: &str, kind: Kind, link: &str) -> InEntry {
    InEntry {
        kind,
        raw: 0..512,
        data: 512..512,
        name: name.into(),
        clean: clean_path(name).unwrap(),
        link: link.into(),
        mode: 0,
        uid: 0,
        gid: 0,
        mtime: 0,
        uname: String::new(),
        gname: String::new(),
        devmajor: 0,
        devminor: 0,
        xattrs: Default::default(),
    }
}

#[test]
fn dedup_keeps_the_last_and_drops_reserved_names() {
    let v = vec![
        entry("a", Kind::Reg, ""),
        entry("stargz.index.json", Kind::Reg, ""),
        entry("./.prefetch.landmark", Kind::Reg, ""),
        entry("b/", Kind::Dir, ""),
        entry("./a", Kind::Reg, ""),
    ];
    let names: Vec<String> = dedup(v).into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["b/", "./a"]);
}

#[test]
fn order_moves_parents_and_link_targets_first() {
    let v = vec![
        entry("./", Kind::Dir, ""),
        entry("x", Kind::Reg, ""),
        entry("d/", Kind::Dir, ""),
        entry("d/e/", Kind::Dir, ""),
        entry("d/e/t", Kind::Reg, ""),
        entry("d/e/h", Kind::Hardlink, "d/e/t"),
    ];
    let (items, missed) = order(&v, &["/d/e/h".into(), "nope".into()]);
    let e = Item::Entry;
    assert_eq!(
        items,
        [
            e(0),
            e(2),
            e(3),
            e(4),
            e(5),
            Item::Landmark(PREFETCH_LANDMARK),
            e(1)
        ]
    );
    assert_eq!(missed, ["nope"]);
    let (items, _) = order(&v, &[]);
    assert_eq!(items[0], Item::Landmark(NO_PREFETCH_LANDMARK));
    assert_eq!(items.len(), v.len() + 1);
}

#[test]
fn chunk_size_must_be_one_readers_accept() {
    let tar = [0u8; 1024];
    for bad in [0, crate::index::MAX_CHUNK_SIZE + 1] {
        let opts = WriterOptions {
            chunk_size: bad,
            ..WriterOptions::default()
        };
        let e = convert_tar_at(&tar[..], 1024, Vec::new(), &opts).unwrap_err();
        assert!(matches!(e, Error::BadOption(_)), "{bad}: {e}");
    }
}
