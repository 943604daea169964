//! Building an index: one pass inflating the layer (hashing what is read,
//! recording checkpoints, writing the tar to a scratch file), then the tar
//! scanned into the file table with a digest per piece.

use crate::error::{Error, Result};
use crate::format::{Checkpoint, GzIndex, MAX_CHECKPOINTS, WINDOW};
use crate::zlib::{self, Inflate};
use crate::{MAX_SPAN_SIZE, MIN_SPAN_SIZE};
use estargz::reader::read_exact_at;
use estargz::toc::{EntryType, Toc, TocEntry};
use estargz::writer::{scan, InEntry, Kind};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

/// Largest piece (chunk) of a file: pieces of one span are inflated
/// together, so smaller pieces cost no extra inflating, only a digest each.
pub const MAX_PIECE: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Uncompressed bytes between checkpoints (at least; they sit on
    /// deflate block boundaries).
    pub span_size: u64,
    /// Largest uncompressed layer indexed.
    pub max_uncompressed: u64,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            span_size: crate::DEFAULT_SPAN_SIZE,
            max_uncompressed: 64 << 30,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct BuildReport {
    pub layer_size: u64,
    pub uncompressed_size: u64,
    pub checkpoints: usize,
    pub entries: usize,
    pub pieces: usize,
}

/// Index the gzip layer read from `blob`, which must hash to
/// `layer_digest`; the uncompressed tar goes to a scratch file in
/// `scratch` (deleted on return).
pub fn build<R: Read>(
    blob: R,
    layer_digest: &str,
    opts: &BuildOptions,
    scratch: &Path,
) -> Result<(GzIndex, BuildReport)> {
    if !(MIN_SPAN_SIZE..=MAX_SPAN_SIZE).contains(&opts.span_size) {
        return Err(Error::Gzip(format!(
            "span size {} outside {MIN_SPAN_SIZE}..={MAX_SPAN_SIZE}",
            opts.span_size
        )));
    }
    let tar = tempfile::tempfile_in(scratch)?;
    let pass = inflate_pass(blob, BufWriter::with_capacity(1 << 20, tar), opts)?;
    if pass.digest != layer_digest {
        return Err(Error::LayerDigest {
            expected: layer_digest.to_string(),
            actual: pass.digest,
        });
    }
    let tar = pass.tar;
    let entries = scan(&tar, pass.out_size).map_err(Error::Tar)?;
    let entries = dedup(entries);
    let mut report = BuildReport {
        layer_size: pass.in_size,
        uncompressed_size: pass.out_size,
        checkpoints: pass.checkpoints.len(),
        entries: entries.len(),
        pieces: 0,
    };
    let toc = file_table(
        &tar,
        &entries,
        &pass.checkpoints,
        pass.out_size,
        &mut report,
    )?;
    let idx = GzIndex {
        layer_digest: layer_digest.to_string(),
        layer_size: pass.in_size,
        uncompressed_size: pass.out_size,
        span_size: opts.span_size,
        checkpoints: pass.checkpoints,
        toc,
    };
    Ok((idx, report))
}

struct Pass {
    digest: String,
    in_size: u64,
    out_size: u64,
    checkpoints: Vec<Checkpoint>,
    tar: File,
}

/// Inflate every gzip member of `blob`, stopping at each deflate block
/// boundary (`Z_BLOCK`) to decide on a checkpoint.
fn inflate_pass<R: Read>(
    mut blob: R,
    mut tar: BufWriter<File>,
    opts: &BuildOptions,
) -> Result<Pass> {
    let gz_err = |m: String| Error::Gzip(m);
    let mut z = Inflate::new(zlib::GZIP).map_err(|rc| gz_err(format!("inflateInit: {rc}")))?;
    let mut hasher = Sha256::new();
    let mut inbuf = vec![0u8; 256 << 10];
    let (mut in_pos, mut in_end) = (0usize, 0usize);
    let mut eof = false;
    let mut out = vec![0u8; 256 << 10];
    // The last 32 KiB of output (up to twice that before trimming).
    let mut window: Vec<u8> = Vec::with_capacity(2 * WINDOW);
    let (mut totin, mut totout, mut last) = (0u64, 0u64, 0u64);
    let mut checkpoints: Vec<Checkpoint> = Vec::new();
    // A checkpoint is due at the first block of each gzip member, so no
    // span crosses from one member into the next.
    let mut force = true;
    let mut in_member = true;
    // The last compressed byte inflate consumed: a checkpoint inside a byte
    // keeps it (`Checkpoint::prime`).
    let mut last_byte = 0u8;
    loop {
        if in_pos == in_end && !eof {
            let n = read_retry(&mut blob, &mut inbuf)?;
            hasher.update(&inbuf[..n]);
            (in_pos, in_end) = (0, n);
            eof = n == 0;
        }
        if !in_member {
            if in_pos == in_end && eof {
                break;
            }
            // Another gzip member follows.
            z.reset()
                .map_err(|rc| gz_err(format!("inflateReset: {rc}")))?;
            in_member = true;
            force = true;
        }
        let step = z.inflate(&inbuf[in_pos..in_end], &mut out, zlib::Z_BLOCK);
        in_pos += step.consumed;
        if step.consumed > 0 {
            last_byte = inbuf[in_pos - 1];
        }
        totin += step.consumed as u64;
        totout += step.produced as u64;
        if totout > opts.max_uncompressed {
            return Err(Error::TooLarge {
                what: "uncompressed bytes",
                got: totout,
                cap: opts.max_uncompressed,
            });
        }
        let produced = &out[..step.produced];
        tar.write_all(produced)?;
        window.extend_from_slice(produced);
        if window.len() > WINDOW {
            window.drain(..window.len() - WINDOW);
        }
        match step.rc {
            zlib::Z_OK => {}
            zlib::Z_BUF_ERROR => {
                if eof && in_pos == in_end && step.produced == 0 {
                    return Err(gz_err(format!("truncated after {totin} bytes")));
                }
            }
            zlib::Z_STREAM_END => {
                in_member = false;
                continue;
            }
            rc => return Err(gz_err(format!("inflate error {rc} at byte {totin}"))),
        }
        let block_start = step.data_type & 128 != 0 && step.data_type & 64 == 0;
        if block_start && (force || totout - last >= opts.span_size) {
            if checkpoints.len() >= MAX_CHECKPOINTS {
                return Err(Error::TooLarge {
                    what: "checkpoints",
                    got: checkpoints.len() as u64 + 1,
                    cap: MAX_CHECKPOINTS as u64,
                });
            }
            let unused = (step.data_type & 7) as u64;
            checkpoints.push(Checkpoint {
                in_bit: totin * 8 - unused,
                out: totout,
                window: window.clone(),
                prime: if unused == 0 { 0 } else { last_byte },
            });
            last = totout;
            force = false;
        }
    }
    if checkpoints.is_empty() {
        return Err(gz_err("no deflate data".into()));
    }
    let tar = tar.into_inner().map_err(|e| e.into_error())?;
    Ok(Pass {
        digest: format!("sha256:{}", hex::encode(hasher.finalize())),
        in_size: totin,
        out_size: totout,
        checkpoints,
        tar,
    })
}

fn read_retry<R: Read>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Later entries with the same name replace earlier ones (as unpacking
/// does); global PAX headers are not files.
fn dedup(entries: Vec<InEntry>) -> Vec<InEntry> {
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if e.kind != Kind::Global {
            last.insert(e.clean.clone(), i);
        }
    }
    entries
        .into_iter()
        .enumerate()
        .filter(|(i, e)| e.kind != Kind::Global && last.get(&e.clean) == Some(i))
        .map(|(_, e)| e)
        .collect()
}

/// The eStargz-shaped TOC: one entry per tar entry, regular files cut into
/// pieces at checkpoints, each hashed from the scratch tar.
fn file_table(
    tar: &File,
    entries: &[InEntry],
    cps: &[Checkpoint],
    total: u64,
    report: &mut BuildReport,
) -> Result<Toc> {
    let mut toc = Toc {
        version: 1,
        entries: Vec::with_capacity(entries.len()),
    };
    let mut buf = vec![0u8; 1 << 20];
    for e in entries {
        let mut t = TocEntry {
            name: e.name.clone(),
            modtime: estargz::toc::format_modtime(e.mtime),
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            xattrs: e.xattrs.clone(),
            ..Default::default()
        };
        t.kind = match e.kind {
            Kind::Reg => EntryType::Reg,
            Kind::Hardlink => EntryType::Hardlink,
            Kind::Symlink => EntryType::Symlink,
            Kind::Char => EntryType::Char,
            Kind::Block => EntryType::Block,
            Kind::Dir => EntryType::Dir,
            Kind::Fifo => EntryType::Fifo,
            Kind::Global => continue,
        };
        match e.kind {
            Kind::Hardlink | Kind::Symlink => t.link_name = e.link.clone(),
            Kind::Char | Kind::Block => {
                t.dev_major = e.devmajor;
                t.dev_minor = e.devminor;
            }
            _ => {}
        }
        if e.kind != Kind::Reg || e.data.is_empty() {
            if e.kind == Kind::Reg {
                t.digest = format!("sha256:{}", hex::encode(Sha256::digest(b"")));
            }
            toc.entries.push(t);
            continue;
        }
        t.size = (e.data.end - e.data.start) as i64;
        let mut whole = Sha256::new();
        let mut pieces: Vec<TocEntry> = Vec::new();
        let mut pos = e.data.start;
        while pos < e.data.end {
            let k = cps.partition_point(|c| c.out <= pos).saturating_sub(1);
            let span_end = cps.get(k + 1).map_or(total, |n| n.out);
            // Pieces of at most MAX_PIECE: a read hashes and caches whole
            // pieces, and the memory tier takes small ones only.
            let end = e.data.end.min(span_end).min(pos + MAX_PIECE);
            let mut piece = Sha256::new();
            let mut at = pos;
            while at < end {
                let n = ((end - at) as usize).min(buf.len());
                read_exact_at(tar, at, &mut buf[..n])?;
                piece.update(&buf[..n]);
                whole.update(&buf[..n]);
                at += n as u64;
            }
            pieces.push(TocEntry {
                name: e.name.clone(),
                kind: EntryType::Chunk,
                offset: cps[k].start() as i64,
                inner_offset: (pos - cps[k].out) as i64,
                chunk_offset: (pos - e.data.start) as i64,
                chunk_size: (end - pos) as i64,
                chunk_digest: format!("sha256:{}", hex::encode(piece.finalize())),
                ..Default::default()
            });
            pos = end;
        }
        report.pieces += pieces.len();
        t.digest = format!("sha256:{}", hex::encode(whole.finalize()));
        // The first piece rides on the file's own entry.
        let first = pieces.remove(0);
        t.offset = first.offset;
        t.inner_offset = first.inner_offset;
        t.chunk_size = first.chunk_size;
        t.chunk_digest = first.chunk_digest;
        toc.entries.push(t);
        toc.entries.extend(pieces);
    }
    Ok(toc)
}
