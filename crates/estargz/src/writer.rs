//! tar or tar.gz -> eStargz.
//!
//! Three steps:
//! 1. `input::scan` finds the entries of the (spooled, uncompressed) tar;
//!    later duplicates replace earlier ones, as the reference does.
//! 2. `plan` orders them (prioritized files and their parents first, then
//!    the landmark, then the rest) and cuts the output tar stream into gzip
//!    members: each chunk of a non-empty regular file starts a member, the
//!    tar headers that precede it sit in the member before.
//! 3. Members are compressed on every core (`pipeline`) under a budget of
//!    bytes in flight, and written in order while offsets, digests and the diff ID are filled in.
//!    The TOC member and the footer close the blob.
//!
//! With `Compression::Zstd` the members are zstd frames, the tar stream ends
//! with its end-of-archive blocks in a frame of their own, and the TOC and
//! footer are zstd:chunked's skippable frames (`crate::zstd`).
//!
//! Headers are copied byte for byte (PAX records, long names, xattrs,
//! devices, whiteouts all survive). Output is deterministic.

mod input;
mod pipeline;

/// The tar scanner, also used by `gzindex` to build a plain gzip layer's file table.
pub use input::{scan, InEntry, Kind};

use crate::blob::{read_exact_at, sha256_digest, ReadAt};
use crate::error::{Error, Result};
use crate::footer::{write_footer, write_legacy_footer};
use crate::index::{clean_path, Index, IndexOptions};
use crate::tarfmt::{self, BLOCK};
use crate::toc::{
    format_modtime, EntryType, Toc, TocEntry, LANDMARK_CONTENTS, NO_PREFETCH_LANDMARK,
    PREFETCH_LANDMARK, TOC_TAR_NAME,
};
use crate::Compression;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Seek, Write};

/// The reference's default chunk size.
pub const DEFAULT_CHUNK_SIZE: u64 = 4 << 20;
/// The reference's default level (`gzip.BestCompression`).
pub const DEFAULT_COMPRESSION_LEVEL: u32 = 9;

#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Largest uncompressed chunk of a regular file per gzip member.
    pub chunk_size: u64,
    /// gzip level, 0-9.
    pub compression_level: u32,
    /// Gzip (eStargz) or Zstd (zstd:chunked).
    pub compression: Compression,
    /// zstd level, 1-22 (used with `Compression::Zstd` only).
    pub zstd_level: i32,
    /// Paths to put first, in this order; then `.prefetch.landmark`.
    /// Empty: `.no.prefetch.landmark` first.
    pub prioritized_files: Vec<String>,
    /// Uncompressed bytes being compressed at once (memory stays near 2x this).
    pub batch_bytes: u64,
    /// Where `convert` spools the uncompressed tar; `None`: the system's
    /// temp dir (often tmpfs: pick a disk for big layers).
    pub spool_dir: Option<std::path::PathBuf>,
    /// Pack small files into shared gzip members (the reference's
    /// `--estargz-min-chunk-size`): a chunk starts a new member only once
    /// the current one holds at least this many bytes, else it follows in
    /// the same member at an `innerOffset`. 0: every chunk starts a member.
    /// The reference counts compressed bytes (after a flush); we count
    /// uncompressed ones, so members still compress in parallel. Readers
    /// only see `offset` + `innerOffset`, which mean the same either way.
    pub min_chunk_size: u64,
    /// Write the original CRFS stargz: no `chunkDigest`, no landmark files,
    /// the 47-byte footer. Such a layer cannot be verified chunk by chunk
    /// (readers accept it only when told to go unverified); for tests and
    /// for interoperating with old tools.
    pub legacy: bool,
    /// Keep the TOC out of the blob (the reference's external TOC): the
    /// blob ends with the 46-byte external footer, and the TOC member is
    /// returned in [`WriteReport::external_toc`] for a TOC image.
    pub external_toc: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            compression: Compression::Gzip,
            zstd_level: crate::zstd::DEFAULT_LEVEL,
            prioritized_files: Vec::new(),
            batch_bytes: 32 << 20,
            spool_dir: None,
            min_chunk_size: 0,
            legacy: false,
            external_toc: false,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteReport {
    /// `sha256:<hex>` of the blob.
    pub blob_digest: String,
    pub blob_size: u64,
    /// The value for the `containerd.io/snapshot/stargz/toc.digest` annotation.
    pub toc_digest: String,
    /// `sha256:<hex>` of the uncompressed tar stream (the config's diff ID).
    pub diff_id: String,
    /// Length of that stream (`io.containers.estargz.uncompressed-size`).
    pub uncompressed_size: u64,
    /// Number of TOC entries.
    pub entries: usize,
    /// Prioritized paths that are not in the layer.
    pub missed_prioritized: Vec<String>,
    /// zstd:chunked only: the `io.containers.zstd-chunked.manifest-checksum`
    /// and `-position` annotation values.
    pub zstd_manifest: Option<(String, String)>,
    /// With `external_toc`: the TOC member (gzip'd tar of
    /// `stargz.index.json`), a layer of the TOC image.
    pub external_toc: Option<Vec<u8>>,
}

