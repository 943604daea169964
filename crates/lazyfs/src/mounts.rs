//! Mount-table helpers that need no FUSE library: finding FUSE mounts
//! (through the `mountinfo` crate), clearing dead ones left by a crashed
//! daemon, and raising a mount's kernel readahead.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{info, warn};

/// Mount points of the FUSE mounts in this process's namespace.
fn fuse_mounts() -> std::io::Result<Vec<PathBuf>> {
    Ok(mountinfo::read_self()?
        .into_iter()
        .filter(|m| is_fuse(m.fs_type.as_bytes()))
        .map(|m| m.mount_point)
        .collect())
}

fn is_fuse(fs_type: &[u8]) -> bool {
    fs_type == b"fuse" || fs_type.starts_with(b"fuse.")
}

/// Whether a FUSE filesystem is mounted exactly at `path`.
pub fn is_fuse_mounted(path: &Path) -> bool {
    fuse_mounts().is_ok_and(|m| m.iter().any(|p| p == path))
}

/// `statfs` in a helper thread so a hung FUSE server cannot hang the caller.
/// statfs, not stat: the kernel answers stat of a mount root from cached
/// attributes even after the server died; statfs always asks the server.
/// `None`: no answer in time.
fn stat_with_timeout(path: &Path, t: Duration) -> Option<std::io::Result<()>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(
            rustix::fs::statfs(&p)
                .map(|_| ())
                .map_err(std::io::Error::from),
        );
    });
    rx.recv_timeout(t).ok()
}

/// Lazily unmount every FUSE mount under `dir` whose server is gone
/// ("transport endpoint is not connected"). Returns what was unmounted.
/// Live mounts, and mounts that do not answer quickly, are left alone.
pub fn cleanup_dead_mounts(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = fuse_mounts()?
        .into_iter()
        .filter(|p| p.starts_with(dir))
        .collect();
    // Deepest first, so nested mounts go before their parents.
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut done = Vec::new();
    for mp in found {
        match stat_with_timeout(&mp, Duration::from_secs(2)) {
            Some(Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                match rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH) {
                    Ok(()) => {
                        info!(mount = %mp.display(), "unmounted dead FUSE mount");
                        done.push(mp);
                    }
                    Err(e) => {
                        warn!(mount = %mp.display(), error = %e, "cannot unmount dead FUSE mount")
                    }
                }
            }
            _ => {}
        }
    }
    Ok(done)
}

/// Set `/sys/class/bdi/<major:minor>/read_ahead_kb` of the filesystem
/// mounted at `mountpoint`. The kernel default (128 KiB) makes sequential
/// reads through FUSE needlessly slow.
pub(crate) fn set_read_ahead_kb(mountpoint: &Path, kb: u32) -> std::io::Result<()> {
    let dev = std::fs::metadata(mountpoint)?.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    std::fs::write(
        format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"),
        kb.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuse_types() {
        assert!(is_fuse(b"fuse") && is_fuse(b"fuse.rsnap"));
        assert!(!is_fuse(b"fuseblk") && !is_fuse(b"fusectl") && !is_fuse(b"overlay"));
    }
}
