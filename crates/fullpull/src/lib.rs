//! The fallback pull: a layer that cannot be mounted lazily is pulled by
//! the daemon itself, faster than containerd would (parallel ranged
//! requests; decompression, hashing and unpacking while it downloads; the
//! image's upper layers pulled at the same time), verified against its
//! digest and diff ID, and committed by the snapshotter as an ordinary
//! snapshot, so containerd skips its own fetch and apply.
//!
//! - `stream`: parallel ranged requests, handed on in blob order.
//! - the unpack itself (a tar stream into an overlayfs lower directory) is
//!   the `overlay-unpack` crate's, shared with `optimize`.
//! - `pull`: one layer: stream -> gunzip -> tar, both digests checked.
//! - [`PullingFs`]: the `RemoteFs` wrapper the daemon hands the snapshotter.

mod error;
mod fs;
mod pull;
mod stream;

pub use error::Error;
pub use fs::{PullingFs, Stats};
pub use overlay_unpack::{unpack_tar, Written};
pub use pull::Compression;

/// `[fallback_pull]` of the daemon's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// false: containerd pulls every layer that cannot be lazy (its own path).
    pub enable: bool,
    /// Ranged requests in flight per layer.
    pub concurrency: usize,
    /// Bytes per ranged request.
    pub request_bytes: u64,
    /// Layers of an image pulled at once ahead of their Prepare (0: only
    /// the layer being prepared).
    pub parallel_layers: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            enable: true,
            concurrency: 4,
            request_bytes: 8 << 20,
            parallel_layers: 3,
        }
    }
}
