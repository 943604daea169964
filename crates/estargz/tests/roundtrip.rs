//! tar -> eStargz -> open -> every attribute and byte compared; the blob is
//! also a plain tar.gz that gunzip, the `tar` crate and GNU tar accept.

mod common;

use common::*;
use estargz::index::NodeKind;
use estargz::writer::{convert, WriteReport, WriterOptions};
use estargz::{Error, TarError};
use proptest::prelude::*;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};

fn opts(chunk: u64) -> WriterOptions {
    WriterOptions {
        chunk_size: chunk,
        ..Default::default()
    }
}

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn write(specs: &[Spec], o: &WriterOptions) -> (Vec<u8>, WriteReport) {
    let tar = build_tar(specs);
    let mut blob = Vec::new();
    let r = convert(&tar[..], &mut blob, o).unwrap();
    (blob, r)
}

fn gunzip(blob: &[u8]) -> Vec<u8> {
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(blob)
        .read_to_end(&mut raw)
        .unwrap();
    raw
}

/// Everything the layer says matches `specs`.
fn check(specs: &[Spec], blob: &[u8], r: &WriteReport) {
    assert_eq!(r.blob_digest, sha(blob));
    assert_eq!(r.blob_size, blob.len() as u64);
    let layer = estargz::open(blob, blob.len() as u64, Some(&r.toc_digest)).unwrap();
    assert_eq!(layer.toc_digest, r.toc_digest);
    let idx = &layer.index;
    for s in specs {
        let id = idx
            .lookup(&s.name)
            .unwrap_or_else(|| panic!("{} missing", s.name));
        let n = idx.node(id).unwrap();
        let kind = match &s.want {
            Want::Dir => NodeKind::Dir,
            Want::File(c) => {
                assert_eq!(n.size, c.len() as u64, "{}", s.name);
                let mut buf = vec![0u8; c.len() + 10];
                assert_eq!(layer.read_file(id, 0, &mut buf).unwrap(), c.len());
                assert!(buf[..c.len()] == c[..], "content of {}", s.name);
                // A read crossing chunk boundaries, from an odd offset.
                if c.len() > 3 {
                    let mut part = vec![0u8; c.len() - 3];
                    assert_eq!(layer.read_file(id, 2, &mut part).unwrap(), c.len() - 3);
                    assert!(part[..] == c[2..c.len() - 1]);
                }
                assert_eq!(n.digest.as_deref(), Some(sha(c).as_str()), "{}", s.name);
                NodeKind::Reg
            }
            Want::Symlink(t) => {
                assert_eq!(n.link_target.as_deref(), Some(t.as_str()));
                NodeKind::Symlink
            }
            Want::Hardlink(t) => {
                assert_eq!(Some(id), idx.lookup(t), "hardlink {} shares {}", s.name, t);
                assert!(n.nlink >= 2);
                continue;
            }
            Want::Char(ma, mi) | Want::Block(ma, mi) => {
                assert_eq!((n.dev_major, n.dev_minor), (*ma, *mi));
                if matches!(s.want, Want::Char(..)) {
                    NodeKind::Char
                } else {
                    NodeKind::Block
                }
            }
            Want::Fifo => NodeKind::Fifo,
        };
        assert_eq!(n.kind, kind, "{}", s.name);
        assert_eq!(n.mode, s.mode & 0o7777, "{}", s.name);
        assert_eq!((n.uid, n.gid), (s.uid as u32, s.gid as u32), "{}", s.name);
        assert_eq!(n.mtime, s.mtime as i64, "{}", s.name);
        assert_eq!(n.xattrs, s.xattrs, "{}", s.name);
    }
    layer.verify_all().unwrap();
    // containerd's view: gunzip the whole blob.
    let raw = gunzip(blob);
    assert_eq!(sha(&raw), r.diff_id);
    assert_eq!(raw.len() as u64, r.uncompressed_size);
    let mut names = Vec::new();
    for e in tar::Archive::new(&raw[..]).entries().unwrap() {
        names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
    }
    assert_eq!(names.last().map(String::as_str), Some("stargz.index.json"));
    for s in specs {
        assert!(names.iter().any(|n| n == &s.name), "{} not in tar", s.name);
    }
}

