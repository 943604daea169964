//! The crate's error: callers (the snapshotter's filesystem) must tell "not
//! available now" from "not an eStargz layer" from "bad data". Causes are
//! carried, not classified: a registry error stays a `registry::Error`
//! inside [`FetchError`]`::Source`.

use crate::fetch::FetchError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not an eStargz blob (no footer, no TOC): fall back to a full pull.
    #[error("layer {layer} is not eStargz: {reason}")]
    NotEstargz {
        layer: String,
        #[source]
        reason: NotEstargz,
    },
    /// The TOC does not match the digest the image promised.
    #[error("layer {layer}: TOC digest {actual} does not match {expected}")]
    TocDigestMismatch {
        layer: String,
        expected: String,
        actual: String,
    },
    /// The blob claims to be eStargz but its TOC is invalid.
    #[error("layer {layer}: invalid eStargz: {source}")]
    Invalid {
        layer: String,
        #[source]
        source: estargz::Error,
    },
    /// The bytes could not be fetched (source failed, timed out).
    #[error("layer {layer} unavailable: {source}")]
    Unavailable { layer: String, source: FetchError },
    /// Bytes that did not match their digest (never served).
    #[error("layer {layer}, file {path}: {source}")]
    Corrupt {
        layer: String,
        path: String,
        source: FetchError,
    },
    /// An unverified layer whose whole blob did not match its digest, or
    /// whose chunks served earlier differ from that blob: not served.
    #[error("layer {layer} does not match its digest: {reason}")]
    LayerMismatch { layer: String, reason: String },
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

/// Why a blob is not eStargz.
#[derive(Debug, thiserror::Error)]
pub enum NotEstargz {
    #[error("blob of {size} bytes is smaller than a footer")]
    TooSmall { size: u64 },
    #[error("no eStargz footer: {0}")]
    Footer(#[source] estargz::Error),
}

impl Error {
    /// The bytes could not be fetched (network, source, timeout); whether
    /// that is worth retrying is the caller's call, from the source error.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable { .. })
    }
}
