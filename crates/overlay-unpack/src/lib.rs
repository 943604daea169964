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

/// What was written.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Written {
    pub entries: u64,
    pub whiteouts: u64,
    pub opaques: u64,
    /// Directories the tar does not list but its entries need, parents
    /// first, and whether anything was made directly in them: containerd
    /// applies a layer on an overlay of the layers below, where such a
    /// directory is copied up with its attributes ([`adopt_lower_attrs`]).
    pub implicit: Vec<(String, bool)>,
}

/// Tracks directories made on the way to an entry.
#[derive(Default)]
struct Made {
    order: Vec<String>,
    touched: std::collections::HashSet<String>,
    /// Directories the tar lists: their attributes are the tar's.
    explicit: std::collections::HashSet<String>,
}

impl Made {
    /// Something was created in `dir` (layer-relative, "" the root).
    fn touch(&mut self, rel: &str) {
        let dir = rel.rsplit_once('/').map_or("", |(d, _)| d);
        self.touched.insert(dir.to_string());
    }
}

/// `a/./b/` -> `a/b`; `None` for a path with `..` or not UTF-8.
pub fn clean(p: &Path) -> Option<String> {
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
fn safe_parent(root: &Path, rel: &str, made: &mut Made) -> io::Result<PathBuf> {
    let mut p = root.to_path_buf();
    let parts: Vec<&str> = rel.split('/').collect();
    for (i, c) in parts[..parts.len().saturating_sub(1)].iter().enumerate() {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(refused(format!("{rel}: a parent is not a directory"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::create_dir(&p)?;
                let d = parts[..=i].join("/");
                made.touch(&d);
                made.order.push(d);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(root.join(rel))
}

/// A device or FIFO entry, made with its mode, owner and mtime.
fn special(e: &tar::Entry<'_, impl Read>, p: &Path) -> io::Result<()> {
    let h = e.header();
    let et = h.entry_type();
    let ft = if et.is_character_special() {
        rustix::fs::FileType::CharacterDevice
    } else if et.is_block_special() {
        rustix::fs::FileType::BlockDevice
    } else {
        rustix::fs::FileType::Fifo
    };
    // A FIFO's device fields are often left blank.
    let dev = if ft == rustix::fs::FileType::Fifo {
        0
    } else {
        rustix::fs::makedev(
            h.device_major()?.unwrap_or(0),
            h.device_minor()?.unwrap_or(0),
        )
    };
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p)?,
        Ok(_) => std::fs::remove_file(p)?,
        Err(_) => {}
    }
    let mode = h.mode()? & 0o7777;
    rustix::fs::mknodat(
        rustix::fs::CWD,
        p,
        ft,
        rustix::fs::Mode::from_raw_mode(mode),
        dev,
    )?;
    rustix::fs::chownat(
        rustix::fs::CWD,
        p,
        Some(rustix::fs::Uid::from_raw(h.uid()? as u32)),
        Some(rustix::fs::Gid::from_raw(h.gid()? as u32)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    // mknod's mode passed through the umask.
    rustix::fs::chmod(p, rustix::fs::Mode::from_raw_mode(mode))?;
    set_mtime(p, h.mtime()? as i64, 0)
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) -> io::Result<()> {
    let t = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &rustix::fs::Timestamps {
            last_access: t,
            last_modification: t,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )?;
    Ok(())
}

/// Gives each implicit directory (see [`Written::implicit`]) the mode,
/// owner and xattrs of the same directory in the nearest of `lowers` (the
/// parent layers' contents, nearest first), and its mtime if nothing was
/// made in it, as overlayfs' copy-up does when containerd applies the
/// layer. One not found below keeps what `mkdir` gave it (0755, root),
/// as containerd's applier makes it.
pub fn adopt_lower_attrs(
    root: &Path,
    implicit: &[(String, bool)],
    lowers: &[PathBuf],
) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    for (rel, touched) in implicit {
        let Some((lower, m)) = lowers
            .iter()
            .find_map(|l| Some((l.join(rel), std::fs::symlink_metadata(l.join(rel)).ok()?)))
        else {
            continue;
        };
        if !m.is_dir() {
            continue;
        }
        let p = root.join(rel);
        let mut names = vec![0u8; 64 << 10];
        if let Ok(n) = rustix::fs::llistxattr(&lower, &mut names) {
            for name in names[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
                // overlayfs' own attributes are never copied up.
                if name.starts_with(b"trusted.overlay.") {
                    continue;
                }
                let mut v = vec![0u8; 64 << 10];
                let name = std::ffi::OsStr::from_bytes(name);
                if let Ok(len) = rustix::fs::lgetxattr(&lower, name, &mut v) {
                    rustix::fs::lsetxattr(&p, name, &v[..len], rustix::fs::XattrFlags::empty())?;
                }
            }
        }
        rustix::fs::chownat(
            rustix::fs::CWD,
            &p,
            Some(rustix::fs::Uid::from_raw(m.uid())),
            Some(rustix::fs::Gid::from_raw(m.gid())),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )?;
        rustix::fs::chmod(&p, rustix::fs::Mode::from_raw_mode(m.mode() & 0o7777))?;
        if !touched {
            set_mtime(&p, m.mtime(), m.mtime_nsec())?;
        }
    }
    Ok(())
}

/// Unpacks the tar stream `r` into `root` (an existing directory).
pub fn unpack_tar(r: impl Read, root: &Path) -> io::Result<Written> {
    let mut ar = archive(r);
    let mut u = Unpacker::new(root);
    for e in ar.entries()? {
        u.entry(&mut e?)?;
    }
    u.finish()
}

/// A tar reader set up to keep what a layer says: permissions, owners,
/// mtimes, xattrs; existing entries are replaced.
pub fn archive<R: Read>(r: R) -> tar::Archive<R> {
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(true);
    ar
}

/// Unpacks a layer entry by entry, for callers that also look at each
/// entry (entries of an [`archive`]); [`Unpacker::finish`] sets the
/// directories' mtimes and says what was written.
pub struct Unpacker {
    root: PathBuf,
    w: Written,
    made: Made,
    dirs: Vec<(PathBuf, u64)>,
}

impl Unpacker {
    pub fn new(root: &Path) -> Unpacker {
        Unpacker {
            root: root.to_path_buf(),
            w: Written::default(),
            made: Made::default(),
            dirs: Vec::new(),
        }
    }

    /// Writes one entry: a whiteout or opaque marker as overlayfs wants it,
    /// anything else as the tar says; refused (an error) if its path has
    /// `..` or would be written through a symlink or outside the root.
    pub fn entry(&mut self, e: &mut tar::Entry<'_, impl Read>) -> io::Result<()> {
        let (root, made, w) = (self.root.as_path(), &mut self.made, &mut self.w);
        let raw = e.path()?.into_owned();
        let path = clean(&raw).ok_or_else(|| refused(format!("entry {}: `..`", raw.display())))?;
        w.entries += 1;
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        if name == OPAQUE {
            let d = if dir.is_empty() {
                root.to_path_buf()
            } else {
                let d = safe_parent(root, dir, made)?;
                match std::fs::symlink_metadata(&d) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => return Err(refused(format!("{path}: not in a directory"))),
                    Err(_) => {
                        std::fs::create_dir(&d)?;
                        made.touch(dir);
                        made.order.push(dir.to_string());
                    }
                }
                d
            };
            rustix::fs::setxattr(
                &d,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )?;
            w.opaques += 1;
            return Ok(());
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
            whiteout(&safe_parent(root, &rel, made)?)?;
            made.touch(&rel);
            w.whiteouts += 1;
            return Ok(());
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
                self.dirs
                    .push((root.to_path_buf(), e.header().mtime().unwrap_or(0)));
            }
            return Ok(());
        }
        let target = safe_parent(root, &path, made)?;
        made.touch(&path);
        let et = e.header().entry_type();
        if et.is_character_special() || et.is_block_special() || et.is_fifo() {
            return special(e, &target);
        }
        if !e.unpack_in(root)? {
            return Err(refused(format!("entry {path}: outside the layer")));
        }
        if is_dir {
            self.dirs
                .push((root.join(&path), e.header().mtime().unwrap_or(0)));
            made.explicit.insert(path);
        }
        Ok(())
    }

    pub fn finish(self) -> io::Result<Written> {
        // Children changed their directories' mtimes; put the layer's back,
        // deepest first.
        for (d, mtime) in self.dirs.iter().rev() {
            set_mtime(d, *mtime as i64, 0)?;
        }
        let made = self.made;
        let mut w = self.w;
        w.implicit = made
            .order
            .iter()
            .filter(|d| !made.explicit.contains(*d))
            .map(|d| (d.clone(), made.touched.contains(d)))
            .collect();
        Ok(w)
    }
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
        assert_eq!(
            std::fs::read_link(d.path().join("etc/s")).unwrap(),
            Path::new("a")
        );
        let g = std::fs::symlink_metadata(d.path().join("etc/gone")).unwrap();
        assert!(g.file_type().is_char_device() && g.rdev() == 0);
        assert!(!d.path().join("etc/.wh.gone").exists());
        let x = rustix::fs::getxattr(
            d.path().join("opq"),
            "trusted.overlay.opaque",
            &mut [0u8; 4],
        );
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
        assert_eq!(
            std::fs::read(outside.path().join("victim")).unwrap(),
            b"keep"
        );
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