/// Convert a tar or tar.gz stream (detected by its magic). The tar is
/// spooled to an unnamed temporary file first, since ordering and
/// de-duplication need to see all of it.
pub fn convert<R: Read, W: Write>(input: R, out: W, opts: &WriterOptions) -> Result<WriteReport> {
    let mut input = BufReader::with_capacity(1 << 20, input);
    let gz = input.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let mut spool = match &opts.spool_dir {
        Some(dir) => tempfile::tempfile_in(dir)?,
        None => tempfile::tempfile()?,
    };
    let len = if gz {
        io::copy(&mut flate2::bufread::MultiGzDecoder::new(input), &mut spool)
            .map_err(|e| Error::Gzip(e.to_string()))?
    } else {
        io::copy(&mut input, &mut spool)?
    };
    spool.rewind()?;
    convert_tar_at(&spool, len, out, opts)
}

/// Convert an uncompressed tar of `len` bytes read through `ReadAt`
/// (a tar file on disk needs no spooling).
pub fn convert_tar_at<S: ReadAt + Sync + ?Sized, W: Write>(
    src: &S,
    len: u64,
    out: W,
    opts: &WriterOptions,
) -> Result<WriteReport> {
    if opts.chunk_size == 0 {
        return Err(Error::BadOption("chunk_size must be > 0"));
    }
    if opts.chunk_size > crate::index::MAX_CHUNK_SIZE {
        // Readers (ours included) refuse larger chunks.
        return Err(Error::BadOption("chunk_size must be at most 64 MiB"));
    }
    if opts.compression_level > 9 {
        return Err(Error::BadOption("compression_level must be 0-9"));
    }
    if opts.compression == Compression::Zstd && !crate::zstd::valid_level(opts.zstd_level) {
        return Err(Error::BadOption("zstd_level must be 1-22"));
    }
    if opts.compression == Compression::Zstd && (opts.legacy || opts.external_toc) {
        return Err(Error::BadOption(
            "legacy stargz and external TOCs are gzip formats",
        ));
    }
    if opts.min_chunk_size > crate::index::MAX_CHUNK_SIZE / 2 {
        // A member's bytes before a chunk count against the chunk cap.
        return Err(Error::BadOption("min_chunk_size must be at most 32 MiB"));
    }
    if opts.legacy && opts.external_toc {
        return Err(Error::BadOption("legacy stargz has no external TOC"));
    }
    if opts.legacy && !opts.prioritized_files.is_empty() {
        return Err(Error::BadOption(
            "legacy stargz has no landmarks: no prioritized files",
        ));
    }
    let entries = dedup(input::scan(src, len)?);
    let (mut order, missed) = order(&entries, &opts.prioritized_files);
    if opts.legacy {
        order.retain(|i| !matches!(i, Item::Landmark(_)));
    }
    let plan = plan(&entries, &order, opts.chunk_size, opts.min_chunk_size);
    let mut report = emit(src, plan, out, opts)?;
    report.missed_prioritized = missed;
    Ok(report)
}

