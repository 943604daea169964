//! What can go wrong talking to containerd during a pull.

use containerd_client::tonic;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to containerd at {address}")]
    Connect {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("containerd: {what}")]
    Rpc {
        what: String,
        #[source]
        source: tonic::Status,
    },
    #[error("{what}")]
    Registry {
        what: String,
        #[source]
        source: registry::Error,
    },
    #[error("the config lists {diff_ids} diff IDs for {layers} layers")]
    DiffIdCount { diff_ids: usize, layers: usize },
    #[error("layer {digest} unpacked to {got}, but the config says {want}")]
    Unpacked {
        digest: String,
        got: String,
        want: String,
    },
}

impl Error {
    pub(crate) fn rpc(what: impl Into<String>) -> impl FnOnce(tonic::Status) -> Error {
        let what = what.into();
        move |source| Error::Rpc { what, source }
    }

    pub(crate) fn registry(what: impl Into<String>) -> impl FnOnce(registry::Error) -> Error {
        let what = what.into();
        move |source| Error::Registry { what, source }
    }
}