#[test]
fn round_trip_small_chunks() {
    let specs = sample_specs(1000);
    let (blob, r) = write(&specs, &opts(1000));
    check(&specs, &blob, &r);
    let layer = estargz::open(&blob[..], blob.len() as u64, None).unwrap();
    let big = layer.index.lookup("bin/f3007").unwrap();
    assert_eq!(layer.index.node(big).unwrap().chunks.len(), 4);
    assert!(layer.index.has_no_prefetch_landmark());
    assert_eq!(layer.toc.entries[0].name, ".no.prefetch.landmark");
}

#[test]
fn round_trip_default_options() {
    let specs = sample_specs(4096);
    let (blob, r) = write(&specs, &WriterOptions::default());
    check(&specs, &blob, &r);
}

#[test]
fn gnu_tar_accepts_the_blob() {
    let specs = sample_specs(1000);
    let (blob, _) = write(&specs, &opts(1000));
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&blob).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(f.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(list.contains("bin/f3007") && list.contains("stargz.index.json"));
    assert!(String::from_utf8_lossy(&out.stderr).is_empty());
}

#[test]
fn deterministic_and_batch_independent() {
    let specs = sample_specs(1000);
    let (a, ra) = write(&specs, &opts(1000));
    let (b, rb) = write(&specs, &opts(1000));
    let (c, _) = write(
        &specs,
        &WriterOptions {
            batch_bytes: 1,
            ..opts(1000)
        },
    );
    assert_eq!(ra, rb);
    assert!(a == b && a == c);
}

#[test]
fn gzip_input_gives_the_same_blob() {
    let specs = sample_specs(1000);
    let tar = build_tar(&specs);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    convert(&tar[..], &mut a, &opts(1000)).unwrap();
    convert(&gz[..], &mut b, &opts(1000)).unwrap();
    assert!(a == b);
}

#[test]
fn prioritized_files_come_first() {
    let specs = sample_specs(1000);
    let o = WriterOptions {
        prioritized_files: vec!["bin/f1001".into(), "/etc/hard".into(), "missing".into()],
        ..opts(1000)
    };
    let (blob, r) = write(&specs, &o);
    check(&specs, &blob, &r);
    assert_eq!(r.missed_prioritized, vec!["missing".to_string()]);
    let layer = estargz::open(&blob[..], blob.len() as u64, None).unwrap();
    let names: Vec<&str> = layer.toc.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names[..6],
        ["./", "bin/", "bin/f1001", "bin/f1001", "bin/f1", "etc/hard"]
    );
    assert_eq!(names[6], ".prefetch.landmark");
    let idx = &layer.index;
    let end = idx.prefetch_end().unwrap();
    assert!(!idx.has_no_prefetch_landmark());
    for (path, before) in [
        ("bin/f1001", true),
        ("bin/f1", true),
        ("bin/f1000", false),
        ("etc/xattr", false),
    ] {
        let c = &idx.node(idx.lookup(path).unwrap()).unwrap().chunks;
        assert!(c.iter().all(|c| (c.blob_end <= end) == before), "{path}");
    }
}

#[test]
fn reconverting_estargz_drops_old_toc_and_landmarks() {
    let specs = sample_specs(1000);
    let (blob, _) = write(&specs, &opts(1000));
    assert!(estargz::is_estargz(&blob[..], blob.len() as u64));
    let tar = build_tar(&specs);
    assert!(!estargz::is_estargz(&tar[..], tar.len() as u64));
    let mut again = Vec::new();
    let r = convert(&blob[..], &mut again, &opts(1000)).unwrap();
    check(&specs, &again, &r);
    let layer = estargz::open(&again[..], again.len() as u64, None).unwrap();
    let marks = layer
        .toc
        .entries
        .iter()
        .filter(|e| e.name.contains("landmark"))
        .count();
    assert_eq!(marks, 1);
    assert_eq!(again, blob, "converting our own output is a fixed point");
}

#[test]
fn later_duplicates_win() {
    let mut specs = vec![spec("a", Want::File(b"old".to_vec())), spec("b", Want::Dir)];
    specs.push(spec("./a", Want::File(b"new!".to_vec())));
    let (blob, r) = write(&specs, &opts(1000));
    let layer = estargz::open(&blob[..], r.blob_size, None).unwrap();
    let id = layer.index.lookup("a").unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(layer.read_file(id, 0, &mut buf).unwrap(), 4);
    assert_eq!(&buf[..4], b"new!");
}

