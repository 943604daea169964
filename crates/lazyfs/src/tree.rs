//! The layer's files as a lower layer of overlayfs wants to see them.
//!
//! Inode numbers are node ids + 1 (FUSE's root is 1, the index's root is 0).
//! OCI whiteouts become what overlayfs itself writes: `.wh.NAME` is shown as
//! a character device 0/0 named NAME, and `.wh..wh..opq` disappears and marks
//! its directory with `trusted.overlay.opaque=y`. A hidden directory
//! `/.stargz-snapshotter` holds `<layer digest>.json` with fetch progress;
//! readdir of `/` does not list it. The eStargz landmark files at the root
//! (`.prefetch.landmark`, `.no.prefetch.landmark`) are format markers, not
//! image content: hidden from lookup and readdir, as the reference does.

use estargz::index::{Chunk, Node, NodeId, NodeKind, ROOT};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

pub(crate) const ROOT_INO: u64 = ROOT as u64 + 1;
pub(crate) const STATE_DIR_NAME: &str = ".stargz-snapshotter";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
pub(crate) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Attributes of one inode, independent of any FUSE library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attr {
    pub ino: u64,
    pub kind: NodeKind,
    /// Permission bits with setuid/setgid/sticky.
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: i64,
    pub rdev_major: u32,
    pub rdev_minor: u32,
}

/// What an inode number stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Inode {
    Node(NodeId),
    StateDir,
    StateFile,
}

pub(crate) struct Tree {
    nodes: Vec<Node>,
    /// Directory -> (shown name, inode), sorted by name.
    dirs: HashMap<NodeId, Vec<(String, u64)>>,
    opaque: HashSet<NodeId>,
    whiteouts: HashSet<NodeId>,
    subdirs: HashMap<NodeId, u32>,
    state_name: String,
}