/// Later entries with the same clean name replace earlier ones.
fn dedup(entries: Vec<InEntry>) -> Vec<InEntry> {
    let reserved =
        |c: &str| c == TOC_TAR_NAME || c == PREFETCH_LANDMARK || c == NO_PREFETCH_LANDMARK;
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.kind != Kind::Global {
            last.insert(e.clean.as_str(), i);
        }
    }
    let keep: Vec<bool> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            e.kind == Kind::Global || (last[e.clean.as_str()] == i && !reserved(&e.clean))
        })
        .collect();
    entries
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(e, _)| e)
        .collect()
}

/// One item of the output tar, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item {
    Entry(usize),
    Landmark(&'static str),
}

/// Output order and the prioritized paths not found.
fn order(entries: &[InEntry], prioritized: &[String]) -> (Vec<Item>, Vec<String>) {
    let by_name: HashMap<&str, usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind != Kind::Global)
        .map(|(i, e)| (e.clean.as_str(), i))
        .collect();
    let mut moved = vec![false; entries.len()];
    let mut items = Vec::with_capacity(entries.len() + 1);
    let mut missed = Vec::new();
    for p in prioritized {
        let Some(i) = clean_path(p).and_then(|c| by_name.get(c.as_str()).copied()) else {
            missed.push(p.clone());
            continue;
        };
        // The root, then every parent present, then a hardlink's target
        // (and its parents), then the file itself. No recursion: names
        // can be deep.
        let mut chain = vec![i];
        let mut cur = i;
        for _ in 0..entries.len() {
            if entries[cur].kind != Kind::Hardlink {
                break;
            }
            match clean_path(&entries[cur].link).and_then(|c| by_name.get(c.as_str()).copied()) {
                Some(t) if !chain.contains(&t) => {
                    chain.push(t);
                    cur = t;
                }
                _ => break,
            }
        }
        for &j in chain.iter().rev() {
            let path = &entries[j].clean;
            let mut ancestors: Vec<usize> = by_name.get("").copied().into_iter().collect();
            for (k, _) in path.match_indices('/') {
                ancestors.extend(by_name.get(&path[..k]).copied());
            }
            ancestors.push(j);
            for a in ancestors {
                if !moved[a] {
                    moved[a] = true;
                    items.push(Item::Entry(a));
                }
            }
        }
    }
    if prioritized.is_empty() {
        items.push(Item::Landmark(NO_PREFETCH_LANDMARK));
    } else {
        items.push(Item::Landmark(PREFETCH_LANDMARK));
    }
    items.extend((0..entries.len()).filter(|&i| !moved[i]).map(Item::Entry));
    (items, missed)
}

/// A piece of a member's uncompressed bytes.
#[derive(Debug, Clone)]
enum Piece {
    Src { off: u64, len: u64 },
    Zeros(u64),
    Bytes(Vec<u8>),
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Src { len, .. } | Piece::Zeros(len) => *len,
            Piece::Bytes(b) => b.len() as u64,
        }
    }
}

#[derive(Debug, Default)]
struct Member {
    pieces: Vec<Piece>,
    /// The chunks in this member: TOC entry, uncompressed offset in the
    /// member (`innerOffset`; 0 for the one that starts it) and length.
    chunks: Vec<(usize, u64, u64)>,
    /// No further chunk may join (a landmark's member).
    sealed: bool,
}

impl Member {
    fn len(&self) -> u64 {
        self.pieces.iter().map(Piece::len).sum()
    }
}

/// The TOC (offsets and digests still empty) and the members.
struct Plan {
    toc: Toc,
    members: Vec<Member>,
    /// TOC entry of each multi-chunk file's `reg` entry, by its chunks' entries.
    file_of_chunk: HashMap<usize, usize>,
}

