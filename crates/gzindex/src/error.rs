//! What building, parsing or reading through an index can fail with.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("layer is not a gzip stream we can index: {0}")]
    Gzip(String),
    #[error("layer digest mismatch: expected {expected}, got {actual}")]
    LayerDigest { expected: String, actual: String },
    #[error("layer tar: {0}")]
    Tar(#[source] estargz::Error),
    #[error("layer has {what} ({got}), over the cap of {cap}")]
    TooLarge {
        what: &'static str,
        got: u64,
        cap: u64,
    },
    #[error("not a gzip index (bad magic or version)")]
    Magic,
    #[error("malformed index: {0}")]
    Malformed(String),
    #[error("index file table: {0}")]
    Toc(#[source] estargz::TocError),
    #[error("index is for layer {index} ({index_size} bytes), not {layer} ({layer_size} bytes)")]
    WrongLayer {
        index: String,
        index_size: u64,
        layer: String,
        layer_size: u64,
    },
    #[error("span at blob offset {offset}: {reason}")]
    Span { offset: u64, reason: String },
    #[error("piece {digest}: digest mismatch (got {actual})")]
    DigestMismatch { digest: String, actual: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn malformed(m: impl Into<String>) -> Error {
    Error::Malformed(m.into())
}
