//! The mounts handed to containerd, in the shapes containerd's overlay
//! snapshotter uses:
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
use std::path::PathBuf;

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
