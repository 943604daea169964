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
pub(crate) use overlay_unpack::clean;

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
    let mut ar = overlay_unpack::archive(r);
    // The same unpack as the daemon's fallback pull: never through a
    // symlink the layer made, whiteouts and opaque dirs as overlayfs wants.
    let mut unpacker = into.map(overlay_unpack::Unpacker::new);
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
        if let Some(u) = unpacker.as_mut() {
            u.entry(&mut e).map_err(io("unpack"))?;
        }
        if name == OPAQUE {
            l.opaques.insert(dir.to_string());
        } else if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            l.whiteouts.insert(join(dir, hidden));
        } else if e.header().entry_type().is_dir() {
            l.dirs.insert(path);
        } else if l.file_set.insert(path.clone()) {
            l.files.push(path);
        }
    }
    if let Some(u) = unpacker {
        u.finish().map_err(io("unpack"))?;
    }
    Ok(l)
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

    /// A tar of a symlink `a -> TARGET` and then `a/.wh.victim` and
    /// `a/.wh..wh..opq`: entries that, followed through the symlink, would
    /// delete or mark files outside the unpack root.
    fn escaping_whiteouts(target: &Path) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "a", target).unwrap();
        for name in ["a/.wh.victim", "a/.wh..wh..opq"] {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_mode(0o644);
            b.append_data(&mut h, name, &[][..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_never_reach_through_a_symlink() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let root = tempfile::tempdir().unwrap();
        let tar = escaping_whiteouts(outside.path());
        let r = walk(
            &tar[..],
            Some(root.path()),
            &AtomicBool::new(false),
            "sha256:x",
        );
        assert!(r.is_err(), "the escaping whiteout is refused");
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
        // Listing only (no unpack) still lists it.
        let l = walk(&tar[..], None, &AtomicBool::new(false), "sha256:x").unwrap();
        assert!(l.whiteouts.contains("a/victim"));
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
