//! The crate's error: callers (the snapshotter) must tell "not available
//! now" from "not an eStargz layer" from "bad data".

use crate::fetch::FetchError;
use crate::source::SourceError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not an eStargz blob (no footer, no TOC): fall back to a full pull.
    #[error("layer {layer} is not eStargz: {reason}")]
    NotEstargz { layer: String, reason: String },
    /// The TOC does not match the digest the image promised.
    #[error("layer {layer}: TOC digest {actual} does not match {expected}")]
    TocDigestMismatch {
        layer: String,
        expected: String,
        actual: String,
    },
    /// The blob claims to be eStargz but its TOC is invalid.
    #[error("layer {layer}: invalid eStargz: {reason}")]
    Invalid { layer: String, reason: String },
    /// The source could not be read now; may work later.
    #[error("layer {layer} unavailable: {source}")]
    Unavailable { layer: String, source: FetchError },
    /// Bytes that did not match their digest (never served).
    #[error("layer {layer}, file {path}: {source}")]
    Corrupt {
        layer: String,
        path: String,
        source: FetchError,
    },
    #[error("no such inode")]
    NotFound,
    #[error("not a regular file")]
    NotAFile,
    #[error("mount at {path}: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Worth retrying later (network, registry down, timeout).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }

    pub(crate) fn from_source(layer: &str, e: SourceError) -> Error {
        match e {
            SourceError::Unavailable(_) => Error::Unavailable {
                layer: layer.to_string(),
                source: e.into(),
            },
            SourceError::Invalid(reason) => Error::Invalid {
                layer: layer.to_string(),
                reason,
            },
        }
    }
}
