//! Build, round-trip and read back real gzip tars; indexes that lie.

use super::*;
use estargz::index::{Chunk, Index, NodeKind};
use sha2::{Digest, Sha256};
use std::io::Write;

/// Compressible but not trivially so: words from a small LCG.
fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "layer",
        "chunk",
        "span",
        "window",
        "inflate",
        "registry",
        "snapshot",
        "overlay",
        "gzip",
        "tar",
        "index",
        "lazy",
        "python",
        "site-packages",
        "\n",
        "0x7f",
        "def",
        "import",
    ];
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.extend_from_slice(WORDS[(x >> 33) as usize % WORDS.len()].as_bytes());
        out.push(b' ');
        if (x >> 20).is_multiple_of(7) {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

struct Fixture {
    blob: Vec<u8>,
    digest: String,
    files: Vec<(&'static str, Vec<u8>)>,
}

fn tar_bytes(files: &[(&'static str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    b.append_data(&mut dir, "usr/lib/", std::io::empty())
        .unwrap();
    for (name, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_uid(1000);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    let mut l = tar::Header::new_gnu();
    l.set_entry_type(tar::EntryType::Symlink);
    l.set_size(0);
    b.append_link(&mut l, "usr/lib/link", "big.bin").unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    b.append_link(&mut h, "usr/lib/hard", "usr/lib/big.bin")
        .unwrap();
    let mut w = tar::Header::new_gnu();
    w.set_size(0);
    w.set_mode(0);
    b.append_data(&mut w, "etc/.wh.gone", std::io::empty())
        .unwrap();
    // An xattr through a PAX header.
    b.append_pax_extensions([("SCHILY.xattr.user.tag", b"blue".as_slice())])
        .unwrap();
    let mut x = tar::Header::new_ustar();
    x.set_size(3);
    x.set_mode(0o600);
    b.append_data(&mut x, "etc/tagged", b"abc".as_slice())
        .unwrap();
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn fixture() -> Fixture {
    let files = vec![
        ("usr/lib/a.txt", text(1, 1000)),
        ("usr/lib/big.bin", text(2, 700 << 10)),
        ("usr/lib/empty", Vec::new()),
        ("usr/lib/mid.py", text(3, 90 << 10)),
        ("usr/lib/b.txt", text(4, 5)),
    ];
    let blob = gzip(&tar_bytes(&files));
    Fixture {
        digest: digest(&blob),
        blob,
        files,
    }
}

fn opts() -> BuildOptions {
    BuildOptions {
        span_size: MIN_SPAN_SIZE,
        ..Default::default()
    }
}

fn built(f: &Fixture) -> GzIndex {
    let dir = tempfile::tempdir().unwrap();
    build(f.blob.as_slice(), &f.digest, &opts(), dir.path())
        .unwrap()
        .0
}

/// Every chunk of `id`, read through the decoder, concatenated.
fn read_file(idx: &Index, dec: &SpanDecoder, blob: &[u8], id: u32) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for c in &idx.nodes[id as usize].chunks {
        let member = &blob[c.blob_offset as usize..c.blob_end as usize];
        let mut r = dec.decode(member, &[c]);
        out.extend(r.pop().unwrap()?);
    }
    Ok(out)
}

#[test]
fn builds_round_trips_and_reads_every_file() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let (idx, report) = build(f.blob.as_slice(), &f.digest, &opts(), dir.path()).unwrap();
    assert!(report.checkpoints > 5, "{report:?}");
    assert!(report.pieces > report.checkpoints - 2, "{report:?}");
    let bytes = idx.to_bytes();
    let back = GzIndex::parse(&bytes).unwrap();
    assert_eq!(back.checkpoints, idx.checkpoints);
    assert_eq!(back.toc, idx.toc);
    back.check_layer(&f.digest, f.blob.len() as u64).unwrap();
    let li = back.layer_index().unwrap();
    let dec = SpanDecoder::new(&back);
    for (name, data) in &f.files {
        let id = li.lookup(name).unwrap();
        assert_eq!(&read_file(&li, &dec, &f.blob, id).unwrap(), data, "{name}");
        assert_eq!(
            li.nodes[id as usize].digest.as_deref(),
            Some(digest(data).as_str())
        );
    }
    // Metadata survives: symlink, hardlink, whiteout name, xattr, owner.
    let link = &li.nodes[li.lookup("usr/lib/link").unwrap() as usize];
    assert_eq!(link.kind, NodeKind::Symlink);
    assert_eq!(link.link_target.as_deref(), Some("big.bin"));
    assert_eq!(li.lookup("usr/lib/hard"), li.lookup("usr/lib/big.bin"));
    assert!(li.lookup("etc/.wh.gone").is_some());
    let tagged = &li.nodes[li.lookup("etc/tagged").unwrap() as usize];
    assert_eq!(
        tagged.xattrs.get("user.tag").map(Vec::as_slice),
        Some(b"blue".as_slice())
    );
    assert_eq!(
        li.nodes[li.lookup("usr/lib/a.txt").unwrap() as usize].uid,
        1000
    );
    // Pieces of one span decode together with one inflate.
    let big = li.lookup("usr/lib/mid.py").unwrap();
    let c0 = &li.nodes[big as usize].chunks[0];
    let same: Vec<&Chunk> = li
        .all_chunks()
        .map(|(_, c)| c)
        .filter(|c| c.blob_offset == c0.blob_offset)
        .collect();
    let member = &f.blob[c0.blob_offset as usize..c0.blob_end as usize];
    assert!(dec.decode(member, &same).iter().all(|r| r.is_ok()));
    eprintln!(
        "index {} bytes for a {}-byte layer ({} uncompressed), {} checkpoints",
        bytes.len(),
        f.blob.len(),
        report.uncompressed_size,
        report.checkpoints
    );
}

#[test]
fn a_layer_that_does_not_match_its_digest_is_refused() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let wrong = digest(b"other");
    let e = build(f.blob.as_slice(), &wrong, &opts(), dir.path()).unwrap_err();
    assert!(matches!(e, Error::LayerDigest { .. }), "{e}");
    let idx = built(&f);
    assert!(matches!(
        idx.check_layer(&wrong, f.blob.len() as u64),
        Err(Error::WrongLayer { .. })
    ));
    // Not gzip at all, and gzip cut short.
    let e = build(
        &b"plain tar bytes"[..],
        &digest(b"plain tar bytes"),
        &opts(),
        dir.path(),
    );
    assert!(matches!(e, Err(Error::Gzip(_))), "{e:?}");
    let cut = &f.blob[..f.blob.len() / 2];
    assert!(matches!(
        build(cut, &digest(cut), &opts(), dir.path()),
        Err(Error::Gzip(_))
    ));
}

#[test]
fn a_layer_changed_under_its_index_never_yields_wrong_bytes() {
    let f = fixture();
    let idx = built(&f);
    let li = idx.layer_index().unwrap();
    let dec = SpanDecoder::new(&idx);
    // Same size, other content: another layer's bytes at the same offsets.
    let other = fixture_with(9);
    let mut blob = other.blob.clone();
    blob.resize(f.blob.len(), 0);
    for (name, _) in &f.files {
        let id = li.lookup(name).unwrap();
        if li.nodes[id as usize].size > 0 {
            assert!(read_file(&li, &dec, &blob, id).is_err(), "{name}");
        }
    }
}

fn fixture_with(seed: u64) -> Fixture {
    let files = vec![
        ("usr/lib/a.txt", text(seed, 1000)),
        ("usr/lib/big.bin", text(seed + 1, 700 << 10)),
    ];
    let blob = gzip(&tar_bytes(&files));
    Fixture {
        digest: digest(&blob),
        blob,
        files,
    }
}

#[test]
fn lying_windows_offsets_and_digests_give_errors_not_bytes() {
    let f = fixture();
    let idx = built(&f);
    let big = "usr/lib/big.bin";
    let data = &f.files[1].1;
    // Each lie, then every read of the big file must fail (or, where a lie
    // happens not to matter to inflate, return the true bytes).
    type Lie = Box<dyn Fn(&mut GzIndex)>;
    let lies: Vec<(&str, Lie)> = vec![
        (
            "window",
            Box::new(|i: &mut GzIndex| {
                for c in i.checkpoints.iter_mut().skip(1) {
                    c.window.iter_mut().for_each(|b| *b = b.wrapping_add(1));
                }
            }),
        ),
        (
            "bit offset",
            Box::new(|i: &mut GzIndex| {
                for c in i.checkpoints.iter_mut().skip(1) {
                    c.in_bit += 1;
                }
            }),
        ),
        (
            "primed byte",
            Box::new(|i: &mut GzIndex| {
                for c in i.checkpoints.iter_mut().skip(1) {
                    c.prime ^= 0xff;
                }
            }),
        ),
        (
            "piece digest",
            Box::new(|i: &mut GzIndex| {
                for e in &mut i.toc.entries {
                    if !e.chunk_digest.is_empty() {
                        e.chunk_digest = format!("sha256:{}", "0".repeat(64));
                    }
                }
            }),
        ),
        (
            "inner offset",
            Box::new(|i: &mut GzIndex| {
                for e in &mut i.toc.entries {
                    if e.name == "usr/lib/big.bin" {
                        e.inner_offset += 7;
                    }
                }
            }),
        ),
    ];
    for (what, lie) in lies {
        let mut bad = idx.clone();
        lie(&mut bad);
        let parsed = match GzIndex::parse(&bad.to_bytes()).and_then(|b| {
            let li = b.layer_index()?;
            Ok((b, li))
        }) {
            Err(_) => continue, // refused at parse: fine
            Ok(p) => p,
        };
        let (b, li) = parsed;
        let dec = SpanDecoder::new(&b);
        let id = li.lookup(big).unwrap();
        match read_file(&li, &dec, &f.blob, id) {
            Err(_) => {}
            Ok(bytes) => assert_eq!(&bytes, data, "lie about {what} served wrong bytes"),
        }
        // At least the piece digest lie must be caught at read time.
        if what == "piece digest" || what == "window" {
            assert!(read_file(&li, &dec, &f.blob, id).is_err(), "{what}");
        }
    }
}

#[test]
fn structural_lies_are_refused_at_parse() {
    let f = fixture();
    let idx = built(&f);
    let mut v: Vec<GzIndex> = Vec::new();
    let mut a = idx.clone();
    a.checkpoints.swap(1, 2);
    v.push(a);
    let mut a = idx.clone();
    a.checkpoints[1].in_bit = (f.blob.len() as u64) * 8 + 3;
    v.push(a);
    let mut a = idx.clone();
    a.checkpoints[0].out = 5;
    v.push(a);
    let mut a = idx.clone();
    a.checkpoints[2].window = vec![0; 40 << 10];
    v.push(a);
    let mut a = idx.clone();
    a.span_size = 1;
    v.push(a);
    let mut a = idx.clone();
    a.layer_digest = "sha256:xyz".into();
    v.push(a);
    for (i, bad) in v.iter().enumerate() {
        assert!(GzIndex::parse(&bad.to_bytes()).is_err(), "case {i}");
    }
    // A piece not at a checkpoint, and one running past its span.
    let mut a = idx.clone();
    let e = a
        .toc
        .entries
        .iter_mut()
        .find(|e| !e.chunk_digest.is_empty())
        .unwrap();
    e.offset += 1;
    assert!(GzIndex::parse(&a.to_bytes())
        .unwrap()
        .layer_index()
        .is_err());
    let mut a = idx.clone();
    let e = a
        .toc
        .entries
        .iter_mut()
        .find(|e| !e.chunk_digest.is_empty())
        .unwrap();
    e.inner_offset = 1 << 30;
    assert!(GzIndex::parse(&a.to_bytes())
        .unwrap()
        .layer_index()
        .is_err());
    // Garbage and truncations.
    let bytes = idx.to_bytes();
    assert!(matches!(GzIndex::parse(b"nope"), Err(Error::Magic)));
    for n in [8, 9, 20, bytes.len() / 2, bytes.len() - 1] {
        assert!(GzIndex::parse(&bytes[..n]).is_err(), "cut at {n}");
    }
}

#[test]
fn several_gzip_members_get_a_checkpoint_each() {
    let files = vec![
        ("usr/lib/big.bin", text(5, 200 << 10)),
        ("f2", text(6, 300 << 10)),
    ];
    let tar = tar_bytes(&files);
    let cut = 512 * 200;
    let mut blob = gzip(&tar[..cut]);
    let second = blob.len() as u64;
    blob.extend(gzip(&tar[cut..]));
    let d = digest(&blob);
    let dir = tempfile::tempdir().unwrap();
    let (idx, _) = build(blob.as_slice(), &d, &opts(), dir.path()).unwrap();
    assert!(idx
        .checkpoints
        .iter()
        .any(|c| c.out == cut as u64 && c.in_bit / 8 >= second));
    let li = idx.layer_index().unwrap();
    let dec = SpanDecoder::new(&idx);
    for (name, data) in &files {
        let id = li.lookup(name).unwrap();
        assert_eq!(&read_file(&li, &dec, &blob, id).unwrap(), data);
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn parse_never_panics_on_mutations(pos in 0usize..4096, byte in 0u8..=255) {
        use std::sync::OnceLock;
        static BODY: OnceLock<Vec<u8>> = OnceLock::new();
        let good = BODY.get_or_init(|| built(&fixture_with(3)).to_bytes());
        let mut b = good.clone();
        let p = pos % b.len();
        b[p] = byte;
        if let Ok(i) = GzIndex::parse(&b) {
            let _ = i.layer_index();
        }
    }
}

#[test]
fn index_paths_are_named_by_layer_hex_only() {
    use std::path::{Path, PathBuf};
    let hex = "a".repeat(64);
    assert_eq!(
        index_path(Path::new("/d"), &format!("sha256:{hex}")),
        Some(PathBuf::from(format!("/d/{hex}.gzindex")))
    );
    assert_eq!(index_path(Path::new("/d"), "sha256:../../etc"), None);
    assert_eq!(index_path(Path::new("/d"), "md5:abc"), None);
}
