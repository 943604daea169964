//! Overlay and bind mounts: the specs handed to containerd ([`build`]), in
//! the shapes containerd's overlay snapshotter uses, and [`OverlayMount`],
//! a read-only overlay this process mounts itself (`rsnap mount`).
//!
//!
//! | snapshot | mount |
//! |---|---|
//! | active, no parent | `bind` of its fs dir, `rw` |
//! | active with parents | `overlay`: `upperdir`, `workdir`, `lowerdir` = parents nearest first |
//! | view of one layer | `bind` of that layer, `ro` |
//! | view of several layers | `overlay` with `lowerdir` only (read-only) |
//! | view with no parent | `bind` of its own empty fs dir, `ro` |
//!
//! Limit: classic overlay mount options must fit in one page (4 KiB). With
//! paths like `/var/lib/remote-snapshotter/snapshots/123/fs` (~45 bytes) that
//! is about 90 layers. containerd performs these mounts itself, so the fix
//! (relative paths from a chdir, or the new mount API with `lowerdir+`)
//! would have to be on its side; images deeper than that fail to mount.

use crate::types::{Kind, Mount};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub fn build(kind: Kind, fs: PathBuf, work: PathBuf, lowers: &[PathBuf]) -> Vec<Mount> {
    let p = |p: &PathBuf| p.display().to_string();
    let bind = |src: &PathBuf, mode: &str| Mount {
        fs_type: "bind".into(),
        source: p(src),
        options: vec![mode.into(), "rbind".into()],
    };
    let lowerdir = || {
        format!(
            "lowerdir={}",
            lowers.iter().map(p).collect::<Vec<_>>().join(":")
        )
    };
    match (kind, lowers.len()) {
        (Kind::Active, 0) => vec![bind(&fs, "rw")],
        (Kind::Active, _) => vec![Mount {
            fs_type: "overlay".into(),
            source: "overlay".into(),
            // index=off: the layers may be FUSE mounts, which cannot back an
            // overlay index (no file handles across remounts).
            options: vec![
                "index=off".into(),
                format!("workdir={}", p(&work)),
                format!("upperdir={}", p(&fs)),
                lowerdir(),
            ],
        }],
        (_, 0) => vec![bind(&fs, "ro")],
        (_, 1) => vec![bind(&lowers[0], "ro")],
        (_, _) => vec![Mount {
            fs_type: "overlay".into(),
            source: "overlay".into(),
            options: vec!["index=off".into(), lowerdir()],
        }],
    }
}

/// A read-only overlayfs of lower directories (top first), unmounted on drop.
#[derive(Debug)]
pub struct OverlayMount {
    target: PathBuf,
}

impl OverlayMount {
    /// Mounts `lowers` (top first) read-only at `target`.
    pub fn mount(lowers: &[&Path], target: &Path) -> io::Result<OverlayMount> {
        let data = lowerdir_option(lowers)?;
        rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            rustix::mount::MountFlags::RDONLY,
            data.as_c_str(),
        )?;
        Ok(OverlayMount {
            target: target.to_path_buf(),
        })
    }

    pub fn target(&self) -> &Path {
        &self.target
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        let flags = rustix::mount::UnmountFlags::empty();
        if rustix::mount::unmount(&self.target, flags).is_err() {
            let _ = rustix::mount::unmount(&self.target, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// `lowerdir=A:B:...` from the paths' bytes (not their lossy display).
/// Refused: fewer than two dirs (without an upper dir the kernel wants two
/// or more) and paths holding the option separators `:` or `,`, which would
/// silently name other directories.
fn lowerdir_option(lowers: &[&Path]) -> io::Result<CString> {
    let invalid = |msg: String| io::Error::new(io::ErrorKind::InvalidInput, msg);
    if lowers.len() < 2 {
        return Err(invalid(
            "a read-only overlay needs two lower dirs or more".into(),
        ));
    }
    let mut data = b"lowerdir=".to_vec();
    for (i, p) in lowers.iter().enumerate() {
        let b = p.as_os_str().as_bytes();
        if b.iter().any(|c| matches!(c, b':' | b',')) {
            return Err(invalid(format!(
                "overlay lower dir {} holds ':' or ','",
                p.display()
            )));
        }
        if i > 0 {
            data.push(b':');
        }
        data.extend_from_slice(b);
    }
    CString::new(data).map_err(|e| invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_option_is_bytes_top_first() {
        let a = Path::new(std::ffi::OsStr::from_bytes(b"/l/a\xff b"));
        let o = lowerdir_option(&[a, Path::new("/l/b")]).unwrap();
        assert_eq!(o.as_bytes(), b"lowerdir=/l/a\xff b:/l/b");
    }

    #[test]
    fn lowerdir_option_refuses_what_overlay_would_misread() {
        let kind = |l: &[&Path]| lowerdir_option(l).unwrap_err().kind();
        assert_eq!(kind(&[Path::new("/one")]), io::ErrorKind::InvalidInput);
        assert_eq!(
            kind(&[Path::new("/a:b"), Path::new("/c")]),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(&[Path::new("/a"), Path::new("/b,upperdir=/x")]),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            kind(&[Path::new("/a\0"), Path::new("/b")]),
            io::ErrorKind::InvalidInput
        );
    }
}