fn plan(entries: &[InEntry], order: &[Item], chunk_size: u64, min_chunk_size: u64) -> Plan {
    let mut toc = Toc {
        version: 1,
        entries: Vec::with_capacity(entries.len() + 1),
    };
    let mut members = Vec::new();
    let mut file_of_chunk = HashMap::new();
    let mut cur = Member::default();
    let mut unames: HashMap<i64, String> = HashMap::new();
    let mut gnames: HashMap<i64, String> = HashMap::new();
    for &item in order {
        let (ent, data_off, size) = match item {
            Item::Landmark(name) => {
                cur.pieces
                    .push(Piece::Bytes(tarfmt::plain_reg_header(name, 1).to_vec()));
                let ent = TocEntry {
                    name: name.to_string(),
                    kind: EntryType::Reg,
                    size: 1,
                    ..Default::default()
                };
                (ent, None, 1)
            }
            Item::Entry(i) => {
                let e = &entries[i];
                let raw = e.raw.end - e.raw.start;
                cur.pieces.push(Piece::Src {
                    off: e.raw.start,
                    len: raw,
                });
                if e.kind == Kind::Global {
                    let size = e.data.end - e.data.start;
                    cur.pieces.push(Piece::Src {
                        off: e.data.start,
                        len: size,
                    });
                    cur.pieces.push(Piece::Zeros(tarfmt::padding(size)));
                    continue;
                }
                let size = e.data.end - e.data.start;
                (
                    toc_entry(e, &mut unames, &mut gnames),
                    Some(e.data.start),
                    size,
                )
            }
        };
        let is_reg = ent.kind == EntryType::Reg;
        let first = toc.entries.len();
        toc.entries.push(ent);
        if !is_reg || size == 0 {
            continue;
        }
        let mut written = 0u64;
        // Landmarks always get their own member, as in the reference.
        let own_member = data_off.is_none();
        while written < size {
            let share = min_chunk_size > 0
                && !own_member
                && !cur.sealed
                && !cur.chunks.is_empty()
                && cur.len() < min_chunk_size;
            if !share {
                members.push(std::mem::take(&mut cur));
            }
            let n = chunk_size.min(size - written);
            let idx = if written == 0 {
                first
            } else {
                toc.entries.push(TocEntry {
                    name: toc.entries[first].name.clone(),
                    kind: EntryType::Chunk,
                    ..Default::default()
                });
                file_of_chunk.insert(toc.entries.len() - 1, first);
                toc.entries.len() - 1
            };
            let te = &mut toc.entries[idx];
            te.chunk_offset = written as i64;
            // The reference leaves chunkSize out on a short last chunk.
            if n == chunk_size {
                te.chunk_size = n as i64;
            }
            let inner = cur.len();
            cur.pieces.push(match data_off {
                Some(off) => Piece::Src {
                    off: off + written,
                    len: n,
                },
                None => Piece::Bytes(vec![LANDMARK_CONTENTS]),
            });
            cur.chunks.push((idx, inner, n));
            cur.sealed = own_member;
            written += n;
        }
        if size > chunk_size {
            file_of_chunk.insert(first, first);
        }
        cur.pieces.push(Piece::Zeros(tarfmt::padding(size)));
    }
    if !cur.pieces.is_empty() {
        members.push(cur);
    }
    Plan {
        toc,
        members,
        file_of_chunk,
    }
}

/// Go's `nameIfChanged`: a user or group name only when it differs from
/// the last one written for that id.
fn name_if_changed(seen: &mut HashMap<i64, String>, id: i64, name: &str) -> String {
    if name.is_empty() || seen.get(&id).is_some_and(|n| n == name) {
        return String::new();
    }
    seen.insert(id, name.to_string());
    name.to_string()
}

