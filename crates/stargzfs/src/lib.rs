//! The eStargz [`RemoteFs`](snapshotter::RemoteFs): what the snapshotter
//! calls to mount a layer lazily.
//!
//! Layers of this crate, each using only the ones before it:
//! - [`Config`]: plain settings the daemon builds from its own config file;
//!   turned here into the `lazyfs` and `registry` settings.
//! - [`Error`] and its classification: the one place that decides what a
//!   failure (a registry error above all) means for a layer: fall back to
//!   an ordinary snapshot, or "unavailable, try later".
//! - `manifest`: the image manifest, fetched once for all of an image's
//!   Prepares.
//! - `toc_store`: verified TOCs kept under the root, so a layer opens
//!   again after a restart without its registry.
//! - `gzlayer`: plain gzip layers (no TOC) served through a seekable
//!   index (`gzindex`) from a local directory or the image's referrers.
//! - `open`: labels -> image reference, layer digest, TOC digest (from the
//!   labels or the image manifest) -> an opened `lazyfs::LazyLayer`; a
//!   layer without a TOC through `gzlayer`.
//! - `preopen`: the other layers of the image opened ahead, while
//!   containerd prepares the first.
//! - `handover`: mounts that outlive the daemon process: FUSE fds kept by
//!   the fd holder, taken back and served at the next start.
//! - `profile`: opt-in profiles of real runs: per image, the files
//!   containers open first, kept, listed and found for `rsnap profile`.
//! - [`StargzFs`]: the `RemoteFs` itself: the mount table (one
//!   `lazyfs::MountHandle` per mount point), check, unmount.

mod config;
mod error;
mod fs;
mod gzlayer;
mod handover;
mod manifest;
mod open;
mod preopen;
mod profile;
mod toc_store;

pub use config::Config;
pub use error::Error;
pub use fs::StargzFs;
/// Where the daemon looks for a layer's index in its `[gzindex] dir`.
pub use gzindex::index_path as gz_index_path;
pub use handover::{fd_store_path, HandoverStats, LayerInfo};
/// The fd holder's loop, for the daemon's `fd-holder` mode.
pub use lazyfs::handover::{run_holder as run_fd_holder, HolderConfig as FdHolderConfig};
/// Where an unverified layer's whole-blob check stands ([`LayerInfo::blob_check`]).
pub use lazyfs::BlobCheck;
/// What [`StargzFs::fetch_figures`] returns (latencies, bounded failures, cache).
pub use lazyfs::{CacheFigures, FetchFigures, HistogramSnapshot};
pub use profile::{
    find_profile, list_profiles, profile_path, profiles_dir, ProfileConfig, SavedLayer,
    SavedProfile, PROFILE_VERSION,
};
/// The `[resolver]` table's typed form, for building a [`Config`].
pub use registry::HostsConfig;
/// What [`Config::credentials`] is built from.
pub use registry::{Credential, CredentialSource};
pub use toc_store::{TocStore, TocStoreStats};