impl Tree {
    pub(crate) fn new(nodes: Vec<Node>, layer_digest: &str) -> Tree {
        let mut dirs = HashMap::new();
        let mut opaque = HashSet::new();
        let mut whiteouts = HashSet::new();
        let mut subdirs = HashMap::new();
        for (id, n) in nodes.iter().enumerate() {
            let id = id as NodeId;
            if n.kind != NodeKind::Dir {
                continue;
            }
            let mut entries: Vec<(String, u64)> = Vec::with_capacity(n.children.len());
            let mut ndirs = 0u32;
            for (name, &child) in &n.children {
                if nodes.get(child as usize).is_none() || child == ROOT {
                    continue; // a broken index must not take us down
                }
                if id == ROOT && estargz::index::is_landmark(name) {
                    continue;
                }
                if name == OPAQUE_MARKER {
                    opaque.insert(id);
                    continue;
                }
                if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
                    // The real entry wins if a layer carries both.
                    if hidden.is_empty() || n.children.contains_key(hidden) {
                        continue;
                    }
                    whiteouts.insert(child);
                    entries.push((hidden.to_string(), child as u64 + 1));
                    continue;
                }
                if nodes[child as usize].kind == NodeKind::Dir {
                    ndirs += 1;
                }
                entries.push((name.clone(), child as u64 + 1));
            }
            entries.sort();
            dirs.insert(id, entries);
            subdirs.insert(id, ndirs);
        }
        Tree {
            nodes,
            dirs,
            opaque,
            whiteouts,
            subdirs,
            state_name: format!("{layer_digest}.json"),
        }
    }

    pub(crate) fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    fn state_dir_ino(&self) -> u64 {
        self.nodes.len() as u64 + 1
    }

    fn state_file_ino(&self) -> u64 {
        self.nodes.len() as u64 + 2
    }

    pub(crate) fn inode(&self, ino: u64) -> Option<Inode> {
        if ino >= 1 && ino <= self.nodes.len() as u64 {
            Some(Inode::Node((ino - 1) as NodeId))
        } else if ino == self.state_dir_ino() {
            Some(Inode::StateDir)
        } else if ino == self.state_file_ino() {
            Some(Inode::StateFile)
        } else {
            None
        }
    }

    pub(crate) fn node(&self, ino: u64) -> Option<&Node> {
        match self.inode(ino)? {
            Inode::Node(id) => self.nodes.get(id as usize),
            _ => None,
        }
    }

    /// The regular file behind `ino`, if it is one that reads go to.
    pub(crate) fn regular(&self, ino: u64) -> Option<&Node> {
        let Inode::Node(id) = self.inode(ino)? else {
            return None;
        };
        if self.whiteouts.contains(&id) {
            return None;
        }
        self.nodes
            .get(id as usize)
            .filter(|n| n.kind == NodeKind::Reg)
    }

    pub(crate) fn lookup(&self, parent: u64, name: &str) -> Option<u64> {
        match self.inode(parent)? {
            Inode::Node(id) => {
                if id == ROOT && name == STATE_DIR_NAME {
                    return Some(self.state_dir_ino());
                }
                let entries = self.dirs.get(&id)?;
                let i = entries
                    .binary_search_by(|(n, _)| n.as_str().cmp(name))
                    .ok()?;
                Some(entries[i].1)
            }
            Inode::StateDir => (name == self.state_name).then(|| self.state_file_ino()),
            Inode::StateFile => None,
        }
    }

    /// Entries of a directory without `.` and `..` (the state dir of `/` hidden).
    pub(crate) fn entries(&self, dir: u64) -> Option<Cow<'_, [(String, u64)]>> {
        match self.inode(dir)? {
            Inode::Node(id) => self.dirs.get(&id).map(|e| Cow::Borrowed(e.as_slice())),
            Inode::StateDir => Some(Cow::Owned(vec![(
                self.state_name.clone(),
                self.state_file_ino(),
            )])),
            Inode::StateFile => None,
        }
    }

    /// Parent directory inode (for `..`).
    pub(crate) fn parent(&self, dir: u64) -> u64 {
        match self.inode(dir) {
            Some(Inode::Node(id)) => self.nodes[id as usize].parent as u64 + 1,
            _ => ROOT_INO,
        }
    }

    /// `state_size` is the current size of the JSON state file.
    pub(crate) fn attr(&self, ino: u64, state_size: u64) -> Option<Attr> {
        let virt = |kind, perm, nlink, size| Attr {
            ino,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            size,
            mtime: 0,
            rdev_major: 0,
            rdev_minor: 0,
        };
        let id = match self.inode(ino)? {
            Inode::StateDir => return Some(virt(NodeKind::Dir, 0o500, 2, 0)),
            Inode::StateFile => return Some(virt(NodeKind::Reg, 0o400, 1, state_size)),
            Inode::Node(id) => id,
        };
        let n = &self.nodes[id as usize];
        let mut a = Attr {
            ino,
            kind: n.kind,
            perm: n.mode & 0o7777,
            nlink: n.nlink.max(1),
            uid: n.uid,
            gid: n.gid,
            size: n.size,
            mtime: n.mtime,
            rdev_major: n.dev_major,
            rdev_minor: n.dev_minor,
        };
        match n.kind {
            NodeKind::Dir => {
                a.nlink = 2 + self.subdirs.get(&id).copied().unwrap_or(0);
                a.size = 4096;
            }
            NodeKind::Symlink => {
                a.size = n.link_target.as_ref().map_or(0, |t| t.len() as u64);
            }
            NodeKind::Reg | NodeKind::Char | NodeKind::Block | NodeKind::Fifo => {}
        }
        if self.whiteouts.contains(&id) {
            a.kind = NodeKind::Char;
            a.size = 0;
            a.rdev_major = 0;
            a.rdev_minor = 0;
        } else if !matches!(n.kind, NodeKind::Char | NodeKind::Block) {
            a.rdev_major = 0;
            a.rdev_minor = 0;
        }
        Some(a)
    }

    pub(crate) fn readlink(&self, ino: u64) -> Option<&str> {
        let n = self.node(ino)?;
        (n.kind == NodeKind::Symlink).then_some(n.link_target.as_deref()?)
    }

    pub(crate) fn xattr(&self, ino: u64, name: &str) -> Option<Cow<'_, [u8]>> {
        let Inode::Node(id) = self.inode(ino)? else {
            return None;
        };
        if name == OPAQUE_XATTR && self.opaque.contains(&id) {
            return Some(Cow::Borrowed(b"y"));
        }
        self.nodes[id as usize]
            .xattrs
            .get(name)
            .map(|v| Cow::Borrowed(v.as_slice()))
    }

    /// Attribute names, each followed by a NUL (the listxattr format).
    pub(crate) fn xattr_list(&self, ino: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let Some(Inode::Node(id)) = self.inode(ino) else {
            return out;
        };
        let n = &self.nodes[id as usize];
        let opaque = self.opaque.contains(&id);
        for k in n.xattrs.keys() {
            if opaque && k == OPAQUE_XATTR {
                continue;
            }
            out.extend_from_slice(k.as_bytes());
            out.push(0);
        }
        if opaque {
            out.extend_from_slice(OPAQUE_XATTR.as_bytes());
            out.push(0);
        }
        out
    }

    /// A path for log messages.
    pub(crate) fn path_of(&self, id: NodeId) -> String {
        let mut parts = Vec::new();
        let mut cur = id;
        let mut guard = 0;
        while cur != ROOT && guard < 4096 {
            let Some(n) = self.nodes.get(cur as usize) else {
                break;
            };
            let parent = &self.nodes[n.parent as usize];
            match parent.children.iter().find(|(_, &c)| c == cur) {
                Some((name, _)) => parts.push(name.as_str()),
                None => parts.push("?"),
            }
            cur = n.parent;
            guard += 1;
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }
}

/// The chunks of a file overlapping `off..off+len`.
pub(crate) fn chunks_for(node: &Node, off: u64, len: u64) -> &[Chunk] {
    let end = off.saturating_add(len).min(node.size);
    if off >= end {
        return &[];
    }
    let first = node
        .chunks
        .partition_point(|c| c.file_offset + c.size <= off);
    let last = node.chunks.partition_point(|c| c.file_offset < end);
    &node.chunks[first..last.max(first)]
}