fn toc_entry(
    e: &InEntry,
    unames: &mut HashMap<i64, String>,
    gnames: &mut HashMap<i64, String>,
) -> TocEntry {
    let mut t = TocEntry {
        name: e.name.clone(),
        modtime: format_modtime(e.mtime),
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        user_name: name_if_changed(unames, e.uid, &e.uname),
        group_name: name_if_changed(gnames, e.gid, &e.gname),
        xattrs: e.xattrs.clone(),
        ..Default::default()
    };
    t.kind = match e.kind {
        Kind::Reg => {
            t.size = (e.data.end - e.data.start) as i64;
            EntryType::Reg
        }
        Kind::Hardlink => {
            t.link_name = e.link.clone();
            EntryType::Hardlink
        }
        Kind::Symlink => {
            t.link_name = e.link.clone();
            EntryType::Symlink
        }
        Kind::Char | Kind::Block => {
            t.dev_major = e.devmajor;
            t.dev_minor = e.devminor;
            if e.kind == Kind::Char {
                EntryType::Char
            } else {
                EntryType::Block
            }
        }
        Kind::Dir => EntryType::Dir,
        Kind::Fifo => EntryType::Fifo,
        Kind::Global => unreachable!("global headers have no TOC entry"),
    };
    t
}

/// One gzip member: our own 10-byte header (as Go writes it: no name, mtime
/// 0, OS unknown), raw deflate, CRC32 and size.
fn gzip_member(raw: &[u8], level: u32) -> Vec<u8> {
    let xfl = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    let mut out = Vec::with_capacity(raw.len() / 3 + 64);
    out.extend_from_slice(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 0xff]);
    let mut enc = flate2::write::DeflateEncoder::new(out, flate2::Compression::new(level));
    // Writing into a Vec cannot fail.
    enc.write_all(raw).expect("deflate into Vec");
    let mut out = enc.finish().expect("deflate into Vec");
    out.extend_from_slice(&crc32fast::hash(raw).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    out
}

/// How members are compressed, with the level.
#[derive(Debug, Clone, Copy)]
enum Codec {
    Gzip(u32),
    Zstd(i32),
}

impl Codec {
    fn of(opts: &WriterOptions) -> Codec {
        match opts.compression {
            Compression::Gzip => Codec::Gzip(opts.compression_level),
            Compression::Zstd => Codec::Zstd(opts.zstd_level),
        }
    }

    /// One gzip member or one zstd frame.
    fn member(self, raw: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Codec::Gzip(level) => Ok(gzip_member(raw, level)),
            Codec::Zstd(level) => crate::zstd::frame(raw, level),
        }
    }
}

struct Compressed {
    raw: Vec<u8>,
    gz: Vec<u8>,
    /// `sha256:` of each chunk of the member, in `Member::chunks` order.
    chunk_digests: Vec<String>,
}

fn compress<S: ReadAt + ?Sized>(src: &S, m: &Member, codec: Codec) -> io::Result<Compressed> {
    let mut raw = Vec::with_capacity(m.len() as usize);
    for p in &m.pieces {
        match p {
            Piece::Src { off, len } => {
                let at = raw.len();
                raw.resize(at + *len as usize, 0);
                read_exact_at(src, *off, &mut raw[at..])?;
            }
            Piece::Zeros(n) => raw.resize(raw.len() + *n as usize, 0),
            Piece::Bytes(b) => raw.extend_from_slice(b),
        }
    }
    let chunk_digests = m
        .chunks
        .iter()
        .map(|&(_, inner, n)| sha256_digest(&raw[inner as usize..(inner + n) as usize]))
        .collect();
    let gz = codec.member(&raw)?;
    Ok(Compressed {
        raw,
        gz,
        chunk_digests,
    })
}

/// Counts and hashes what goes to the output.
struct Out<W> {
    w: W,
    n: u64,
    blob: Sha256,
}

impl<W: Write> Out<W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.w.write_all(b)?;
        self.blob.update(b);
        self.n += b.len() as u64;
        Ok(())
    }
}

