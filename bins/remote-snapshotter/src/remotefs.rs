//! The seam where the daemon chooses its [`RemoteFs`]: the only function
//! that knows which lazy filesystem backs remote snapshots.

use crate::config::Config;
use snapshotter::{NoRemoteFs, RemoteFs};
use std::path::Path;
use std::sync::Arc;

/// Builds the remote filesystem from the config; `root` is the daemon's
/// state directory (for caches). Until the lazyfs-backed implementation is
/// wired here, every layer falls back to an ordinary snapshot.
pub fn build_remote_fs(_cfg: &Config, _root: &Path) -> Arc<dyn RemoteFs> {
    Arc::new(NoRemoteFs)
}
