//! Disk usage of a directory tree, like `du`: allocated blocks, each inode
//! counted once, never crossing into another filesystem (a mounted layer).

use crate::error::{Error, Result};
use crate::types::Usage;
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub fn disk_usage(root: &Path) -> Result<Usage> {
    let meta = std::fs::symlink_metadata(root).map_err(|e| Error::io("stat", root, e))?;
    let dev = meta.dev();
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![root.to_path_buf()];
    account(&meta, &mut seen, &mut usage);
    while let Some(dir) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            // Files may vanish while a container runs; usage is an estimate.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read dir", &dir, e)),
        };
        for ent in rd {
            let ent = ent.map_err(|e| Error::io("read dir", &dir, e))?;
            let Ok(m) = ent.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            account(&m, &mut seen, &mut usage);
            if m.is_dir() {
                stack.push(ent.path());
            }
        }
    }
    Ok(usage)
}

fn account(m: &std::fs::Metadata, seen: &mut HashSet<(u64, u64)>, u: &mut Usage) {
    if seen.insert((m.dev(), m.ino())) {
        u.inodes += 1;
        u.size += (m.blocks() * 512) as i64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_hard_links_once() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), vec![1u8; 100_000]).unwrap();
        std::fs::hard_link(d.path().join("sub/f"), d.path().join("g")).unwrap();
        let u = disk_usage(d.path()).unwrap();
        assert_eq!(u.inodes, 3);
        assert!(u.size >= 100_000 && u.size < 200_000, "{u:?}");
    }
}
