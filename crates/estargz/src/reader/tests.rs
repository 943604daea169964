use super::*;
use crate::footer::write_footer;
use crate::writer::{convert, WriterOptions};
use std::io::Write;

fn sample_blob() -> (Vec<u8>, String) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, len) in [("a", 3000usize), ("d/b", 10), ("e", 0)] {
        let mut h = tar::Header::new_gnu();
        h.set_size(len as u64);
        h.set_mode(0o644);
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    let tar = b.into_inner().unwrap();
    let mut blob = Vec::new();
    let o = WriterOptions {
        chunk_size: 1024,
        ..Default::default()
    };
    let r = convert(&tar[..], &mut blob, &o).unwrap();
    (blob, r.toc_digest)
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A blob whose TOC member is `member`, preceded by `pad` bytes.
fn blob_with_member(pad: usize, member: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; pad];
    b.extend_from_slice(member);
    b.extend_from_slice(&write_footer(pad as u64));
    b
}

fn toc_member(json: &[u8], claimed: Option<u64>) -> Vec<u8> {
    let mut raw =
        tarfmt::plain_reg_header(TOC_TAR_NAME, claimed.unwrap_or(json.len() as u64)).to_vec();
    raw.extend_from_slice(json);
    raw.resize(raw.len() + 2048, 0);
    gz(&raw)
}

#[test]
fn opens_with_digest_and_reads() {
    let (blob, digest) = sample_blob();
    let l = open(&blob[..], blob.len() as u64, Some(&digest)).unwrap();
    assert_eq!(l.toc_digest, digest);
    let a = l.index.lookup("a").unwrap();
    let mut buf = vec![0u8; 5000];
    assert_eq!(l.read_file(a, 0, &mut buf).unwrap(), 3000);
    assert!(buf[..3000]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == (i * 7 % 251) as u8));
    assert_eq!(l.read_file(a, 2999, &mut buf).unwrap(), 1);
    assert_eq!(l.read_file(a, 3000, &mut buf).unwrap(), 0);
    assert!(matches!(
        l.read_file(ROOT_ID, 0, &mut buf),
        Err(Error::NotAFile(0))
    ));
    assert!(matches!(
        l.read_file(999, 0, &mut buf),
        Err(Error::NoSuchNode(999))
    ));
    l.verify_all().unwrap();
    // The same through a file on disk.
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&blob).unwrap();
    let l = open(f, blob.len() as u64, Some(&digest)).unwrap();
    l.verify_all().unwrap();
}

const ROOT_ID: NodeId = crate::index::ROOT;

/// Counts reads: `open` needs at most two.
struct Counting<'a>(&'a [u8], std::cell::Cell<usize>);
impl ReadAt for Counting<'_> {
    fn read_at(&self, off: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.1.set(self.1.get() + 1);
        self.0.read_at(off, buf)
    }
}

#[test]
fn at_most_two_reads() {
    let (blob, _) = sample_blob();
    let c = Counting(&blob, Default::default());
    open(&c, blob.len() as u64, None).unwrap();
    assert_eq!(c.1.get(), 1, "small blob: one tail read");
    // A TOC starting before the 64 KiB tail needs exactly one more.
    let json = Toc {
        version: 1,
        entries: vec![],
    }
    .to_json();
    let mut member = toc_member(&json, None);
    let mut pad = vec![0u8; 100_000];
    pad.append(&mut member);
    let big = blob_with_member(0, &pad);
    let c = Counting(&big, Default::default());
    // The padding is not gzip: the point is the number of reads before parsing.
    let _ = open(&c, big.len() as u64, None);
    assert_eq!(c.1.get(), 2);
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let (blob, digest) = sample_blob();
    for cut in 0..blob.len() {
        let b = &blob[..cut];
        assert!(open(b, cut as u64, Some(&digest)).is_err(), "cut at {cut}");
    }
}

#[test]
fn every_bit_flip_is_caught_or_harmless() {
    let (blob, digest) = sample_blob();
    for i in 0..blob.len() {
        let mut b = blob.clone();
        b[i] ^= 0x10;
        // A flip in a header-only member can go unnoticed; served bytes never can.
        if let Ok(l) = open(&b[..], b.len() as u64, Some(&digest)) {
            match l.verify_all() {
                Ok(()) => {
                    let a = l.index.lookup("a").unwrap();
                    let mut buf = vec![0u8; 3000];
                    l.read_file(a, 0, &mut buf).unwrap();
                    assert!(buf
                        .iter()
                        .enumerate()
                        .all(|(i, &x)| x == (i * 7 % 251) as u8));
                }
                Err(e) => assert!(matches!(
                    e,
                    Error::DigestMismatch { .. } | Error::Gzip(_) | Error::ShortChunk { .. }
                )),
            }
        }
    }
}

