//! One layer of `rsnap convert`: source blob (tar, tar.gz or eStargz) from
//! one OCI layout to an eStargz blob in another, streamed through a temp
//! file. The source is checked against its digest and its diff ID while it
//! is read, so a corrupt input never yields a committed output.

use crate::oci_layout::{self as oci, Descriptor, HashingReader, Layout};
use anyhow::{bail, ensure, Context, Result};
use indicatif::ProgressBar;
use std::io::{BufReader, Write};

pub use estargz::toc::TOC_DIGEST_ANNOTATION as ANN_TOC_DIGEST;
pub const ANN_UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";

#[derive(Clone, Debug, Default)]
pub struct LayerOptions {
    /// Chunk size in bytes; `None` keeps the writer's default.
    pub chunk_size: Option<u64>,
    /// gzip level 0-9; `None` keeps the writer's default.
    pub compression_level: Option<u32>,
    /// Paths (layer-relative, no leading slash) to put first, in this
    /// order, followed by the prefetch landmark.
    pub prioritized_files: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Converted,
    /// Already eStargz: the blob is kept byte for byte.
    PassedThrough,
    /// A media type we do not convert (zstd, foreign, ...): kept as is.
    Kept,
}

#[derive(Clone, Debug)]
pub struct Converted {
    pub desc: Descriptor,
    pub diff_id: String,
    pub action: Action,
}

enum Input {
    Tar,
    Gzip,
    Other,
}

fn input_kind(media_type: &str) -> Input {
    match media_type {
        oci::MT_OCI_LAYER_GZIP | oci::MT_DOCKER_LAYER_GZIP => Input::Gzip,
        oci::MT_OCI_LAYER_TAR | oci::MT_DOCKER_LAYER_TAR => Input::Tar,
        _ => Input::Other,
    }
}

/// Convert layer `src_desc` whose config diff ID is `src_diff_id`.
pub fn convert_layer(
    src: &Layout,
    dst: &Layout,
    src_desc: &Descriptor,
    src_diff_id: &str,
    opts: &LayerOptions,
    bar: &ProgressBar,
) -> Result<Converted> {
    let path = src.blob_path(&src_desc.digest)?;
    let kind = input_kind(&src_desc.media_type);
    if let Input::Other = kind {
        tracing::warn!(digest = %src_desc.digest, media_type = %src_desc.media_type, "layer media type not converted; kept as is");
        copy_blob(src, dst, src_desc, bar)?;
        return Ok(Converted {
            desc: src_desc.clone(),
            diff_id: src_diff_id.to_string(),
            action: Action::Kept,
        });
    }
    if let Input::Gzip = kind {
        if let Some(toc_digest) = estargz_toc_digest(&path) {
            return pass_through(src, dst, src_desc, src_diff_id, toc_digest, bar);
        }
    }

    // Verify the whole input before converting it: decompress (if gzip)
    // into an unnamed spool file next to the output while hashing both
    // streams, then convert the spool, which is ours and cannot change.
    let file =
        std::fs::File::open(&path).with_context(|| format!("open layer {}", src_desc.digest))?;
    let mut compressed = HashingReader::new(BufReader::with_capacity(1 << 20, bar.wrap_read(file)));
    let (spool, len) = match kind {
        Input::Gzip => {
            let mut spool = tempfile::tempfile_in(dst.blob_dir()).context("create spool file")?;
            let mut tar = HashingReader::new(flate2::read::MultiGzDecoder::new(&mut compressed));
            std::io::copy(&mut tar, &mut spool)
                .with_context(|| format!("gunzip layer {}", src_desc.digest))?;
            let (diff_id, len) = tar.finish()?;
            check_diff_id(diff_id, src_diff_id, src_desc)?;
            (spool, len)
        }
        _ => {
            // The source file itself is the tar: hash it, then convert in place.
            let f = std::fs::File::open(&path)?;
            let (diff_id, len) = HashingReader::new(BufReader::new(&f)).finish()?;
            check_diff_id(diff_id, src_diff_id, src_desc)?;
            (f, len)
        }
    };
    let (digest, size) = compressed.finish()?;
    check_source(&digest, size, src_desc)?;

    let mut out = dst.blob_writer()?;
    let report = estargz::writer::convert_tar_at(&spool, len, &mut out, &writer_options(opts))
        .with_context(|| format!("convert layer {}", src_desc.digest))?;
    for p in &report.missed_prioritized {
        tracing::debug!(path = %p, layer = %src_desc.digest, "prioritized file not in this layer");
    }
    out.flush()?;
    let (digest, size) = out.commit()?;
    let mut desc = Descriptor::new(oci::MT_OCI_LAYER_GZIP, digest, size);
    desc.annotations = src_desc.annotations.clone();
    desc.annotations
        .insert(ANN_TOC_DIGEST.into(), report.toc_digest);
    desc.annotations.insert(
        ANN_UNCOMPRESSED_SIZE.into(),
        report.uncompressed_size.to_string(),
    );
    Ok(Converted {
        desc,
        diff_id: report.diff_id,
        action: Action::Converted,
    })
}

