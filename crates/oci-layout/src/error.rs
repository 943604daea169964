//! What can go wrong reading or writing an OCI layout.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported digest {0:?} (only sha256)")]
    UnsupportedDigest(String),
    #[error("malformed digest {0:?}")]
    MalformedDigest(String),
    #[error("{0} is not a JSON object")]
    NotAnObject(&'static str),
    #[error("{what}: malformed")]
    Malformed {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("manifest has {layers} layers but config has {diff_ids} diff IDs")]
    DiffIdCount { layers: usize, diff_ids: usize },
    #[error("no image tagged {0:?}")]
    NoSuchTag(String),
    #[error("tag {0:?} names two images")]
    AmbiguousTag(String),
    #[error("the layout holds no image")]
    NoImage,
    #[error("the layout holds {0} images: name one with oci:DIR:TAG")]
    ManyImages(usize),
    #[error("{0:?}: not an OCI layout reference (oci:DIR[:TAG])")]
    NotOciRef(String),
    #[error("{reference:?}: invalid tag {tag:?}")]
    BadTag { reference: String, tag: String },
    #[error("{} is not an OCI layout", .0.display())]
    NotALayout(PathBuf, #[source] std::io::Error),
    #[error("unsupported imageLayoutVersion in {}", .0.display())]
    LayoutVersion(PathBuf),
    #[error("{} is not valid JSON", .path.display())]
    FileJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} is too large ({size} bytes)")]
    TooLarge { what: String, size: u64 },
    #[error("blob {digest} has {got} bytes, descriptor says {want}")]
    SizeMismatch { digest: String, got: u64, want: u64 },
    #[error("blob {digest} does not match its digest (got {got})")]
    DigestMismatch { digest: String, got: String },
    #[error("{}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
