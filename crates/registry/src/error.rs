//! One error type for the crate; `kind()` is what callers branch on.

use std::fmt;

/// Coarse classes of failure: the snapshotter falls back differently on each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The registry (or token server) refused our credentials, or we had none.
    Unauthorized,
    /// Repository, manifest or blob does not exist.
    NotFound,
    /// Could not connect, timed out, or the server kept failing (5xx/429).
    Unreachable,
    /// The server sent bytes or headers that do not make sense.
    Invalid,
    /// Content did not match its digest: never served.
    DigestMismatch,
    /// A size limit was exceeded (manifest, config, token, …).
    TooLarge,
    /// Anything else (bad configuration, unexpected status, local I/O).
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid reference {input:?}: {reason}")]
    Reference { input: String, reason: &'static str },
    #[error("invalid digest {0:?}")]
    BadDigest(String),
    #[error("unauthorized: {url}: {detail}")]
    Unauthorized { url: String, detail: String },
    #[error("not found: {url}")]
    NotFound { url: String },
    #[error("unreachable: {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("server error {status} from {url}: {detail}")]
    Server {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("unexpected status {status} from {url}: {detail}")]
    Status {
        url: String,
        status: u16,
        detail: String,
    },
    #[error("invalid response from {url}: {detail}")]
    Invalid { url: String, detail: String },
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("{what} larger than the limit of {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("no manifest for platform {0} in the index")]
    NoPlatform(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("credential helper {helper}: {detail}")]
    CredentialHelper { helper: String, detail: String },
    #[error("read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Unauthorized { .. } | Error::CredentialHelper { .. } => ErrorKind::Unauthorized,
            Error::NotFound { .. } | Error::NoPlatform(_) => ErrorKind::NotFound,
            Error::Unreachable { .. } | Error::Server { .. } => ErrorKind::Unreachable,
            Error::Invalid { .. } => ErrorKind::Invalid,
            Error::DigestMismatch { .. } => ErrorKind::DigestMismatch,
            Error::TooLarge { .. } => ErrorKind::TooLarge,
            Error::Reference { .. }
            | Error::BadDigest(_)
            | Error::Status { .. }
            | Error::Config(_)
            | Error::Io { .. } => ErrorKind::Other,
        }
    }

    pub(crate) fn invalid(url: impl fmt::Display, detail: impl fmt::Display) -> Error {
        Error::Invalid {
            url: url.to_string(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn unreachable(url: impl fmt::Display, detail: impl fmt::Display) -> Error {
        Error::Unreachable {
            url: url.to_string(),
            detail: detail.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
