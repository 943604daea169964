//! eStargz, the format only.
//!
//! Layers of this crate, each using only the ones above it:
//! - `error`: one typed error for every way a blob can be bad;
//!   `compression`: which format a layer's chunks are in (`Compression`).
//! - `blob` (private): `ReadAt`, positional reads, `sha256:` digests.
//! - `tail` (private): what any footer says (`Footer`), the TOC region it
//!   names and the size caps (re-exported by `footer` and `reader`).
//! - `toc`: the `stargz.index.json` JSON types, exactly as the spec names them.
//! - `tarfmt` (private): tar header and PAX parsing, the reference's ustar header.
//! - `external`: external TOC (46-byte footer, TOC in a separate TOC image).
//! - `zstd`: the zstd:chunked footer, TOC frame, chunk decoder and encoder.
//! - `footer`: the 51-byte eStargz footer and the 47-byte legacy stargz
//!   footer; `parse_footer` tells every format by its tail.
//! - `index`: a validated TOC as an inode-like tree with per-file chunk lists.
//! - `reader`: opening a blob in at most two reads, TOC digest
//!   verification, verified chunk and file-range reads; a sans-IO path
//!   (`parse_footer`, `toc_region`, `parse_toc_member`, `decompress_chunk`)
//!   for callers that fetch ranges themselves.
//! - `writer`: tar / tar.gz -> eStargz, parallel compression, deterministic.
//!
//! Nothing is served unverified: the TOC is checked against its digest
//! annotation and every chunk against its `chunkDigest`. The one exception
//! is asked for by name: legacy CRFS stargz, which has no chunk digests,
//! opens only with `IndexOptions::unverified_key` (the caller then checks
//! the whole blob against its layer digest).
//! No HTTP, no FUSE, no async runtime here.

mod blob;
mod compression;
pub mod error;
pub mod external;
pub mod footer;
pub mod index;
pub mod reader;
mod tail;
mod tarfmt;
pub mod toc;
pub mod writer;
pub mod zstd;

pub use compression::Compression;
pub use error::{Error, Result, TarError, TocError};
pub use footer::{parse_footer, write_footer, write_legacy_footer, Footer, FOOTER_SIZE};
pub use index::{Chunk, Index, IndexOptions, Node, NodeId, NodeKind, ROOT};
pub use reader::{
    decompress_chunk, is_estargz, open, open_external, open_with, parse_toc_member, Layer, ReadAt,
};
pub use toc::{Toc, TocEntry};
