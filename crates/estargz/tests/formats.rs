//! The other layouts the writer makes and the reader takes: legacy CRFS
//! stargz (no chunk digests, no landmarks, 47-byte footer) and
//! min-chunk-size eStargz (small files sharing gzip members at inner offsets).

mod common;

use common::*;
use estargz::error::TocError;
use estargz::writer::{convert, WriterOptions};
use estargz::{Error, IndexOptions};
use std::collections::HashSet;
use std::io::Read;

fn small_files(n: usize) -> Vec<Spec> {
    let mut v = vec![spec("./", Want::Dir), spec("etc/", Want::Dir)];
    for i in 0..n {
        v.push(spec(
            &format!("etc/f{i:03}"),
            Want::File(content(i as u64, 100 + 37 * i)),
        ));
    }
    v.push(spec("big", Want::File(content(7, 50_000))));
    v
}

fn files(specs: &[Spec]) -> impl Iterator<Item = (&str, &Vec<u8>)> {
    specs.iter().filter_map(|s| match &s.want {
        Want::File(c) => Some((s.name.as_str(), c)),
        _ => None,
    })
}

fn read_all<R: estargz::ReadAt>(layer: &estargz::Layer<R>, specs: &[Spec]) {
    for (name, c) in files(specs) {
        let id = layer.index.lookup(name).unwrap();
        let mut buf = vec![0u8; c.len() + 5];
        assert_eq!(layer.read_file(id, 0, &mut buf).unwrap(), c.len(), "{name}");
        assert!(buf[..c.len()] == c[..], "content of {name}");
    }
}

#[test]
fn legacy_stargz_has_no_digests_and_opens_only_unverified() {
    let specs = small_files(20);
    let tar = build_tar(&specs);
    let o = WriterOptions {
        chunk_size: 4096,
        legacy: true,
        ..Default::default()
    };
    let mut blob = Vec::new();
    let r = convert(&tar[..], &mut blob, &o).unwrap();
    let f = estargz::parse_footer(&blob).unwrap();
    assert!(f.legacy);
    assert_eq!(f.size, 47);
    // Refused as it is: every chunk needs a digest.
    match estargz::open(&blob[..], blob.len() as u64, None) {
        Err(Error::Toc(TocError::MissingChunkDigest(_))) => {}
        other => panic!("expected MissingChunkDigest, got {:?}", other.err()),
    }
    let opts = IndexOptions {
        unverified_key: Some(r.blob_digest.clone()),
        ..Default::default()
    };
    let layer = estargz::open_with(&blob[..], blob.len() as u64, None, &opts).unwrap();
    assert!(layer.toc.entries.iter().all(|e| e.chunk_digest.is_empty()));
    assert!(!layer
        .toc
        .entries
        .iter()
        .any(|e| e.name.contains("landmark")));
    let chunks: Vec<_> = layer.index.all_chunks().map(|(_, c)| c.clone()).collect();
    assert_eq!(layer.index.unverified_chunks(), chunks.len());
    assert!(chunks.iter().all(|c| !c.verified));
    // Cache keys are distinct per place and per layer.
    let keys: HashSet<_> = chunks.iter().map(|c| c.digest.clone()).collect();
    assert_eq!(keys.len(), chunks.len());
    let other = IndexOptions {
        unverified_key: Some("sha256:other".into()),
        ..Default::default()
    };
    let l2 = estargz::open_with(&blob[..], blob.len() as u64, None, &other).unwrap();
    assert!(l2
        .index
        .all_chunks()
        .all(|(_, c)| !keys.contains(&c.digest)));
    read_all(&layer, &specs);
    // Still a plain tar.gz for containerd.
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..])
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(raw.len() as u64, r.uncompressed_size);
    // Prioritized files need a landmark: refused.
    let bad = WriterOptions {
        prioritized_files: vec!["big".into()],
        ..o
    };
    assert!(matches!(
        convert(&tar[..], &mut Vec::new(), &bad),
        Err(Error::BadOption(_))
    ));
}

#[test]
fn a_present_but_malformed_digest_is_refused_even_unverified() {
    let specs = small_files(2);
    let mut blob = Vec::new();
    convert(&build_tar(&specs)[..], &mut blob, &WriterOptions::default()).unwrap();
    let layer = estargz::open(&blob[..], blob.len() as u64, None).unwrap();
    let mut toc = layer.toc.clone();
    let e = toc.entries.iter_mut().find(|e| e.name == "big").unwrap();
    e.chunk_digest = "sha256:nothex".into();
    let opts = IndexOptions {
        unverified_key: Some("k".into()),
        ..Default::default()
    };
    let r = estargz::Index::from_toc_with(&toc, layer.index.toc_offset, blob.len() as u64, &opts);
    assert!(matches!(r, Err(TocError::MissingChunkDigest(_))));
}

