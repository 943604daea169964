//! One layer: source blob (tar, tar.gz, tar+zstd, eStargz or zstd:chunked)
//! from one OCI layout to an eStargz or zstd:chunked blob in another, streamed through a temp file. The source is
//! checked against its digest and its diff ID while it is read, so a corrupt
//! input never yields a committed output.

use crate::error::{Error, Result};
use estargz::Compression;
use indicatif::ProgressBar;
use oci_layout::{media_types as mt, Descriptor, DescriptorExt, HashingReader, Layout, MediaType};
use std::collections::HashMap;
use std::io::{BufReader, Read, Write};

pub use estargz::toc::TOC_DIGEST_ANNOTATION as ANN_TOC_DIGEST;
pub use estargz::toc::UNCOMPRESSED_SIZE_ANNOTATION as ANN_UNCOMPRESSED_SIZE;

#[derive(Clone, Debug, Default)]
pub struct LayerOptions {
    /// Chunk size in bytes; `None` keeps the writer's default.
    pub chunk_size: Option<u64>,
    /// gzip level 0-9; `None` keeps the writer's default.
    pub compression_level: Option<u32>,
    /// The output format: eStargz (gzip, the default) or zstd:chunked.
    pub compression: Compression,
    /// zstd level 1-22 for zstd:chunked; `None` keeps the writer's default.
    pub zstd_level: Option<i32>,
    /// Paths (layer-relative, no leading slash) to put first, in this
    /// order, followed by the prefetch landmark.
    pub prioritized_files: Vec<String>,
    /// Per source layer digest: that layer's own list, used instead of
    /// `prioritized_files` (a profile knows which layer holds each file).
    pub prioritized_by_layer: HashMap<String, Vec<String>>,
    /// Pack small files into shared gzip members until one holds this
    /// many bytes (the reference's `--estargz-min-chunk-size`); `None`: a
    /// member per chunk.
    pub min_chunk_size: Option<u64>,
    /// Write legacy CRFS stargz (no chunk digests, no landmarks, 47-byte
    /// footer, no TOC digest annotation): unverifiable layers, for tests
    /// and old tools. eStargz inputs still pass through unchanged.
    pub legacy: bool,
    /// Keep each converted layer's TOC out of its blob, in a TOC image
    /// tagged `<tag>-esgztoc` (the reference's `--estargz-external-toc`).
    pub external_toc: bool,
}

/// What happened to a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Converted,
    /// Already in the wanted format (eStargz or zstd:chunked): the blob is
    /// kept byte for byte.
    PassedThrough,
    /// A media type we do not convert (foreign, encrypted, ...): kept as is.
    Kept,
}

#[derive(Clone, Debug)]
pub struct Converted {
    pub desc: Descriptor,
    pub diff_id: String,
    pub action: Action,
    /// With `external_toc`: the TOC blob (in the destination layout) for
    /// the TOC image, annotated with this layer's digest.
    pub toc_layer: Option<Descriptor>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Input {
    Tar,
    Gzip,
    Zstd,
    Other,
}

fn input_kind(media_type: &str) -> Input {
    match media_type {
        mt::OCI_LAYER_GZIP | mt::DOCKER_LAYER_GZIP => Input::Gzip,
        mt::OCI_LAYER_TAR | mt::DOCKER_LAYER_TAR => Input::Tar,
        mt::OCI_LAYER_ZSTD => Input::Zstd,
        _ => Input::Other,
    }
}

/// The tar stream of a compressed input: gzip members, or zstd frames
/// (skippable ones, zstd:chunked's TOC and footer, skipped).
fn decompressed<'a, R: Read + 'a>(kind: Input, r: R) -> std::io::Result<Box<dyn Read + 'a>> {
    Ok(match kind {
        Input::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        _ => Box::new(flate2::read::MultiGzDecoder::new(r)),
    })
}

