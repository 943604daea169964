//! Reading a layer blob: its listing (files, whiteouts, opaque dirs) and,
//! for a profiling run, its contents unpacked into a directory that can be
//! an overlayfs lower layer (OCI whiteouts become overlay whiteouts). The
//! blob is checked against its digest and diff ID while it is read; a
//! mismatch fails the run before anything executes from the rootfs.

use crate::error::{Error, Result};
use oci_layout::{media_types as mt, Descriptor, HashingReader};
use std::collections::HashSet;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// What one layer holds, by layer-relative path (no leading slash).
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Entries that are not directories (files, links, devices), tar order.
    pub files: Vec<String>,
    /// The same, for lookups.
    pub file_set: HashSet<String>,
    pub dirs: HashSet<String>,
    /// Paths this layer deletes from the layers below.
    pub whiteouts: HashSet<String>,
    /// Directories whose lower contents this layer hides ("" is the root).
    pub opaques: HashSet<String>,
}

/// `a/./b/` -> `a/b`; `None` for a path with `..` (never unpacked).
pub(crate) fn clean(p: &Path) -> Option<String> {
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

fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", path),
    }
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Entries an eStargz blob adds at its root; not part of the image's files.
fn estargz_internal(path: &str) -> bool {
    matches!(
        path,
        "stargz.index.json" | ".prefetch.landmark" | ".no.prefetch.landmark"
    )
}

/// Read layer `d` (blob at `blob`), unpacking it into `into` if given.
pub(crate) fn read_layer(
    blob: &Path,
    d: &Descriptor,
    diff_id: &str,
    into: Option<&Path>,
    stop: &AtomicBool,
) -> Result<Listing> {
    let digest = d.digest().to_string();
    let gzip = match d.media_type().as_ref() {
        mt::OCI_LAYER_GZIP | mt::DOCKER_LAYER_GZIP => true,
        mt::OCI_LAYER_TAR | mt::DOCKER_LAYER_TAR => false,
        other => {
            return Err(Error::LayerType {
                digest,
                media_type: other.to_string(),
            })
        }
    };
    let io = |what: &str| Error::io(format!("{what} layer {digest}"));
    let file = std::fs::File::open(blob).map_err(io("open"))?;
    let mut compressed = HashingReader::new(BufReader::with_capacity(1 << 20, file));
    let listing;
    let tar_digest;
    {
        let reader: Box<dyn Read + '_> = if gzip {
            Box::new(flate2::read::MultiGzDecoder::new(&mut compressed))
        } else {
            Box::new(&mut compressed)
        };
        let mut tar = HashingReader::new(reader);
        listing = walk(&mut tar, into, stop, &digest)?;
        tar_digest = tar.finish().map_err(io("read"))?.0;
    }
    let (got, _) = compressed.finish().map_err(io("read"))?;
    if got != digest {
        return Err(Error::LayerDigest { digest, got });
    }
    if tar_digest != diff_id {
        return Err(Error::DiffId {
            digest,
            got: tar_digest,
            want: diff_id.to_string(),
        });
    }
    Ok(listing)
}

fn walk(r: impl Read, into: Option<&Path>, stop: &AtomicBool, digest: &str) -> Result<Listing> {
    let io = |what: &str| Error::io(format!("{what} layer {digest}"));
    let mut ar = tar::Archive::new(r);
    ar.set_preserve_permissions(true);
    ar.set_preserve_ownerships(true);
    ar.set_preserve_mtime(true);
    ar.set_unpack_xattrs(true);
    ar.set_overwrite(true);
    let mut l = Listing::default();
    for e in ar.entries().map_err(io("read"))? {
        if stop.load(Ordering::Relaxed) {
            return Err(Error::Interrupted);
        }
        let mut e = e.map_err(io("read"))?;
        let raw = e.path().map_err(io("read"))?.into_owned();
        let Some(path) = clean(&raw) else {
            tracing::warn!(layer = %digest, path = %raw.display(), "entry with `..` skipped");
            continue;
        };
        if path.is_empty() || estargz_internal(&path) {
            continue;
        }
        let (dir, name) = split(&path);
        if name == OPAQUE {
            l.opaques.insert(dir.to_string());
            if let Some(root) = into {
                opaque(&root.join(dir)).map_err(io("unpack"))?;
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            let hidden = join(dir, hidden);
            if let Some(root) = into {
                whiteout(&root.join(&hidden)).map_err(io("unpack"))?;
            }
            l.whiteouts.insert(hidden);
            continue;
        }
        if e.header().entry_type().is_dir() {
            l.dirs.insert(path);
        } else if l.file_set.insert(path.clone()) {
            l.files.push(path);
        }
        if let Some(root) = into {
            e.unpack_in(root).map_err(io("unpack"))?;
        }
    }
    Ok(l)
}

/// An overlay opaque directory (created if the tar names it first).
fn opaque(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    rustix::fs::setxattr(
        dir,
        "trusted.overlay.opaque",
        b"y",
        rustix::fs::XattrFlags::empty(),
    )?;
    Ok(())
}

/// An overlay whiteout: a 0/0 character device.
fn whiteout(path: &Path) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
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

/// The layer (index into `layers`, bottom first) whose `path` is the one
/// the merged rootfs shows, if any: the topmost layer holding it that no
/// layer above hides (whiteout of it or a parent, opaque parent, a parent
/// replaced by a non-directory).
pub(crate) fn topmost(layers: &[Listing], path: &str) -> Option<usize> {
    for (i, l) in layers.iter().enumerate().rev() {
        if l.file_set.contains(path) || l.dirs.contains(path) {
            return Some(i);
        }
        if l.whiteouts.contains(path) {
            return None;
        }
        let mut cur = path;
        while let Some((parent, _)) = cur.rsplit_once('/') {
            if l.whiteouts.contains(parent)
                || l.opaques.contains(parent)
                || l.file_set.contains(parent)
            {
                return None;
            }
            cur = parent;
        }
        if l.opaques.contains("") {
            return None;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(files: &[&str], whiteouts: &[&str], opaques: &[&str]) -> Listing {
        Listing {
            files: files.iter().map(|s| s.to_string()).collect(),
            file_set: files.iter().map(|s| s.to_string()).collect(),
            dirs: HashSet::new(),
            whiteouts: whiteouts.iter().map(|s| s.to_string()).collect(),
            opaques: opaques.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn finds_the_visible_layer() {
        let ls = [
            listing(&["a/x", "a/y", "b/z", "c/w", "d"], &[], &[]),
            listing(&["a/x"], &["a/y"], &["c"]),
            listing(&["c/v"], &["b"], &[]),
        ];
        assert_eq!(topmost(&ls, "a/x"), Some(1));
        assert_eq!(topmost(&ls, "a/y"), None);
        assert_eq!(topmost(&ls, "b/z"), None);
        assert_eq!(topmost(&ls, "c/w"), None);
        assert_eq!(topmost(&ls, "c/v"), Some(2));
        assert_eq!(topmost(&ls, "d"), Some(0));
        assert_eq!(topmost(&ls, "nope"), None);
        let ls = [listing(&["e"], &[], &[]), listing(&[], &[], &[""])];
        assert_eq!(topmost(&ls, "e"), None);
    }

    #[test]
    fn cleans_paths() {
        assert_eq!(clean(Path::new("./a//b/")).as_deref(), Some("a/b"));
        assert_eq!(clean(Path::new("/a")).as_deref(), Some("a"));
        assert_eq!(clean(Path::new("a/../b")), None);
    }
}
