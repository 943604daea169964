//! FUSE passthrough bookkeeping: which open of an inode is answered with a
//! backing file (the kernel then reads it directly, the daemon never sees
//! the reads) and which goes through the daemon.
//!
//! The kernel refuses (EIO to the opener) an inode open both ways at once,
//! or through two different backing files: so an inode with a live cached
//! open gets cached opens, and all passthrough opens of an inode share one
//! backing id, closed when the last of them is released. The kernel forgets
//! an open before it sends us RELEASE, so these counts are never below its own.

use fuser::{BackingId, FileHandle, FopenFlags, ReplyOpen};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use tracing::{debug, warn};

#[derive(Default)]
struct Io {
    cached: u32,
    through: u32,
    backing: Option<BackingId>,
}

#[derive(Default)]
pub(super) struct Modes {
    by_ino: Mutex<HashMap<u64, Io>>,
    /// Registering a backing file failed once (say, the cache is on a
    /// stacked filesystem): do not try again on this mount.
    broken: AtomicBool,
}

impl Modes {
    /// Answer an open of `ino`: passed through to `backing` when given and
    /// no cached open of the inode is live, else a cached open. Returns
    /// whether it was passed through.
    pub(super) fn open(
        &self,
        ino: u64,
        backing: Option<&Path>,
        fh: FileHandle,
        reply: ReplyOpen,
    ) -> bool {
        let mut m = self.by_ino.lock();
        let io = m.entry(ino).or_default();
        if let (0, Some(path), false) = (io.cached, backing, self.broken.load(Relaxed)) {
            if io.backing.is_none() {
                // The kernel takes its own reference on the file: ours may close.
                match std::fs::File::open(path).and_then(|f| reply.open_backing(&f)) {
                    Ok(id) => io.backing = Some(id),
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "FUSE passthrough unavailable; reads go through the daemon");
                        self.broken.store(true, Relaxed);
                    }
                }
            }
            if let Some(id) = &io.backing {
                io.through += 1;
                debug!(ino, "open passed through");
                reply.opened_passthrough(fh, FopenFlags::empty(), id);
                return true;
            }
        }
        io.cached += 1;
        reply.opened(fh, FopenFlags::FOPEN_KEEP_CACHE);
        false
    }

    /// An open of `ino` ended.
    pub(super) fn release(&self, ino: u64, through: bool) {
        let mut m = self.by_ino.lock();
        let Some(io) = m.get_mut(&ino) else {
            return;
        };
        if through {
            io.through = io.through.saturating_sub(1);
            if io.through == 0 {
                io.backing = None;
            }
        } else {
            io.cached = io.cached.saturating_sub(1);
        }
        if io.through == 0 && io.cached == 0 {
            m.remove(&ino);
        }
    }
}
