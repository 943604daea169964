//! The on-disk layout under the root and the directory steps that pair with
//! metadata transactions.
//!
//! ```text
//! ROOT/metadata.redb
//! ROOT/snapshots/<id>/fs     upper dir of an active snapshot, contents of a
//!                            committed one, or the mount point of a remote layer
//! ROOT/snapshots/<id>/work   overlayfs work dir (active snapshots only)
//! ROOT/snapshots/new-*       being created (not yet in metadata)
//! ROOT/snapshots/rm-*        being removed (already gone from metadata)
//! ```
//!
//! Crash safety comes from ordering: a directory is built under a temporary
//! name, renamed to its id *inside* the write transaction and only then is
//! the transaction committed. Removal renames the directory away inside the
//! transaction. So at every instant each metadata record has its directory;
//! the opposite (a directory without a record) is possible after a crash and
//! is what [`Layout::orphans`] finds and start-up removes.

use crate::error::{Error, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub struct Layout {
    root: PathBuf,
}

static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

impl Layout {
    /// Creates ROOT and ROOT/snapshots (mode 0700: layers may hold secrets).
    pub fn create(root: &Path) -> Result<Layout> {
        use std::os::unix::fs::DirBuilderExt;
        let snaps = root.join("snapshots");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&snaps)
            .map_err(|e| Error::io("create", &snaps, e))?;
        // Canonical so that prefixes compare with /proc/self/mountinfo.
        let root = fs::canonicalize(root).map_err(|e| Error::io("canonicalize", root, e))?;
        Ok(Layout { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.join("metadata.redb")
    }

    pub fn snapshots(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    pub fn dir(&self, id: u64) -> PathBuf {
        self.snapshots().join(id.to_string())
    }

    pub fn fs(&self, id: u64) -> PathBuf {
        self.dir(id).join("fs")
    }

    pub fn work(&self, id: u64) -> PathBuf {
        self.dir(id).join("work")
    }

    /// Builds `new-*/fs` (and `work` if `with_work`) outside the metadata.
    pub fn new_temp(&self, with_work: bool) -> Result<PathBuf> {
        let seq = TEMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .snapshots()
            .join(format!("new-{}-{seq}", std::process::id()));
        let mk = |p: &Path| fs::create_dir(p).map_err(|e| Error::io("create", p, e));
        mk(&tmp)?;
        let res = (|| {
            mk(&tmp.join("fs"))?;
            if with_work {
                mk(&tmp.join("work"))?;
            }
            // containerd's overlay snapshotter makes upper dirs 0755.
            set_mode(&tmp.join("fs"), 0o755)
        })();
        if let Err(e) = res {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
        Ok(tmp)
    }

    /// Renames `from` to `to` and makes the rename durable before the caller
    /// commits the transaction that depends on it.
    pub fn rename_durable(&self, from: &Path, to: &Path) -> Result<()> {
        fs::rename(from, to).map_err(|e| Error::io("rename", from, e))?;
        let d = self.snapshots();
        fs::File::open(&d)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("fsync", &d, e))
    }

    pub fn retired_name(&self, id: u64) -> PathBuf {
        self.snapshots().join(format!("rm-{id}"))
    }

    /// Entries of ROOT/snapshots that no live id accounts for.
    pub fn orphans(&self, live: &std::collections::HashSet<u64>) -> Result<Vec<PathBuf>> {
        let d = self.snapshots();
        let mut out = Vec::new();
        for ent in fs::read_dir(&d).map_err(|e| Error::io("read dir", &d, e))? {
            let ent = ent.map_err(|e| Error::io("read dir", &d, e))?;
            let name = ent.file_name();
            let keep = name
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
                .is_some_and(|id| live.contains(&id));
            if !keep {
                out.push(ent.path());
            }
        }
        out.sort();
        Ok(out)
    }
}

fn set_mode(p: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(|e| Error::io("chmod", p, e))
}

/// Mount points at or below `prefix`, deepest first (a stacked mount point
/// once per mount), from /proc/self/mountinfo. An unreadable mount table is
/// an error, never "nothing mounted": removal relies on this answer.
pub fn mounts_under(prefix: &Path) -> Result<Vec<PathBuf>> {
    let table = mountinfo::read_self().map_err(|e| {
        Error::io(
            "read mount table",
            Path::new(mountinfo::SELF_MOUNTINFO),
            e.into(),
        )
    })?;
    Ok(mountinfo::mount_points_under(&table, prefix))
}

/// Lazily detaches every mount at or below `path` (deepest first).
pub fn detach_mounts_under(path: &Path) -> Result<()> {
    detach_mounts_under_except(path, &[])
}

/// [`detach_mounts_under`], leaving the mounts at `keep` (and those under
/// them) alone.
pub fn detach_mounts_under_except(path: &Path, keep: &[std::path::PathBuf]) -> Result<()> {
    for m in mounts_under(path)? {
        if keep.iter().any(|k| m.starts_with(k)) {
            continue;
        }
        // DETACH: a busy mount (a container still using the layer) must not
        // block removal; the kernel frees it when the last user goes.
        if let Err(e) = rustix::mount::unmount(&m, rustix::mount::UnmountFlags::DETACH) {
            if e != rustix::io::Errno::INVAL && e != rustix::io::Errno::NOENT {
                return Err(Error::io("unmount", &m, e.into()));
            }
        }
    }
    Ok(())
}

/// Removes a snapshot tree without ever deleting through a mount: a remote
/// layer still mounted there (or a bind mount in tests) would otherwise
/// have its source files deleted.
pub fn remove_tree(path: &Path) -> Result<()> {
    detach_mounts_under(path)?;
    if let Some(m) = mounts_under(path)?.first() {
        return Err(Error::FailedPrecondition(format!(
            "{} is still mounted",
            m.display()
        )));
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("remove", path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_are_everything_but_live_ids() {
        let dir = tempfile::tempdir().unwrap();
        let l = Layout::create(dir.path()).unwrap();
        let t = l.new_temp(true).unwrap();
        l.rename_durable(&t, &l.dir(1)).unwrap();
        fs::create_dir(l.dir(2)).unwrap();
        fs::create_dir(l.retired_name(3)).unwrap();
        let _tmp2 = l.new_temp(false).unwrap();
        let live = [1u64].into_iter().collect();
        let o = l.orphans(&live).unwrap();
        assert_eq!(o.len(), 3, "{o:?}");
        assert!(!o.contains(&l.dir(1)));
        for p in o {
            remove_tree(&p).unwrap();
        }
        assert!(l.fs(1).is_dir() && l.work(1).is_dir());
    }
}
