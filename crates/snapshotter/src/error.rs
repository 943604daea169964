//! The error of every snapshot operation. The variants are the outcomes
//! containerd distinguishes; the gRPC layer maps them to codes in one place.

use crate::remote::RemoteFsError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snapshot {0:?} not found")]
    NotFound(String),
    #[error("snapshot {0:?} already exists")]
    AlreadyExists(String),
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A remote layer of the chain cannot be served right now.
    #[error("remote layer of snapshot {snapshot:?} unavailable: {source}")]
    Unavailable {
        snapshot: String,
        #[source]
        source: RemoteFsError,
    },
    /// The process is stopping; containerd may try again.
    #[error("shutting down")]
    ShuttingDown,
    #[error("metadata store: {0}")]
    Store(#[from] StoreError),
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("remote filesystem: {0}")]
    Remote(#[from] RemoteFsError),
}

impl Error {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
