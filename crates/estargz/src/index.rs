//! A validated TOC as a tree. THE CONTRACT other crates (lazyfs) code against:
//! keep these public names and shapes; add fields freely.

use std::collections::BTreeMap;

/// Index into `Index::nodes`. The root directory is always `ROOT`.
pub type NodeId = u32;
pub const ROOT: NodeId = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    Reg,
    Symlink,
    Char,
    Block,
    Fifo,
}

/// One chunk of a regular file, as stored in the blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Offset in the blob of the gzip member holding this chunk.
    pub blob_offset: u64,
    /// End (exclusive) in the blob of that member: the next member's offset or the TOC offset.
    pub blob_end: u64,
    /// Bytes to skip in the decompressed member before this chunk's data (`innerOffset`).
    pub inner_offset: u64,
    /// Offset of this chunk within the file (`chunkOffset`).
    pub file_offset: u64,
    /// Uncompressed length of this chunk.
    pub size: u64,
    /// `sha256:<hex>` of the chunk's uncompressed bytes (`chunkDigest`).
    pub digest: String,
}

/// One inode. Hardlinks share a node (nlink counts them).
#[derive(Debug, Clone)]
pub struct Node {
    pub kind: NodeKind,
    /// Permission bits including setuid/setgid/sticky (no file-type bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Seconds since the epoch (TOC modtime).
    pub mtime: i64,
    pub nlink: u32,
    /// Symlink target.
    pub link_target: Option<String>,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Directory entries by base name, whiteout names (`.wh.*`) kept as they are.
    pub children: BTreeMap<String, NodeId>,
    /// Parent directory (root's parent is root).
    pub parent: NodeId,
    /// Chunks sorted by `file_offset`, covering `0..size` exactly.
    pub chunks: Vec<Chunk>,
    /// Whole-file `digest` from the TOC, when given.
    pub digest: Option<String>,
}
