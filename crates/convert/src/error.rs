//! What can go wrong converting an image.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Layout(#[from] oci_layout::Error),
    #[error("{what}")]
    Registry {
        what: String,
        #[source]
        source: registry::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("converting layer {digest}")]
    Estargz {
        digest: String,
        #[source]
        source: estargz::Error,
    },
    #[error("layer {digest}")]
    Layer {
        digest: String,
        #[source]
        source: Box<Error>,
    },
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedManifest(String),
    #[error("the index has no manifest for {0} (use --platform or --all-platforms)")]
    NoPlatform(String),
    #[error("no image converted")]
    NoImage,
    #[error("{0:?}: a destination needs a tag, not a digest")]
    DestinationDigest(String),
    #[error("{0}: manifest digest changed while staging")]
    StagingChanged(String),
    #[error("layer {digest} downloaded as {got} ({size} bytes)")]
    Download {
        digest: String,
        got: String,
        size: u64,
    },
    #[error("layer {digest} uncompresses to {got}, but the config's diff ID is {want}")]
    DiffId {
        digest: String,
        got: String,
        want: String,
    },
    #[error("creating the layer thread pool")]
    Pool(#[source] rayon::ThreadPoolBuildError),
}

impl Error {
    pub(crate) fn registry(what: impl Into<String>) -> impl FnOnce(registry::Error) -> Error {
        let what = what.into();
        move |source| Error::Registry { what, source }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
