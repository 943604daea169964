//! Opens of a layer's files, told to an observer: the daemon's profile
//! recorder learns which files containers open first, by inode, and maps
//! them to paths only once per file.

use super::LazyLayer;
use std::sync::Arc;

/// Told of each FUSE open of a regular file of a layer. Called on a FUSE
/// thread before the open is answered: it must be quick and never block on
/// I/O.
pub trait OpenObserver: Send + Sync {
    fn opened(&self, layer: &LazyLayer, ino: u64);
}

impl LazyLayer {
    /// Tell `o` of every open from now on. Only the first observer set is
    /// kept (returns false for a later one).
    pub fn observe_opens(&self, o: Arc<dyn OpenObserver>) -> bool {
        self.observer.set(o).is_ok()
    }

    pub(crate) fn note_open(&self, ino: u64) {
        if let Some(o) = self.observer.get() {
            o.opened(self, ino);
        }
    }

    /// The layer-relative path (no leading `/`) of regular file `ino`.
    pub fn path_of_inode(&self, ino: u64) -> Option<String> {
        self.tree.regular(ino)?;
        let crate::tree::Inode::Node(id) = self.tree.inode(ino)? else {
            return None;
        };
        let p = self.tree.path_of(id);
        let p = p.trim_start_matches('/');
        (!p.is_empty()).then(|| p.to_string())
    }
}
