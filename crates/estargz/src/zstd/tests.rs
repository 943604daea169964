use super::*;
use crate::reader::{open, toc_region};
use crate::writer::{convert, WriterOptions};
use crate::{parse_footer as any_footer, Error};
use std::io::Read;

/// A tar with a small file, a file of `big` bytes (several chunks at
/// chunk size 1000), a directory and a symlink.
fn tar(big: usize) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    };
    add("etc/hello", b"hello zstd\n");
    let data: Vec<u8> = (0..big).map(|i| (i * 7 % 251) as u8).collect();
    add("bin/big", &data);
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "link", "etc/hello").unwrap();
    b.into_inner().unwrap()
}

fn zopts() -> WriterOptions {
    WriterOptions {
        chunk_size: 1000,
        compression: Compression::Zstd,
        ..Default::default()
    }
}

fn blob(big: usize) -> (Vec<u8>, crate::writer::WriteReport) {
    let mut out = Vec::new();
    let r = convert(&tar(big)[..], &mut out, &zopts()).unwrap();
    (out, r)
}

#[test]
fn footer_round_trip_and_layout() {
    let f = write_footer(1000, 77, 300);
    assert_eq!(f[..8], [0x50, 0x2a, 0x4d, 0x18, 40, 0, 0, 0]);
    assert_eq!(u64::from_le_bytes(f[8..16].try_into().unwrap()), 1008);
    assert_eq!(&f[40..], b"GnUlInUx");
    let mut tail = vec![9u8; 30];
    tail.extend_from_slice(&f);
    let got = any_footer(&tail).unwrap();
    assert_eq!(got.toc_offset, 1000);
    assert_eq!(got.size, FOOTER_SIZE);
    assert_eq!(got.compression, Compression::Zstd);
    assert_eq!(got.toc_size, Some(85));
    // TOC region: the skippable frame, 8 + 77 bytes, right before the footer.
    assert_eq!(toc_region(&got, 1000 + 85 + 48).unwrap(), 1000..1085);
}

#[test]
fn bad_footers_are_typed_errors() {
    let good = write_footer(1000, 77, 300);
    // Not a skippable frame around the footer.
    let mut f = good;
    f[0] = 0;
    assert!(matches!(any_footer(&f), Err(Error::BadFooter(_))));
    // Wrong manifest type.
    let mut f = good;
    f[32] = 2;
    assert!(matches!(any_footer(&f), Err(Error::BadFooter(_))));
    // TOC offset inside the skippable header, and a negative one.
    let mut f = good;
    f[8..16].copy_from_slice(&3u64.to_le_bytes());
    assert!(matches!(any_footer(&f), Err(Error::BadFooter(_))));
    let mut f = good;
    f[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(any_footer(&f), Err(Error::BadFooter(_))));
    // TOC offset past the end of the blob.
    let past = any_footer(&write_footer(5000, 77, 300)).unwrap();
    assert!(matches!(
        toc_region(&past, 1000),
        Err(Error::TocOffsetOutOfRange { .. })
    ));
    // The footer's TOC length disagrees with the bytes before the footer.
    let f = any_footer(&good).unwrap();
    assert!(matches!(
        toc_region(&f, 1000 + 85 + 48 + 5),
        Err(Error::TocFrameSize {
            declared: 77,
            actual: 82
        })
    ));
}