fn emit<S: ReadAt + Sync + ?Sized, W: Write>(
    src: &S,
    plan: Plan,
    w: W,
    opts: &WriterOptions,
) -> Result<WriteReport> {
    let Plan {
        mut toc,
        members,
        file_of_chunk,
    } = plan;
    let mut out = Out {
        w,
        n: 0,
        blob: Sha256::new(),
    };
    let mut diff = Sha256::new();
    let mut uncompressed = 0u64;
    // Whole-file digests of multi-chunk files, by their `reg` entry.
    let mut file_hash: HashMap<usize, Sha256> = HashMap::new();
    let codec = Codec::of(opts);
    pipeline::run(src, &members, codec, opts.batch_bytes, |m, c| {
        for (&(idx, inner, n), digest) in m.chunks.iter().zip(&c.chunk_digests) {
            let te = &mut toc.entries[idx];
            te.offset = out.n as i64;
            te.inner_offset = inner as i64;
            match file_of_chunk.get(&idx) {
                Some(&reg) => file_hash
                    .entry(reg)
                    .or_default()
                    .update(&c.raw[inner as usize..(inner + n) as usize]),
                None => te.digest = digest.clone(),
            }
            if !opts.legacy {
                te.chunk_digest = digest.clone();
            }
        }
        out.put(&c.gz)?;
        diff.update(&c.raw);
        uncompressed += c.raw.len() as u64;
        Ok(())
    })?;
    for (reg, h) in file_hash {
        toc.entries[reg].digest = format!("sha256:{}", hex::encode(h.finalize()));
    }
    // Empty regular files still carry the digest of no bytes.
    for te in toc.entries.iter_mut() {
        if te.kind == EntryType::Reg && te.size == 0 {
            te.digest = sha256_digest(b"");
        }
    }

    if let Codec::Zstd(_) = codec {
        // The tar's end-of-archive blocks: in the eStargz layout they follow
        // the TOC entry in its member, here they need a frame of their own.
        let trailer = [0u8; 2 * BLOCK];
        out.put(&codec.member(&trailer)?)?;
        diff.update(trailer);
        uncompressed += trailer.len() as u64;
    }
    let toc_offset = out.n;
    let json = toc.to_json();
    let toc_digest = sha256_digest(&json);
    let mut zstd_manifest = None;
    let mut external_toc = None;
    match codec {
        Codec::Gzip(level) => {
            let mut raw = tarfmt::plain_reg_header(TOC_TAR_NAME, json.len() as u64).to_vec();
            raw.extend_from_slice(&json);
            raw.resize(
                raw.len() + tarfmt::padding(json.len() as u64) as usize + 2 * BLOCK,
                0,
            );
            let gz = gzip_member(&raw, level);
            let footer: &[u8] = if opts.legacy {
                &write_legacy_footer(toc_offset)
            } else if opts.external_toc {
                &crate::external::write_footer()
            } else {
                &write_footer(toc_offset)
            };
            let in_blob = if opts.external_toc {
                0
            } else {
                gz.len() as u64
            };
            let blob_size = toc_offset + in_blob + footer.len() as u64;
            // What we write must be what we can read.
            let check = IndexOptions {
                unverified_key: opts.legacy.then(String::new),
                ..IndexOptions::default()
            };
            Index::from_toc_with(&toc, toc_offset, blob_size, &check)?;
            if opts.external_toc {
                // As the reference: the TOC entry and the tar's end are in the TOC
                // image, so the layer's tar stream (and diff ID) stops before them.
                external_toc = Some(gz);
            } else {
                out.put(&gz)?;
                diff.update(&raw);
                uncompressed += raw.len() as u64;
            }
            out.put(footer)?;
        }
        Codec::Zstd(level) => {
            // Skippable frames: not part of the tar stream (nor the diff ID).
            let tail = crate::zstd::toc_tail(&json, toc_offset, level)?;
            let blob_size = toc_offset + tail.bytes.len() as u64;
            Index::from_toc_as(&toc, toc_offset, blob_size, Compression::Zstd)?;
            out.put(&tail.bytes)?;
            zstd_manifest = Some((tail.manifest_checksum, tail.manifest_position));
        }
    }
    out.w.flush()?;
    Ok(WriteReport {
        blob_digest: format!("sha256:{}", hex::encode(out.blob.finalize())),
        blob_size: out.n,
        toc_digest,
        diff_id: format!("sha256:{}", hex::encode(diff.finalize())),
        uncompressed_size: uncompressed,
        entries: toc.entries.len(),
        missed_prioritized: Vec::new(),
        zstd_manifest,
        external_toc,
    })
}

#[cfg(test)]
mod tests;