#[test]
fn toc_json_is_go_shaped() {
    let specs = sample_specs(1000);
    let (blob, r) = write(&specs, &opts(1000));
    let footer = estargz::parse_footer(&blob[blob.len() - 51..]).unwrap();
    let member = &blob[footer.toc_offset as usize..blob.len() - 51];
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(member)
        .read_to_end(&mut raw)
        .unwrap();
    let size = raw[512..].iter().position(|&b| b == 0).unwrap();
    let json = &raw[512..512 + size];
    assert_eq!(sha(json), r.toc_digest);
    let text = std::str::from_utf8(json).unwrap();
    assert!(
        text.starts_with("{\n\t\"version\": 1,\n\t\"entries\": [\n\t\t{\n\t\t\t\"name\": "),
        "{text:.80}"
    );
    assert!(text.contains("\\u003c\\u0026\\u003e") && !text.contains('<'));
    assert!(text.contains("\"xattrs\": {\n\t\t\t\t\"security.capability\": \"AQAAAv8A\""));
    let toc = estargz::Toc::from_json(json).unwrap();
    assert_eq!(toc.to_json(), json, "parse + serialise is byte-identical");
}

#[test]
fn bad_tar_input_is_a_typed_error() {
    let mut tar = build_tar(&sample_specs(1000));
    let conv = |t: &[u8]| convert(t, &mut Vec::new(), &opts(1000));
    assert!(matches!(
        conv(&tar[..1000]),
        Err(Error::Tar(TarError::Truncated(_)))
    ));
    let mut bad = tar.clone();
    bad[0] ^= 1;
    assert!(matches!(conv(&bad), Err(Error::Tar(TarError::Checksum(0)))));
    assert!(matches!(conv(&[0x1f, 0x8b, 1, 2, 3]), Err(Error::Gzip(_))));
    assert!(matches!(
        conv(b"definitely not a tar"),
        Err(Error::Tar(TarError::Truncated(0)))
    ));
    let escape = {
        // The tar crate refuses `..`; write the name field by hand.
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..18].copy_from_slice(b"a/../../etc/passwd");
        h.set_size(1);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &[1u8][..]).unwrap();
        b.into_inner().unwrap()
    };
    assert!(matches!(
        conv(&escape),
        Err(Error::Tar(TarError::BadName(_)))
    ));
    let dangling = build_tar(&[spec("h", Want::Hardlink("nowhere".into()))]);
    assert!(matches!(conv(&dangling), Err(Error::Toc(_))));
    // A GNU sparse entry.
    tar[156] = b'S';
    let sum: u32 = tar[..512]
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    tar[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    assert!(matches!(
        conv(&tar),
        Err(Error::Tar(TarError::Unsupported { typeflag: 'S', .. }))
    ));
    assert!(matches!(
        convert(&[][..], &mut Vec::new(), &opts(0)),
        Err(Error::BadOption(_))
    ));
    // An empty input is an empty layer.
    let mut out = Vec::new();
    convert(&[][..], &mut out, &opts(1000)).unwrap();
    assert!(estargz::open(&out[..], out.len() as u64, None).is_ok());
}

fn arb_specs() -> impl Strategy<Value = Vec<Spec>> {
    let name = prop::collection::vec(
        prop::sample::select(vec!["a", "b", "c.d", "é", ".wh.x"]),
        1..4,
    )
    .prop_map(|v| v.join("/"));
    let file = (
        name,
        0usize..200,
        any::<u64>(),
        0u32..0o7777,
        0u64..70000,
        1u64..2_000_000_000,
    )
        .prop_map(|(n, len, seed, mode, uid, mtime)| {
            let mut s = spec(&n, Want::File(content(seed, len)));
            (s.mode, s.uid, s.gid, s.mtime) = (mode, uid, uid / 2, mtime);
            s
        });
    prop::collection::vec(file, 0..12).prop_map(|files| {
        // Keep the last of each name and drop files whose path is another's parent.
        let mut out: Vec<Spec> = Vec::new();
        for f in files.into_iter().rev() {
            let clash = out.iter().any(|o| {
                o.name == f.name
                    || o.name.starts_with(&format!("{}/", f.name))
                    || f.name.starts_with(&format!("{}/", o.name))
            });
            if !clash {
                out.push(f);
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn prop_round_trip(specs in arb_specs(), chunk in 1u64..64, level in 0u32..=9) {
        let o = WriterOptions { chunk_size: chunk, compression_level: level, batch_bytes: 300, ..Default::default() };
        let (blob, r) = write(&specs, &o);
        check(&specs, &blob, &r);
    }
}