fn check_source(digest: &str, size: u64, d: &Descriptor) -> Result<()> {
    ensure!(
        size == d.size,
        "layer {} has {size} bytes, its descriptor says {}",
        d.digest,
        d.size
    );
    ensure!(
        digest == d.digest,
        "layer {} does not match its digest (got {digest})",
        d.digest
    );
    Ok(())
}

fn check_diff_id(got: String, want: &str, d: &Descriptor) -> Result<()> {
    ensure!(
        got == want,
        "layer {} uncompresses to {got}, but the config's diff ID is {want}",
        d.digest
    );
    Ok(())
}

/// An eStargz input is kept byte for byte; its annotations are computed
/// from the blob itself, never copied from the source descriptor.
fn pass_through(
    src: &Layout,
    dst: &Layout,
    src_desc: &Descriptor,
    src_diff_id: &str,
    toc_digest: String,
    bar: &ProgressBar,
) -> Result<Converted> {
    let path = src.blob_path(&src_desc.digest)?;
    let file = std::fs::File::open(&path)?;
    let mut compressed = HashingReader::new(BufReader::with_capacity(1 << 20, bar.wrap_read(file)));
    let (diff_id, uncompressed) =
        HashingReader::new(flate2::read::MultiGzDecoder::new(&mut compressed)).finish()?;
    let (digest, size) = compressed.finish()?;
    check_source(&digest, size, src_desc)?;
    check_diff_id(diff_id.clone(), src_diff_id, src_desc)?;
    copy_blob(src, dst, src_desc, &ProgressBar::hidden())?;
    let mut desc = src_desc.clone();
    desc.media_type = oci::MT_OCI_LAYER_GZIP.into();
    desc.annotations.insert(ANN_TOC_DIGEST.into(), toc_digest);
    desc.annotations
        .insert(ANN_UNCOMPRESSED_SIZE.into(), uncompressed.to_string());
    Ok(Converted {
        desc,
        diff_id,
        action: Action::PassedThrough,
    })
}

/// Copy a blob unchanged (verified) unless the destination has it already.
fn copy_blob(src: &Layout, dst: &Layout, d: &Descriptor, bar: &ProgressBar) -> Result<()> {
    if dst.has_blob(&d.digest) {
        bar.inc(d.size);
        return Ok(());
    }
    let file = std::fs::File::open(src.blob_path(&d.digest)?)?;
    let mut out = dst.blob_writer()?;
    std::io::copy(&mut bar.wrap_read(file), &mut out)?;
    ensure!(
        out.size() == d.size,
        "blob {} has {} bytes, descriptor says {}",
        d.digest,
        out.size(),
        d.size
    );
    let (digest, _) = out.commit()?;
    if digest != d.digest {
        let _ = std::fs::remove_file(dst.blob_path(&digest)?);
        bail!("blob {} does not match its digest", d.digest);
    }
    Ok(())
}

fn writer_options(o: &LayerOptions) -> estargz::writer::WriterOptions {
    let mut w = estargz::writer::WriterOptions::default();
    if let Some(c) = o.chunk_size {
        w.chunk_size = c;
    }
    if let Some(l) = o.compression_level {
        w.compression_level = l;
    }
    w.prioritized_files = o.prioritized_files.clone();
    w
}

/// The TOC digest if `path` is an eStargz blob whose TOC opens.
fn estargz_toc_digest(path: &std::path::Path) -> Option<String> {
    let f = std::fs::File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    if !estargz::reader::is_estargz(&f, size) {
        return None;
    }
    match estargz::reader::open(f, size, None) {
        Ok(layer) => Some(layer.toc_digest),
        Err(e) => {
            // A broken TOC is not fatal: the blob is still a tar.gz.
            tracing::warn!(path = %path.display(), error = %e, "eStargz footer but the TOC does not open; converting");
            None
        }
    }
}