#[test]
fn writes_what_it_reads_and_the_tar_stream_is_the_diff_id() {
    let (blob, r) = blob(3500);
    // The whole blob decompresses (skippable frames skipped) to a tar whose
    // hash is the diff ID and whose size is the uncompressed size.
    let mut tar_bytes = Vec::new();
    ::zstd::stream::read::Decoder::new(&blob[..])
        .unwrap()
        .read_to_end(&mut tar_bytes)
        .unwrap();
    assert_eq!(sha256_digest(&tar_bytes), r.diff_id);
    assert_eq!(tar_bytes.len() as u64, r.uncompressed_size);
    let names: Vec<String> = tar::Archive::new(&tar_bytes[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(names.contains(&"bin/big".to_string()), "{names:?}");

    let layer = open(&blob[..], blob.len() as u64, Some(&r.toc_digest)).unwrap();
    assert_eq!(layer.footer.compression, Compression::Zstd);
    assert_eq!(layer.index.compression, Compression::Zstd);
    let id = layer.index.lookup("bin/big").unwrap();
    let node = layer.index.node(id).unwrap();
    assert_eq!(node.chunks.len(), 4);
    assert!(node
        .chunks
        .iter()
        .all(|c| c.compression == Compression::Zstd));
    let mut buf = vec![0u8; 3500];
    assert_eq!(layer.read_file(id, 0, &mut buf).unwrap(), 3500);
    let want: Vec<u8> = (0..3500).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(buf, want);
    layer.verify_all().unwrap();

    // Annotations: checksum of the compressed TOC, position of it.
    let (checksum, position) = r.zstd_manifest.clone().unwrap();
    let region = toc_region(&layer.footer, blob.len() as u64).unwrap();
    let member = &blob[region.start as usize..region.end as usize];
    assert_eq!(manifest_checksum(member).unwrap(), checksum);
    let p: Vec<u64> = position.split(':').map(|x| x.parse().unwrap()).collect();
    assert_eq!(p[0], region.start + 8);
    assert_eq!(p[1], region.end - region.start - 8);
    assert_eq!(p[3], 1);
    assert_eq!(crate::reader::member_compression(member), Compression::Zstd);

    // A wrong TOC digest is refused.
    assert!(matches!(
        open(&blob[..], blob.len() as u64, Some("sha256:00")),
        Err(Error::TocDigestMismatch { .. })
    ));
}

#[test]
fn same_input_same_blob() {
    assert_eq!(blob(2500).0, blob(2500).0);
}

#[test]
fn toc_frame_lying_about_its_size_is_refused() {
    let (blob, _) = blob(10);
    let f = any_footer(&blob).unwrap();
    let region = toc_region(&f, blob.len() as u64).unwrap();
    let mut member = blob[region.start as usize..region.end as usize].to_vec();
    let real = u32::from_le_bytes(member[4..8].try_into().unwrap());
    member[4..8].copy_from_slice(&(real + 10).to_le_bytes());
    assert!(matches!(
        crate::parse_toc_member(&member),
        Err(Error::TocFrameSize { .. })
    ));
    // The same lie inside a whole blob.
    let mut bad = blob.clone();
    bad[region.start as usize + 4..region.start as usize + 8]
        .copy_from_slice(&(real - 3).to_le_bytes());
    assert!(matches!(
        open(&bad[..], bad.len() as u64, None),
        Err(Error::TocFrameSize { .. })
    ));
    // Garbage instead of a zstd frame inside the skippable frame.
    let mut bad = member.clone();
    bad[4..8].copy_from_slice(&real.to_le_bytes());
    bad[8] ^= 0xff;
    assert!(matches!(
        crate::parse_toc_member(&bad),
        Err(Error::BadTocMember(_))
    ));
    // A truncated zstd frame.
    let mut short = member[..member.len() - 5].to_vec();
    short[4..8].copy_from_slice(&(real - 5).to_le_bytes());
    assert!(matches!(
        crate::parse_toc_member(&short),
        Err(Error::Zstd(_))
    ));
}

#[test]
fn footer_offset_past_the_end_through_open() {
    let (mut blob, _) = blob(10);
    let n = blob.len();
    blob[n - 40..n - 32].copy_from_slice(&(n as u64 * 2).to_le_bytes());
    assert!(matches!(
        open(&blob[..], n as u64, None),
        Err(Error::TocOffsetOutOfRange { .. })
    ));
}

#[test]
fn chunks_decode_by_their_compression_and_are_verified() {
    let (blob, _) = blob(3500);
    let layer = open(&blob[..], blob.len() as u64, None).unwrap();
    let id = layer.index.lookup("bin/big").unwrap();
    let c = layer.index.node(id).unwrap().chunks[1].clone();
    let member = &blob[c.blob_offset as usize..c.blob_end as usize];
    assert!(member.starts_with(&FRAME_MAGIC));
    assert_eq!(crate::decompress_chunk(member, &c).unwrap().len(), 1000);
    // Read as gzip it is not a gzip member.
    let gz = Chunk {
        compression: Compression::Gzip,
        ..c.clone()
    };
    assert!(matches!(
        crate::decompress_chunk(member, &gz),
        Err(Error::Gzip(_))
    ));
    // A flipped byte: zstd error or digest mismatch, never data.
    let mut bad = member.to_vec();
    let at = bad.len() / 2;
    bad[at] ^= 0x55;
    assert!(matches!(
        crate::decompress_chunk(&bad, &c),
        Err(Error::Zstd(_) | Error::DigestMismatch { .. } | Error::ShortChunk { .. })
    ));
    // A size the frame does not hold.
    let long = Chunk {
        size: 5000,
        ..c.clone()
    };
    assert!(matches!(
        crate::decompress_chunk(member, &long),
        Err(Error::ShortChunk { .. })
    ));
}

#[test]
fn zstd_level_is_checked() {
    let o = WriterOptions {
        zstd_level: 0,
        ..zopts()
    };
    assert!(matches!(
        convert(&tar(1)[..], Vec::new(), &o),
        Err(Error::BadOption(_))
    ));
}

use crate::index::Chunk;