#[test]
fn min_chunk_size_packs_small_files_into_shared_members() {
    let specs = small_files(40);
    let tar = build_tar(&specs);
    let o = WriterOptions {
        chunk_size: 16 << 10,
        min_chunk_size: 8 << 10,
        ..Default::default()
    };
    let mut blob = Vec::new();
    let r = convert(&tar[..], &mut blob, &o).unwrap();
    let layer = estargz::open(&blob[..], blob.len() as u64, Some(&r.toc_digest)).unwrap();
    let chunks: Vec<_> = layer.index.all_chunks().map(|(_, c)| c.clone()).collect();
    let members: HashSet<u64> = chunks.iter().map(|c| c.blob_offset).collect();
    assert!(
        members.len() * 3 < chunks.len(),
        "{} members for {} chunks",
        members.len(),
        chunks.len()
    );
    assert!(chunks.iter().any(|c| c.inner_offset > 0));
    assert!(chunks.iter().all(|c| c.verified));
    // The landmark keeps a member of its own.
    let lm = layer.index.lookup(".no.prefetch.landmark").unwrap();
    let lm_off = layer.index.node(lm).unwrap().chunks[0].blob_offset;
    assert_eq!(chunks.iter().filter(|c| c.blob_offset == lm_off).count(), 1);
    read_all(&layer, &specs);
    layer.verify_all().unwrap();
    // Smaller than one member per chunk.
    let mut plain = Vec::new();
    let o1 = WriterOptions {
        chunk_size: 16 << 10,
        ..Default::default()
    };
    let r1 = convert(&tar[..], &mut plain, &o1).unwrap();
    assert!(
        r.blob_size < r1.blob_size,
        "{} vs {}",
        r.blob_size,
        r1.blob_size
    );
}

#[test]
fn min_chunk_size_is_bounded() {
    let o = WriterOptions {
        min_chunk_size: 33 << 20,
        ..Default::default()
    };
    let tar = build_tar(&small_files(1));
    assert!(matches!(
        convert(&tar[..], &mut Vec::new(), &o),
        Err(Error::BadOption(_))
    ));
}

#[test]
fn external_toc_keeps_the_toc_out_of_the_blob() {
    let specs = small_files(10);
    let tar = build_tar(&specs);
    let o = WriterOptions {
        chunk_size: 4096,
        external_toc: true,
        ..Default::default()
    };
    let mut blob = Vec::new();
    let r = convert(&tar[..], &mut blob, &o).unwrap();
    let toc = r.external_toc.clone().expect("the TOC member");
    assert!(estargz::external::is_footer(&blob));
    assert!(matches!(
        estargz::open(&blob[..], blob.len() as u64, None),
        Err(Error::ExternalToc(_))
    ));
    let layer = estargz::open_external(
        &blob[..],
        blob.len() as u64,
        &toc,
        Some(&r.toc_digest),
        &IndexOptions::default(),
    )
    .unwrap();
    read_all(&layer, &specs);
    layer.verify_all().unwrap();
    // The layer is still a tar.gz (without the TOC entry): its diff ID.
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..])
        .read_to_end(&mut raw)
        .unwrap();
    assert_eq!(estargz::reader::sha256_digest(&raw), r.diff_id);
    assert!(!String::from_utf8_lossy(&raw).contains("stargz.index.json"));
    // The wrong TOC digest, or another blob's TOC, is refused.
    assert!(matches!(
        estargz::open_external(
            &blob[..],
            blob.len() as u64,
            &toc,
            Some("sha256:00"),
            &IndexOptions::default()
        ),
        Err(Error::TocDigestMismatch { .. })
    ));
    let mut plain = Vec::new();
    convert(&tar[..], &mut plain, &WriterOptions::default()).unwrap();
    assert!(matches!(
        estargz::open_external(
            &plain[..],
            plain.len() as u64,
            &toc,
            None,
            &IndexOptions::default()
        ),
        Err(Error::ExternalToc(_))
    ));
}

#[test]
fn unverified_mode_still_refuses_crafted_tocs() {
    let specs = small_files(3);
    let o = WriterOptions {
        legacy: true,
        ..Default::default()
    };
    let mut blob = Vec::new();
    convert(&build_tar(&specs)[..], &mut blob, &o).unwrap();
    let opts = IndexOptions {
        unverified_key: Some("k".into()),
        ..Default::default()
    };
    let layer = estargz::open_with(&blob[..], blob.len() as u64, None, &opts).unwrap();
    let (toc, end, size) = (&layer.toc, layer.index.toc_offset, blob.len() as u64);
    let build = |t: &estargz::Toc| estargz::Index::from_toc_with(t, end, size, &opts);
    // A duplicate entry.
    let mut dup = toc.clone();
    let again = dup
        .entries
        .iter()
        .find(|e| e.name == "big")
        .unwrap()
        .clone();
    dup.entries.push(again);
    assert!(matches!(build(&dup), Err(TocError::Duplicate(_))));
    // A name escaping the layer.
    let mut trav = toc.clone();
    trav.entries
        .iter_mut()
        .find(|e| e.name == "big")
        .unwrap()
        .name = "../../etc/passwd".into();
    assert!(matches!(build(&trav), Err(TocError::BadName(_))));
    // A chunk at or past the TOC.
    let mut past = toc.clone();
    past.entries
        .iter_mut()
        .find(|e| e.name == "big")
        .unwrap()
        .offset = end as i64;
    assert!(matches!(
        build(&past),
        Err(TocError::ChunkOutOfRange { .. })
    ));
    // A TOC offset past the end of the blob.
    assert!(estargz::Index::from_toc_with(toc, size + 1, size, &opts).is_err());
}
