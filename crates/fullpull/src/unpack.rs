//! A layer's tar stream written into a directory the way overlayfs wants a
//! lower layer: OCI whiteouts become 0/0 character devices, opaque markers
//! the `trusted.overlay.opaque` xattr; owners, modes, xattrs, links,
//! devices and mtimes kept (directory mtimes set last, as containerd does).
//! Nothing is written outside the directory: `..` is refused by the tar
//! crate and by [`clean`], and no path is followed through a symlink.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// What was written, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaques: u64,
}

/// `a/./b/` -> `a/b`; `None` for a path with `..` or not UTF-8.
fn clean(p: &Path) -> Option<String> {
    let mut out: Vec<&str> = Vec::new();
    for c in p.to_str()?.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => out.push(c),
        }
    }
    Some(out.join("/"))
}

fn refused(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// `root/rel`'s parent made (as directories) without following a symlink
/// on the way: a layer's symlink must never carry a write out of `root`.
fn safe_parent(root: &Path, rel: &str) -> io::Result<PathBuf> {
    let mut p = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for c in &parts[..parts.len().saturating_sub(1)] {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(refused(format!("{rel}: a parent is not a directory"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir(&p)?,
            Err(e) => return Err(e),
        }
    }
    Ok(root.join(rel))
}

/// Unpacks the tar stream `r` into `root` (an existing directory).
pub fn unpack_tar(r: impl Read, root: &Path) -> io::Result<Written> {
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(true);
    let mut w = Written::default();
    let mut dirs: Vec<(PathBuf, u64)> = Vec::new();
    for e in ar.entries()? {
        let mut e = e?;
        let raw = e.path()?.into_owned();
        let path = clean(&raw).ok_or_else(|| refused(format!("entry {}: `..`", raw.display())))?;
        w.entries += 1;
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        if name == OPAQUE {
            let d = if dir.is_empty() {
                root.to_path_buf()
            } else {
                // `dir/x`'s parents, `dir` included, made safely.
                let x = safe_parent(root, &format!("{dir}/x"))?;
                x.parent().map_or_else(|| root.to_path_buf(), Path::to_path_buf)
            };
            rustix::fs::setxattr(
                &d,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )?;
            w.opaques += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            if hidden.is_empty() {
                return Err(refused(format!("entry {path}: empty whiteout")));
            }
            let rel = if dir.is_empty() {
                hidden.to_string()
            } else {
                format!("{dir}/{hidden}")
            };
            whiteout(&safe_parent(root, &rel)?)?;
            w.whiteouts += 1;
            continue;
        }
        let is_dir = e.header().entry_type().is_dir();
        if path.is_empty() {
            // The layer's root: its attributes go on `root` itself.
            if is_dir {
                if let (Ok(mode), Ok(uid), Ok(gid)) =
                    (e.header().mode(), e.header().uid(), e.header().gid())
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(root, std::fs::Permissions::from_mode(mode & 0o7777))?;
                    std::os::unix::fs::chown(root, Some(uid as u32), Some(gid as u32))?;
                }
                dirs.push((root.to_path_buf(), e.header().mtime().unwrap_or(0)));
            }
            continue;
        }
        safe_parent(root, &path)?;
        if !e.unpack_in(root)? {
            return Err(refused(format!("entry {path}: outside the layer")));
        }
        if is_dir {
            dirs.push((root.join(&path), e.header().mtime().unwrap_or(0)));
        }
    }
    // Children changed their directories' mtimes; put the layer's back,
    // deepest first.
    for (d, mtime) in dirs.iter().rev() {
        let t = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: *mtime as i64,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: *mtime as i64,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            d,
            &t,
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    Ok(w)
}

/// An overlay whiteout: a 0/0 character device where `path` was.
fn whiteout(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path)?,
        Ok(_) => std::fs::remove_file(path)?,
        Err(_) => {}
    }
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        rustix::fs::makedev(0, 0),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, ty, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*ty);
            h.set_mode(if ty.is_dir() { 0o750 } else { 0o640 });
            h.set_uid(1234);
            h.set_gid(4321);
            h.set_mtime(1_000_000);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_path(name).unwrap();
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn files_links_whiteouts_and_opaque_dirs() {
        let d = tempfile::tempdir().unwrap();
        let t = tar_of(&[
            ("etc/", tar::EntryType::Directory, b"", None),
            ("etc/a", tar::EntryType::Regular, b"hello", None),
            ("etc/b", tar::EntryType::Link, b"", Some("etc/a")),
            ("etc/s", tar::EntryType::Symlink, b"", Some("a")),
            ("etc/.wh.gone", tar::EntryType::Regular, b"", None),
            ("opq/.wh..wh..opq", tar::EntryType::Regular, b"", None),
        ]);
        let w = unpack_tar(&t[..], d.path()).unwrap();
        assert_eq!((w.whiteouts, w.opaques), (1, 1));
        let a = std::fs::metadata(d.path().join("etc/a")).unwrap();
        assert_eq!((a.uid(), a.gid(), a.mode() & 0o7777), (1234, 4321, 0o640));
        assert_eq!(a.nlink(), 2);
        assert_eq!(std::fs::read(d.path().join("etc/b")).unwrap(), b"hello");
        assert_eq!(std::fs::read_link(d.path().join("etc/s")).unwrap(), Path::new("a"));
        let g = std::fs::symlink_metadata(d.path().join("etc/gone")).unwrap();
        assert!(g.file_type().is_char_device() && g.rdev() == 0);
        assert!(!d.path().join("etc/.wh.gone").exists());
        let x = rustix::fs::getxattr(d.path().join("opq"), "trusted.overlay.opaque", &mut [0u8; 4]);
        assert_eq!(x.ok(), Some(1));
        let etc = std::fs::metadata(d.path().join("etc")).unwrap();
        assert_eq!((etc.mtime(), etc.mode() & 0o7777), (1_000_000, 0o750));
    }

    #[test]
    fn nothing_is_written_through_a_symlink_or_dotdot() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap();
        let t = tar_of(&[
            ("esc", tar::EntryType::Symlink, b"", Some(target)),
            ("esc/.wh.victim", tar::EntryType::Regular, b"", None),
        ]);
        std::fs::write(outside.path().join("victim"), b"keep").unwrap();
        assert!(unpack_tar(&t[..], d.path()).is_err());
        assert_eq!(std::fs::read(outside.path().join("victim")).unwrap(), b"keep");
        let t = tar_of(&[
            ("esc", tar::EntryType::Symlink, b"", Some(target)),
            ("esc/new", tar::EntryType::Regular, b"x", None),
        ]);
        assert!(unpack_tar(&t[..], d.path()).is_err());
        assert!(!outside.path().join("new").exists());
        let mut raw = tar_of(&[("x", tar::EntryType::Regular, b"x", None)]);
        raw[..2].copy_from_slice(b"..");
        raw[2] = b'/';
        // checksum no longer matches the renamed entry: recompute
        let mut h = tar::Header::new_old();
        h.as_mut_bytes().copy_from_slice(&raw[..512]);
        h.set_cksum();
        raw[..512].copy_from_slice(h.as_bytes());
        assert!(unpack_tar(&raw[..], d.path()).is_err());
    }
}
