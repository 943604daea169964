//! A seekable index for a plain gzip tar layer (one that was never
//! converted to eStargz), so it can be served lazily.
//!
//! One pass over the layer (verified against its digest) records:
//! - checkpoints every `span_size` bytes of uncompressed output, at deflate
//!   block boundaries: the compressed bit offset, the uncompressed offset
//!   and the 32 KiB window before it, so inflating can start there
//!   (`inflatePrime` + `inflateSetDictionary`, the zran.c technique);
//! - the tar file table in the eStargz TOC's shape (names, modes, owners,
//!   sizes, link targets, xattrs, whiteouts as named), where each regular
//!   file is cut into *pieces* at checkpoint boundaries and each piece is
//!   a TOC chunk: `offset` = its checkpoint's byte, `innerOffset` = its
//!   place in the span, `chunkDigest` = sha256 of its bytes. So every byte
//!   read later is verified, and the lazyfs cache keys pieces by digest
//!   exactly as it keys eStargz chunks.
//!
//! Modules: `zlib` (the only unsafe code: raw inflate FFI), `build` (the
//! one pass), `format` (the file: serialize, parse with caps, validate),
//! `span` (inflate pieces from a checkpoint and verify them), `publish`
//! (every plain gzip layer of an image in a registry indexed, pushed as a
//! referrer of its manifest or written to a directory: `rsnap index`).

mod build;
mod error;
mod format;
mod span;
mod zlib;

pub use build::{build, BuildOptions, BuildReport};
pub use error::{Error, Result};
pub use format::{Checkpoint, GzIndex, MAGIC, MAX_INDEX_BYTES};
pub use span::SpanDecoder;

use std::path::{Path, PathBuf};

/// Default distance between checkpoints, in uncompressed bytes. Smaller
/// spans mean less inflating per cold read and a larger index (a 32 KiB
/// window each, compressed).
pub const DEFAULT_SPAN_SIZE: u64 = 4 << 20;
/// Smallest and largest span accepted (a span is decompressed whole at
/// worst, so its size is an allocation).
pub const MIN_SPAN_SIZE: u64 = 64 << 10;
pub const MAX_SPAN_SIZE: u64 = 32 << 20;
/// OCI artifact type and media type of the index blob.
pub const ARTIFACT_TYPE: &str = "application/vnd.rsnap.gzindex.v1";
pub const MEDIA_TYPE: &str = "application/vnd.rsnap.gzindex.v1+gzip";
/// Annotation on the index layer naming the image layer it indexes.
pub const LAYER_ANNOTATION: &str = "dev.rsnap.gzindex.layer";

/// Where the index of `layer` is kept in a directory (`rsnap index --out`,
/// the daemon's `[gzindex] dir`): `<dir>/<hex>.gzindex`; `None` for a
/// digest that is not `sha256:` and 64 hex digits.
pub fn index_path(dir: &Path, layer: &str) -> Option<PathBuf> {
    let hex = layer.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(dir.join(format!("{hex}.gzindex")))
}

#[cfg(test)]
mod tests;