#[test]
fn bad_blobs_are_typed_errors() {
    let (blob, _) = sample_blob();
    assert!(matches!(
        open(&[0u8; 10][..], 10, None),
        Err(Error::TooSmall(10))
    ));
    assert!(matches!(
        open(&[0u8; 100][..], 100, None),
        Err(Error::BadFooter(_))
    ));
    // Footer pointing at or past itself.
    let mut b = blob.clone();
    let n = b.len();
    b[n - 51..].copy_from_slice(&write_footer(n as u64));
    assert!(matches!(
        open(&b[..], n as u64, None),
        Err(Error::TocOffsetOutOfRange { .. })
    ));
    // Wrong TOC digest.
    let r = open(&blob[..], blob.len() as u64, Some("sha256:00"));
    assert!(matches!(r, Err(Error::TocDigestMismatch { .. })));
    // Not gzip, not a tar, wrong name, malformed JSON, over the cap.
    let bad = blob_with_member(10, b"this is not gzip at all");
    assert!(matches!(
        open(&bad[..], bad.len() as u64, None),
        Err(Error::BadTocMember(_))
    ));
    let bad = blob_with_member(10, &gz(b"short"));
    assert!(matches!(
        open(&bad[..], bad.len() as u64, None),
        Err(Error::BadTocMember(_))
    ));
    let mut raw = tarfmt::plain_reg_header("other.json", 2).to_vec();
    raw.extend_from_slice(b"{}");
    let bad = blob_with_member(0, &gz(&raw));
    assert!(matches!(
        open(&bad[..], bad.len() as u64, None),
        Err(Error::BadTocMember(_))
    ));
    let bad = blob_with_member(0, &toc_member(b"{\"version\": 1, \"entries\": [", None));
    assert!(matches!(
        open(&bad[..], bad.len() as u64, None),
        Err(Error::TocJson(_))
    ));
    let bad = blob_with_member(
        0,
        &toc_member(
            b"{\"version\":1,\"entries\":[{\"name\":\"x\",\"type\":\"bogus\"}]}",
            None,
        ),
    );
    assert!(matches!(
        open(&bad[..], bad.len() as u64, None),
        Err(Error::TocJson(_))
    ));
    let bad = blob_with_member(0, &toc_member(b"{}", Some(MAX_TOC_JSON + 1)));
    assert!(matches!(
        open(&bad[..], bad.len() as u64, None),
        Err(Error::TocTooLarge { .. })
    ));
    let bad = blob_with_member(
        0,
        &toc_member(b"{\"version\":1,\"entries\":[]}", Some(5000)),
    );
    assert!(matches!(
        open(&bad[..], bad.len() as u64, None),
        Err(Error::BadTocMember(_))
    ));
    // A TOC region over the cap is refused before it is read.
    let f = Footer {
        toc_offset: 0,
        size: 51,
        legacy: false,
        compression: crate::Compression::Gzip,
        toc_size: None,
    };
    assert!(matches!(
        toc_region(&f, MAX_TOC_MEMBER + 100),
        Err(Error::TocTooLarge { .. })
    ));
    // Valid JSON, invalid tree.
    let json = br#"{"version":1,"entries":[{"name":"../x","type":"dir"}]}"#;
    let bad = blob_with_member(0, &toc_member(json, None));
    assert!(matches!(
        open(&bad[..], bad.len() as u64, None),
        Err(Error::Toc(_))
    ));
    let json = br#"{"version":1,"entries":[{"name":"x","type":"reg","size":5,"offset":99999,"chunkDigest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}]}"#;
    let bad = blob_with_member(10, &toc_member(json, None));
    assert!(matches!(
        open(&bad[..], bad.len() as u64, None),
        Err(Error::Toc(_))
    ));
}

fn chunk(size: u64, digest: &str) -> Chunk {
    Chunk {
        blob_offset: 0,
        blob_end: 0,
        inner_offset: 0,
        file_offset: 0,
        size,
        digest: digest.into(),
        compression: crate::Compression::Gzip,
        verified: true,
    }
}

#[test]
fn decompress_chunk_checks_everything() {
    let data = b"0123456789";
    let member = gz(data);
    let d = sha256_digest(&data[2..7]);
    let c = Chunk {
        inner_offset: 2,
        ..chunk(5, &d)
    };
    assert_eq!(decompress_chunk(&member, &c).unwrap(), &data[2..7]);
    let wrong = chunk(5, &d);
    assert!(matches!(
        decompress_chunk(&member, &wrong),
        Err(Error::DigestMismatch { .. })
    ));
    assert!(matches!(
        decompress_chunk(b"garbage!", &c),
        Err(Error::Gzip(_))
    ));
    assert!(matches!(
        decompress_chunk(&member[..member.len() / 2], &c),
        Err(Error::Gzip(_))
    ));
    let past = Chunk {
        inner_offset: 8,
        ..chunk(5, &d)
    };
    assert!(matches!(
        decompress_chunk(&member, &past),
        Err(Error::ShortChunk { .. })
    ));
    let far = Chunk {
        inner_offset: 1 << 40,
        ..chunk(5, &d)
    };
    assert!(matches!(
        decompress_chunk(&member, &far),
        Err(Error::ShortChunk { .. })
    ));
    // A lying size allocates nothing like it.
    let huge = chunk(1 << 50, &d);
    assert!(matches!(
        decompress_chunk(&member, &huge),
        Err(Error::ShortChunk { .. })
    ));
}

#[test]
fn zip_bomb_output_is_bounded_by_size() {
    let bomb = gz(&vec![0u8; 64 << 20]);
    assert!(bomb.len() < 200 << 10);
    let c = chunk(10, &sha256_digest(&[0u8; 10]));
    let t = std::time::Instant::now();
    assert_eq!(decompress_chunk(&bomb, &c).unwrap(), vec![0u8; 10]);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(1),
        "stopped after 10 bytes"
    );
}
