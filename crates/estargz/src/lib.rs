//! eStargz, the format only.
//!
//! Layers of this crate, each using only the ones above it:
//! - `error`: one typed error for every way a blob can be bad.
//! - `footer`: the 51-byte eStargz footer and the 47-byte legacy stargz footer.
//! - `toc`: the `stargz.index.json` JSON types, exactly as the spec names them.
//! - `index`: a validated TOC as an inode-like tree with per-file chunk lists.
//! - `reader`: `ReadAt`, opening a blob in at most two reads, TOC digest
//!   verification, verified chunk and file-range reads.
//! - `writer`: tar / tar.gz -> eStargz, parallel compression, deterministic.
//!
//! No HTTP, no FUSE, no async runtime here.

pub mod error;
pub mod footer;
pub mod index;
pub mod reader;
pub mod toc;
pub mod writer;

pub use error::{Error, Result};