/// The compression a lazily pullable input of this media type would have.
fn lazy_format(kind: Input) -> Option<Compression> {
    match kind {
        Input::Gzip => Some(Compression::Gzip),
        Input::Zstd => Some(Compression::Zstd),
        Input::Tar | Input::Other => None,
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
    let digest = src_desc.digest().as_ref();
    let path = src.blob_path(digest)?;
    let kind = input_kind(src_desc.media_type().as_ref());
    if let Input::Other = kind {
        tracing::warn!(%digest, media_type = %src_desc.media_type(), "layer media type not converted; kept as is");
        copy_blob(src, dst, src_desc, bar)?;
        return Ok(Converted {
            desc: src_desc.clone(),
            diff_id: src_diff_id.to_string(),
            action: Action::Kept,
            toc_layer: None,
        });
    }
    // An input already in the output format (eStargz or zstd:chunked) is
    // kept as is, unless files are to be put first (`rsnap optimize` of such
    // an image, e.g. from a profile the daemon recorded): then every layer
    // is written again, the untouched ones with the no-prefetch landmark.
    let reorder = !opts.prioritized_files.is_empty() || !opts.prioritized_by_layer.is_empty();
    if lazy_format(kind) == Some(opts.compression) && !reorder {
        if let Some(toc_digest) = estargz_toc_digest(&path, opts.compression) {
            return pass_through(src, dst, src_desc, src_diff_id, toc_digest, kind, bar);
        }
    }

    // Verify the whole input before converting it: decompress (if gzip)
    // into an unnamed spool file next to the output while hashing both
    // streams, then convert the spool, which is ours and cannot change.
    let io = |what: &str| Error::io(format!("{what} layer {digest}"));
    let file = std::fs::File::open(&path).map_err(io("open"))?;
    let mut compressed = HashingReader::new(BufReader::with_capacity(1 << 20, bar.wrap_read(file)));
    let (spool, len) = match kind {
        Input::Gzip | Input::Zstd => {
            let mut spool = tempfile::tempfile_in(dst.blob_dir()).map_err(io("spool"))?;
            let mut tar =
                HashingReader::new(decompressed(kind, &mut compressed).map_err(io("decompress"))?);
            std::io::copy(&mut tar, &mut spool).map_err(io("gunzip"))?;
            let (diff_id, len) = tar.finish().map_err(io("gunzip"))?;
            check_diff_id(diff_id, src_diff_id, digest)?;
            (spool, len)
        }
        _ => {
            // The source file itself is the tar: hash it, then convert in place.
            let f = std::fs::File::open(&path).map_err(io("open"))?;
            let (diff_id, len) = HashingReader::new(BufReader::new(&f))
                .finish()
                .map_err(io("read"))?;
            check_diff_id(diff_id, src_diff_id, digest)?;
            (f, len)
        }
    };
    let (got, size) = compressed.finish().map_err(io("read"))?;
    check_source(&got, size, src_desc)?;

    let mut out = dst.blob_writer()?;
    let report =
        estargz::writer::convert_tar_at(&spool, len, &mut out, &writer_options(opts, digest))
            .map_err(|source| Error::Estargz {
                digest: digest.to_string(),
                source,
            })?;
    for p in &report.missed_prioritized {
        tracing::debug!(path = %p, layer = %digest, "prioritized file not in this layer");
    }
    out.flush().map_err(io("write converted"))?;
    let (out_digest, out_size) = out.commit()?;
    let mut desc = Descriptor::new(
        media_type(opts.compression),
        out_size,
        oci_layout::parse_digest(&out_digest)?,
    );
    desc.set_annotations(src_desc.annotations().clone());
    set_format_annotations(&mut desc, report.toc_digest, report.zstd_manifest);
    if opts.legacy {
        // Nothing vouches for chunks without digests; a TOC digest copied
        // from the source (or ours) would be wrong.
        let mut ann = desc.annotations().clone().unwrap_or_default();
        ann.remove(ANN_TOC_DIGEST);
        desc.set_annotations(Some(ann));
    }
    desc.insert_annotation(ANN_UNCOMPRESSED_SIZE, report.uncompressed_size.to_string());
    let toc_layer = match &report.external_toc {
        Some(member) => {
            let mut d = dst.put_blob(mt::OCI_LAYER_GZIP, member)?;
            d.insert_annotation(
                estargz::external::LAYER_DIGEST_ANNOTATION,
                out_digest.clone(),
            );
            Some(d)
        }
        None => None,
    };
    Ok(Converted {
        desc,
        diff_id: report.diff_id,
        action: Action::Converted,
        toc_layer,
    })
}

fn media_type(c: Compression) -> MediaType {
    match c {
        Compression::Gzip => MediaType::ImageLayerGzip,
        Compression::Zstd => MediaType::ImageLayerZstd,
    }
}

/// The TOC digest, and the zstd:chunked annotations exactly when the blob
/// is zstd:chunked (a source's stale ones never survive a conversion).
fn set_format_annotations(
    desc: &mut Descriptor,
    toc_digest: String,
    zstd_manifest: Option<(String, String)>,
) {
    let mut ann = desc.annotations().clone().unwrap_or_default();
    ann.remove(estargz::zstd::MANIFEST_CHECKSUM_ANNOTATION);
    ann.remove(estargz::zstd::MANIFEST_POSITION_ANNOTATION);
    ann.insert(ANN_TOC_DIGEST.to_string(), toc_digest);
    if let Some((checksum, position)) = zstd_manifest {
        ann.insert(
            estargz::zstd::MANIFEST_CHECKSUM_ANNOTATION.to_string(),
            checksum,
        );
        ann.insert(
            estargz::zstd::MANIFEST_POSITION_ANNOTATION.to_string(),
            position,
        );
    }
    desc.set_annotations(Some(ann));
}

fn check_source(got: &str, size: u64, d: &Descriptor) -> Result<()> {
    let digest = d.digest().to_string();
    if size != d.size() {
        return Err(oci_layout::Error::SizeMismatch {
            digest,
            got: size,
            want: d.size(),
        }
        .into());
    }
    if got != digest {
        let got = got.to_string();
        return Err(oci_layout::Error::DigestMismatch { digest, got }.into());
    }
    Ok(())
}

fn check_diff_id(got: String, want: &str, digest: &str) -> Result<()> {
    if got != want {
        return Err(Error::DiffId {
            digest: digest.to_string(),
            got,
            want: want.to_string(),
        });
    }
    Ok(())
}

/// An eStargz or zstd:chunked input is kept byte for byte; its annotations
/// are computed from the blob itself, never copied from the source descriptor.
fn pass_through(
    src: &Layout,
    dst: &Layout,
    src_desc: &Descriptor,
    src_diff_id: &str,
    (toc_digest, zstd_manifest): (String, Option<(String, String)>),
    kind: Input,
    bar: &ProgressBar,
) -> Result<Converted> {
    let digest = src_desc.digest().as_ref();
    let io = Error::io(format!("read layer {digest}"));
    let path = src.blob_path(digest)?;
    let read = || -> std::io::Result<_> {
        let file = std::fs::File::open(&path)?;
        let mut compressed =
            HashingReader::new(BufReader::with_capacity(1 << 20, bar.wrap_read(file)));
        let tar = HashingReader::new(decompressed(kind, &mut compressed)?).finish()?;
        Ok((tar, compressed.finish()?))
    };
    let ((diff_id, uncompressed), (got, size)) = read().map_err(io)?;
    check_source(&got, size, src_desc)?;
    check_diff_id(diff_id.clone(), src_diff_id, digest)?;
    copy_blob(src, dst, src_desc, &ProgressBar::hidden())?;
    let mut desc = src_desc.clone();
    let format = lazy_format(kind).unwrap_or_default();
    desc.set_media_type(media_type(format));
    set_format_annotations(&mut desc, toc_digest, zstd_manifest);
    desc.insert_annotation(ANN_UNCOMPRESSED_SIZE, uncompressed.to_string());
    Ok(Converted {
        desc,
        diff_id,
        action: Action::PassedThrough,
        toc_layer: None,
    })
}

/// Copy a blob unchanged (verified) unless the destination has it already.
fn copy_blob(src: &Layout, dst: &Layout, d: &Descriptor, bar: &ProgressBar) -> Result<()> {
    let digest = d.digest().as_ref();
    if dst.has_blob(digest) {
        bar.inc(d.size());
        return Ok(());
    }
    let io = || Error::io(format!("copy blob {digest}"));
    let file = std::fs::File::open(src.blob_path(digest)?).map_err(io())?;
    let mut out = dst.blob_writer()?;
    std::io::copy(&mut bar.wrap_read(file), &mut out).map_err(io())?;
    if out.size() != d.size() {
        return Err(oci_layout::Error::SizeMismatch {
            digest: digest.to_string(),
            got: out.size(),
            want: d.size(),
        }
        .into());
    }
    let (got, _) = out.commit()?;
    if got != digest {
        let _ = std::fs::remove_file(dst.blob_path(&got)?);
        let digest = digest.to_string();
        return Err(oci_layout::Error::DigestMismatch { digest, got }.into());
    }
    Ok(())
}

fn writer_options(o: &LayerOptions, digest: &str) -> estargz::writer::WriterOptions {
    let mut w = estargz::writer::WriterOptions::default();
    if let Some(c) = o.chunk_size {
        w.chunk_size = c;
    }
    if let Some(l) = o.compression_level {
        w.compression_level = l;
    }
    w.compression = o.compression;
    if let Some(l) = o.zstd_level {
        w.zstd_level = l;
    }
    w.min_chunk_size = o.min_chunk_size.unwrap_or(0);
    w.legacy = o.legacy;
    w.external_toc = o.external_toc;
    w.prioritized_files = o
        .prioritized_by_layer
        .get(digest)
        .unwrap_or(&o.prioritized_files)
        .clone();
    w
}

/// The TOC digest (and, for zstd:chunked, the manifest checksum and
/// position annotations) if `path` is a blob in format `want` whose TOC opens.
fn estargz_toc_digest(
    path: &std::path::Path,
    want: Compression,
) -> Option<(String, Option<(String, String)>)> {
    let f = std::fs::File::open(path).ok()?;
    let size = f.metadata().ok()?.len();
    if !estargz::reader::is_estargz(&f, size) {
        return None;
    }
    match estargz::reader::open(&f, size, None) {
        Ok(layer) if layer.footer.compression != want => None,
        Ok(layer) => {
            let zstd = match want {
                Compression::Gzip => None,
                Compression::Zstd => Some(estargz::zstd::manifest_annotations(&f, size).ok()?),
            };
            Some((layer.toc_digest, zstd))
        }
        Err(e) => {
            // A broken TOC is not fatal: the blob is still a tar.gz.
            tracing::warn!(path = %path.display(), error = %e, "eStargz footer but the TOC does not open; converting");
            None
        }
    }
}
