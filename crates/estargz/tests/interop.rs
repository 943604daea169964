//! Blobs made by the Go reference (`scripts/make-reference-blobs.sh`,
//! ctr-remote 0.12): our reader opens and verifies them and sees exactly
//! the source layer; our writer, given the same source, makes the same TOC
//! and a blob within 1% of the reference's size.

use estargz::index::NodeKind;
use estargz::writer::{convert, WriterOptions};
use estargz::{Index, Layer, NodeId, Toc, TocEntry};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;

fn data(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Reference {
    blob: Vec<u8>,
    toc_digest: String,
    uncompressed_size: u64,
    diff_id: String,
}

fn reference(name: &str) -> Reference {
    let meta: serde_json::Value =
        serde_json::from_slice(&data(&format!("go-{name}.json"))).unwrap();
    let ann = &meta["descriptor"]["annotations"];
    let blob = data(meta["file"].as_str().unwrap());
    assert_eq!(meta["descriptor"]["size"].as_u64(), Some(blob.len() as u64));
    Reference {
        blob,
        toc_digest: ann["containerd.io/snapshot/stargz/toc.digest"]
            .as_str()
            .unwrap()
            .into(),
        uncompressed_size: ann["io.containers.estargz.uncompressed-size"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
        diff_id: meta["diff_id"].as_str().unwrap().into(),
    }
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn read_all(l: &Layer<&[u8]>, id: NodeId) -> Vec<u8> {
    let mut buf = vec![0u8; l.index.node(id).unwrap().size as usize];
    assert_eq!(l.read_file(id, 0, &mut buf).unwrap(), buf.len());
    buf
}

/// Every entry of the source tar, as the layer shows it.
fn compare_with_source(l: &Layer<&[u8]>) {
    let src = gunzip(&data("source-layer.tar.gz"));
    let mut ar = tar::Archive::new(&src[..]);
    let mut seen = 0;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e.path().unwrap().to_string_lossy().into_owned();
        let h = e.header().clone();
        let id = l
            .index
            .lookup(&path)
            .unwrap_or_else(|| panic!("{path} missing"));
        let n = l.index.node(id).unwrap();
        assert_eq!(n.mtime, h.mtime().unwrap() as i64, "{path}");
        let mut xattrs = BTreeMap::new();
        if let Some(exts) = e.pax_extensions().unwrap() {
            for x in exts {
                let x = x.unwrap();
                if let Some(k) = x.key().unwrap().strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(k.to_string(), x.value_bytes().to_vec());
                }
            }
        }
        use tar::EntryType as T;
        let kind = match h.entry_type() {
            T::Link => {
                let target = h
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                assert_eq!(l.index.lookup(&target), Some(id), "{path}");
                assert!(n.nlink >= 2);
                seen += 1;
                continue;
            }
            T::Regular => {
                let mut content = Vec::new();
                e.read_to_end(&mut content).unwrap();
                assert!(read_all(l, id) == content, "content of {path}");
                NodeKind::Reg
            }
            T::Directory => NodeKind::Dir,
            T::Symlink => {
                let t = h
                    .link_name()
                    .unwrap()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                assert_eq!(n.link_target.as_deref(), Some(t.as_str()));
                NodeKind::Symlink
            }
            T::Char | T::Block => {
                assert_eq!(Some(n.dev_major), h.device_major().unwrap(), "{path}");
                assert_eq!(Some(n.dev_minor), h.device_minor().unwrap(), "{path}");
                if h.entry_type() == T::Char {
                    NodeKind::Char
                } else {
                    NodeKind::Block
                }
            }
            T::Fifo => NodeKind::Fifo,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(n.kind, kind, "{path}");
        assert_eq!(n.mode, h.mode().unwrap() & 0o7777, "{path}");
        assert_eq!(
            (n.uid, n.gid),
            (h.uid().unwrap() as u32, h.gid().unwrap() as u32)
        );
        assert_eq!(n.xattrs, xattrs, "{path}");
        seen += 1;
    }
    assert!(seen >= 40, "the source has {seen} entries");
}

fn open_reference(r: &Reference) -> Layer<&[u8]> {
    let l = estargz::open(&r.blob[..], r.blob.len() as u64, Some(&r.toc_digest)).unwrap();
    l.verify_all().unwrap();
    let raw = gunzip(&r.blob);
    assert_eq!(raw.len() as u64, r.uncompressed_size);
    assert_eq!(sha(&raw), r.diff_id);
    // Our serialisation of their TOC is theirs, byte for byte.
    assert_eq!(sha(&l.toc.to_json()), r.toc_digest);
    l
}

#[test]
fn go_default_blob() {
    let r = reference("default");
    let l = open_reference(&r);
    compare_with_source(&l);
    assert!(l.index.has_no_prefetch_landmark());
    let big = l.index.lookup("big/log.txt").unwrap();
    assert_eq!(l.index.node(big).unwrap().chunks.len(), 2);
}

#[test]
fn go_chunk64k_blob() {
    let r = reference("chunk64k");
    let l = open_reference(&r);
    compare_with_source(&l);
    let big = l.index.lookup("big/log.txt").unwrap();
    let chunks = &l.index.node(big).unwrap().chunks;
    assert!(chunks.len() > 90 && chunks.iter().all(|c| c.size <= 65536));
}

#[test]
fn go_prioritized_blob() {
    let r = reference("prioritized");
    let l = open_reference(&r);
    compare_with_source(&l);
    let end = l.index.prefetch_end().expect("prefetch landmark");
    for (path, first) in [
        ("etc/hostname", true),
        ("bin/jq", true),
        ("etc/services", false),
    ] {
        let c = &l.index.node(l.index.lookup(path).unwrap()).unwrap().chunks;
        assert_eq!(c[0].blob_end <= end, first, "{path}");
    }
}

/// The TOC without what legitimately differs (offsets; user names, which
/// the reference repeats per parallel group).
fn comparable(t: &Toc) -> Vec<TocEntry> {
    t.entries
        .iter()
        .map(|e| TocEntry {
            offset: 0,
            user_name: String::new(),
            group_name: String::new(),
            ..e.clone()
        })
        .collect()
}

fn ours_vs_theirs(name: &str, o: WriterOptions) {
    let r = reference(name);
    let theirs = estargz::open(&r.blob[..], r.blob.len() as u64, None).unwrap();
    let mut blob = Vec::new();
    let report = convert(&data("source-layer.tar.gz")[..], &mut blob, &o).unwrap();
    let ours = estargz::open(&blob[..], blob.len() as u64, Some(&report.toc_digest)).unwrap();
    compare_with_source(&ours);
    assert_eq!(comparable(&ours.toc), comparable(&theirs.toc));
    assert_eq!(report.uncompressed_size, r.uncompressed_size);
    let ratio = blob.len() as f64 / r.blob.len() as f64;
    eprintln!(
        "{name}: ours {} bytes, Go {} bytes, ratio {ratio:.4}",
        blob.len(),
        r.blob.len()
    );
    assert!((ratio - 1.0).abs() <= 0.01, "size ratio {ratio}");
    let _: &Index = &ours.index;
}

#[test]
fn our_writer_matches_go_default() {
    ours_vs_theirs("default", WriterOptions::default());
}

#[test]
fn our_writer_matches_go_chunk64k() {
    ours_vs_theirs(
        "chunk64k",
        WriterOptions {
            chunk_size: 65536,
            ..Default::default()
        },
    );
}

#[test]
fn our_writer_matches_go_prioritized() {
    let o = WriterOptions {
        prioritized_files: vec!["etc/hostname".into(), "bin/jq".into()],
        ..Default::default()
    };
    ours_vs_theirs("prioritized", o);
}
