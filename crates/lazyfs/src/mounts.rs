//! Mount-table helpers that need no FUSE library: finding FUSE mounts,
//! unmounting them, clearing dead ones left by a crashed daemon, and
//! raising a mount's kernel readahead.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{info, warn};

/// One line of `/proc/self/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// Undo mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse mountinfo text (lines that do not parse are skipped).
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let mut r = right.split(' ');
        let (Some(fstype), Some(source)) = (r.next(), r.next()) else {
            continue;
        };
        out.push(MountEntry {
            mount_point: PathBuf::from(unescape(mp)),
            fstype: fstype.to_string(),
            source: unescape(source),
        });
    }
    out
}

pub fn mounts() -> std::io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

fn is_fuse(fstype: &str) -> bool {
    fstype == "fuse" || fstype.starts_with("fuse.")
}

/// Whether a FUSE filesystem is mounted exactly at `path`.
pub fn is_fuse_mounted(path: &Path) -> bool {
    mounts().is_ok_and(|m| {
        m.iter()
            .any(|e| e.mount_point == path && is_fuse(&e.fstype))
    })
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
    let mut found: Vec<PathBuf> = mounts()?
        .into_iter()
        .filter(|e| is_fuse(&e.fstype) && e.mount_point.starts_with(dir))
        .map(|e| e.mount_point)
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
pub fn set_read_ahead_kb(mountpoint: &Path, kb: u32) -> std::io::Result<()> {
    let dev = std::fs::metadata(mountpoint)?.dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    std::fs::write(
        format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"),
        kb.to_string(),
    )
}

/// A read-only overlayfs of lower directories (top first), unmounted on drop.
#[derive(Debug)]
pub struct OverlayMount {
    target: PathBuf,
}

impl OverlayMount {
    pub fn mount(lowers: &[&Path], target: &Path) -> std::io::Result<OverlayMount> {
        // Without an upper dir the kernel wants two lower dirs or more.
        if lowers.len() < 2 {
            return Err(std::io::Error::other(
                "a read-only overlay needs two lower dirs or more",
            ));
        }
        let lower: Vec<String> = lowers.iter().map(|p| p.display().to_string()).collect();
        let data = std::ffi::CString::new(format!("lowerdir={}", lower.join(":")))
            .map_err(std::io::Error::other)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_with_escapes() {
        let text = "36 35 98:0 / /mnt/with\\040space rw,noatime master:1 - fuse rsnap:sha256:ab rw,user_id=0\n\
                    37 35 0:5 / /proc rw - proc proc rw\n\
                    garbage line\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt/with space"));
        assert_eq!(m[0].fstype, "fuse");
        assert_eq!(m[0].source, "rsnap:sha256:ab");
        assert_eq!(m[1].fstype, "proc");
        assert_eq!(unescape("a\\134b\\"), "a\\b\\");
    }
}
