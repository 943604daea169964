//! What can go wrong pulling a layer ourselves, and what it means for the
//! snapshotter: every failure leaves containerd to pull the layer.

use snapshotter::RemoteFsError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no image reference in the labels")]
    NoImageRef,
    #[error("no layer digest in the labels")]
    NoLayerDigest,
    #[error("image reference")]
    Reference(#[source] registry::Error),
    #[error("manifest or config of {image}")]
    Image {
        image: String,
        #[source]
        source: registry::Error,
    },
    #[error("layer {layer} is not in the manifest of {image}")]
    NotInManifest { image: String, layer: String },
    #[error("the image config of {image} has no diff ID for layer {index}")]
    NoDiffId { image: String, index: usize },
    #[error("fetching layer {layer}")]
    Fetch {
        layer: String,
        #[source]
        source: registry::Error,
    },
    #[error("unpacking layer {layer}")]
    Unpack {
        layer: String,
        #[source]
        source: std::io::Error,
    },
    #[error("layer {layer}: the blob's digest is {got}")]
    Digest { layer: String, got: String },
    #[error("layer {layer}: {got} bytes, the manifest says {want}")]
    Size { layer: String, got: u64, want: u64 },
    #[error(
        "layer {layer}: the uncompressed tar's digest is {got}, the image config's diff ID {want}"
    )]
    DiffId {
        layer: String,
        got: String,
        want: String,
    },
    #[error("staging directory {path}")]
    Staging {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the pull of layer {layer} ahead failed: {message}")]
    Ahead { layer: String, message: String },
    #[error("task {what}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
}

impl From<Error> for RemoteFsError {
    fn from(e: Error) -> RemoteFsError {
        let unreachable = matches!(&e, Error::Fetch { source, .. } | Error::Image { source, .. }
            if source.kind() == registry::ErrorKind::Unreachable);
        if unreachable {
            RemoteFsError::Unavailable(Box::new(e))
        } else {
            RemoteFsError::Other(Box::new(e))
        }
    }
}

/// `e` and its causes, for a log line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
