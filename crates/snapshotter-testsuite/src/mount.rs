//! Performing the mounts a snapshotter returns, as containerd would, so the
//! suite can look at files through the layers.

use rustix::mount::{MountFlags, UnmountFlags};
use snapshotter::Mount;
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Unmounts (lazily) on drop, so a failing assertion leaves no mount.
pub struct MountGuard {
    target: Option<PathBuf>,
}

impl MountGuard {
    pub fn path(&self) -> &Path {
        self.target.as_deref().expect("mounted")
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(t) = self.target.take() {
            let _ = rustix::mount::unmount(&t, UnmountFlags::DETACH);
        }
    }
}

/// Mounts the single mount `mounts` holds on `target` (an existing dir).
pub fn mount_all(mounts: &[Mount], target: &Path) -> std::io::Result<MountGuard> {
    let [m] = mounts else {
        return Err(std::io::Error::other(format!(
            "expected one mount, got {mounts:?}"
        )));
    };
    let ro = m.options.iter().any(|o| o == "ro");
    match m.fs_type.as_str() {
        "bind" => {
            rustix::mount::mount_bind_recursive(m.source.as_str(), target)?;
            let guard = MountGuard {
                target: Some(target.to_path_buf()),
            };
            if ro {
                rustix::mount::mount_remount(target, MountFlags::BIND | MountFlags::RDONLY, "")?;
            }
            Ok(guard)
        }
        "overlay" => {
            let data: Vec<&str> = m
                .options
                .iter()
                .map(String::as_str)
                .filter(|o| *o != "ro" && *o != "rw")
                .collect();
            let data = CString::new(data.join(",")).map_err(std::io::Error::other)?;
            let flags = if ro {
                MountFlags::RDONLY
            } else {
                MountFlags::empty()
            };
            rustix::mount::mount(m.source.as_str(), target, "overlay", flags, data.as_c_str())?;
            Ok(MountGuard {
                target: Some(target.to_path_buf()),
            })
        }
        t => Err(std::io::Error::other(format!("unsupported mount type {t}"))),
    }
}
