//! The scratch directory of a profiling run and the rootfs in it: one
//! directory per unpacked layer, a read-only overlay of them with a scratch
//! upper dir (the workload may write), and the inode table that maps what
//! the workload opened back to a layer and a path. Dropping [`Rootfs`]
//! unmounts the overlay and removes the scratch directory.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub(crate) struct Rootfs {
    /// The scratch directory (removed on drop).
    pub dir: PathBuf,
    /// Where the merged rootfs is mounted.
    pub merged: PathBuf,
    mounted: bool,
}

/// Inode number (of a layer dir's regular file) -> (layer, path) for every
/// name it has (hard links).
pub(crate) type InodeTable = HashMap<u64, Vec<(usize, String)>>;

impl Rootfs {
    pub fn create(parent: &Path) -> Result<Rootfs> {
        let dir = tempfile::Builder::new()
            .prefix("rsnap-optimize-")
            .tempdir_in(parent)
            .map_err(Error::io(format!(
                "creating a scratch directory in {}",
                parent.display()
            )))?
            .keep();
        let r = Rootfs {
            merged: dir.join("m"),
            dir,
            mounted: false,
        };
        for d in ["l", "u", "w", "m"] {
            mkdir(&r.dir.join(d))?;
        }
        Ok(r)
    }

    /// The directory layer `i` (0 = bottom) is unpacked into.
    pub fn layer_dir(&self, i: usize) -> PathBuf {
        self.dir.join("l").join(i.to_string())
    }

    pub fn make_layer_dir(&self, i: usize) -> Result<PathBuf> {
        let d = self.layer_dir(i);
        mkdir(&d)?;
        Ok(d)
    }

    /// Mount the overlay of layers `0..n` (top first in `lowerdir`).
    pub fn mount(&mut self, n: usize) -> Result<()> {
        let lower: Vec<String> = (0..n)
            .rev()
            .map(|i| self.layer_dir(i).display().to_string())
            .collect();
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            self.dir.join("u").display(),
            self.dir.join("w").display()
        );
        let data = std::ffi::CString::new(data).map_err(|_| {
            Error::Mount(self.merged.clone(), std::io::ErrorKind::InvalidInput.into())
        })?;
        rustix::mount::mount(
            "overlay",
            &self.merged,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )
        .map_err(|e| Error::Mount(self.merged.clone(), e.into()))?;
        self.mounted = true;
        Ok(())
    }

    /// The regular files of layers `0..n` by inode. All layer dirs are on
    /// one filesystem, where overlayfs reports a lower file's own inode.
    pub fn inode_table(&self, n: usize) -> Result<InodeTable> {
        let mut t = InodeTable::new();
        for i in 0..n {
            let root = self.layer_dir(i);
            let mut stack = vec![(root, String::new())];
            while let Some((dir, rel)) = stack.pop() {
                let rd = std::fs::read_dir(&dir)
                    .map_err(Error::io(format!("reading {}", dir.display())))?;
                let mut entries: Vec<_> = rd.filter_map(|e| e.ok()).collect();
                // Name order, so the first name of a hard-linked inode is stable.
                entries.sort_by_key(|e| e.file_name());
                for e in entries {
                    let Ok(name) = e.file_name().into_string() else {
                        continue;
                    };
                    let path = if rel.is_empty() {
                        name
                    } else {
                        format!("{rel}/{name}")
                    };
                    let Ok(m) = e.metadata() else { continue };
                    if m.is_dir() {
                        stack.push((e.path(), path));
                    } else if m.is_file() {
                        t.entry(m.ino()).or_default().push((i, path));
                    }
                }
            }
        }
        Ok(t)
    }
}

fn mkdir(d: &Path) -> Result<()> {
    std::fs::create_dir(d).map_err(Error::io(format!("creating {}", d.display())))?;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
        .map_err(Error::io(format!("chmod {}", d.display())))
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        if self.mounted {
            use rustix::mount::{unmount, UnmountFlags};
            if let Err(e) = unmount(&self.merged, UnmountFlags::empty()) {
                tracing::warn!(dir = %self.merged.display(), error = %e, "unmount failed; detaching");
                if let Err(e) = unmount(&self.merged, UnmountFlags::DETACH) {
                    // Never delete through a live mount.
                    tracing::error!(dir = %self.dir.display(), error = %e, "rootfs still mounted; scratch dir kept");
                    return;
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "removing the scratch dir");
        }
    }
}
