//! The eStargz [`RemoteFs`](snapshotter::RemoteFs): what the snapshotter
//! calls to mount a layer lazily.
//!
//! Layers of this crate, each using only the ones before it:
//! - [`Config`]: plain settings the daemon builds from its own config file;
//!   turned here into the `lazyfs` and `registry` settings.
//! - [`Error`] and its classification: the one place that decides what a
//!   failure (a registry error above all) means for a layer: fall back to
//!   an ordinary snapshot, or "unavailable, try later".
//! - `open`: labels -> image reference, layer digest, TOC digest (from the
//!   labels or the image manifest) -> an opened `lazyfs::LazyLayer`.
//! - `preopen`: the other layers of the image opened ahead, while
//!   containerd prepares the first.
//! - [`StargzFs`]: the `RemoteFs` itself: the mount table (one
//!   `lazyfs::MountHandle` per mount point), check, unmount.

mod config;
mod error;
mod fs;
mod open;
mod preopen;

pub use config::Config;
pub use error::Error;
pub use fs::StargzFs;
/// The `[resolver]` table's typed form, for building a [`Config`].
pub use registry::HostsConfig;
/// What [`Config::credentials`] is built from.
pub use registry::{Credential, CredentialSource};
