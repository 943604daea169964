//! A validated TOC as a tree. THE CONTRACT other crates (lazyfs) code against:
//! keep these public names and shapes; add fields freely.
//!
//! `Index::from_toc` is the only way in, and it refuses anything a file
//! system should not serve: unclean names, duplicates, dangling hardlinks,
//! chunk lists that overlap or leave gaps, chunks past the TOC, sizes over
//! the caps. Missing parent directories are created (mode 0755), as the
//! reference does; hardlinks share their target's node.

use crate::error::TocError;
use crate::toc::{EntryType, Toc, TocEntry, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK};
use crate::Compression;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

/// Index into `Index::nodes`. The root directory is always `ROOT`.
pub type NodeId = u32;
pub const ROOT: NodeId = 0;

/// Most TOC entries we accept (the TOC JSON itself is capped at 64 MiB).
pub const MAX_ENTRIES: usize = 4 << 20;
/// Largest chunk we accept. A chunk is decompressed and verified whole, so
/// its size is an allocation: without a cap a gzip bomb of a few MB could
/// claim a GiB chunk. Writers use 4 MiB (the Go reference's default); a
/// layer with larger chunks is not served lazily.
pub const MAX_CHUNK_SIZE: u64 = 64 << 20;
/// Prefix of an OCI whiteout name.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the OCI opaque-directory marker.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

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
    /// `sha256:<hex>` of the chunk's uncompressed bytes (`chunkDigest`); for
    /// an unverified chunk (`verified == false`) a cache key made from the
    /// layer and the chunk's place, which nothing can check.
    pub digest: String,
    /// `digest` is the TOC's `chunkDigest` and every decode checks it. False
    /// only for chunks without one (legacy stargz) in an index built with
    /// [`IndexOptions::unverified_key`].
    pub verified: bool,
    /// How the member is compressed: the layer's `Index::compression`,
    /// copied here so a chunk decodes on its own (`decompress_chunk`).
    pub compression: Compression,
}

/// How [`Index::from_toc_with`] builds an index.
#[derive(Debug, Clone, Default)]
pub struct IndexOptions {
    /// `None` (the default): a chunk without a valid `chunkDigest` is an
    /// error. `Some(layer digest)`: a chunk with no `chunkDigest` at all
    /// (legacy CRFS stargz) is accepted unverified; its `Chunk::digest` is
    /// a key derived from this value and the chunk's place in the blob, so
    /// the cache never confuses it with another layer's chunk. A digest
    /// that is present but malformed is still an error.
    pub unverified_key: Option<String>,
    /// How the layer's chunks are compressed (its footer's).
    pub compression: Compression,
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

/// The validated tree of one layer.
#[derive(Debug, Clone)]
pub struct Index {
    pub nodes: Vec<Node>,
    /// Blob offset of the TOC member (end of all file data).
    pub toc_offset: u64,
    pub blob_size: u64,
    /// How the layer's chunks are compressed (from its footer).
    pub compression: Compression,
    prefetch_end: Option<u64>,
    no_prefetch: bool,
    unverified_chunks: usize,
}

/// `name` without `./`, `/`, empty or `.` components, joined by `/`;
/// `None` if it has a `..` component or a NUL. The root is `""`.
pub fn clean_path(name: &str) -> Option<String> {
    if name.contains('\0') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Is this directory entry name an OCI whiteout (including the opaque marker)?
pub fn is_whiteout(name: &str) -> bool {
    name.starts_with(WHITEOUT_PREFIX)
}

/// Is this the opaque-directory marker `.wh..wh..opq`?
pub fn is_opaque_whiteout(name: &str) -> bool {
    name == OPAQUE_WHITEOUT
}

/// The name a whiteout hides (`.wh.foo` -> `foo`); `None` for the opaque
/// marker and for names that are not whiteouts.
pub fn whiteout_target(name: &str) -> Option<&str> {
    if is_opaque_whiteout(name) {
        return None;
    }
    name.strip_prefix(WHITEOUT_PREFIX).filter(|t| !t.is_empty())
}

/// Is this root-level name one of the two landmark files?
pub fn is_landmark(name: &str) -> bool {
    name == PREFETCH_LANDMARK || name == NO_PREFETCH_LANDMARK
}

impl Index {
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id as usize)
    }

    /// Resolve a path (relative to the layer root, `/` and `./` tolerated)
    /// without following symlinks.
    pub fn lookup(&self, path: &str) -> Option<NodeId> {
        let clean = clean_path(path)?;
        let mut id = ROOT;
        for c in clean.split('/').filter(|c| !c.is_empty()) {
            id = *self.node(id)?.children.get(c)?;
        }
        Some(id)
    }

    /// The chunk holding byte `file_offset` of file `id`.
    pub fn chunk_for(&self, id: NodeId, file_offset: u64) -> Option<&Chunk> {
        let chunks = &self.node(id)?.chunks;
        let i = chunks.partition_point(|c| c.file_offset + c.size <= file_offset);
        chunks.get(i).filter(|c| c.file_offset <= file_offset)
    }

    /// The chunks of file `id` that hold any byte of `range`.
    pub fn chunks_in(&self, id: NodeId, range: Range<u64>) -> &[Chunk] {
        let Some(node) = self.node(id) else {
            return &[];
        };
        let c = &node.chunks;
        let first = c.partition_point(|c| c.file_offset + c.size <= range.start);
        let last = c.partition_point(|c| c.file_offset < range.end);
        &c[first..last.max(first)]
    }

    /// Every chunk of every file, with its node.
    pub fn all_chunks(&self) -> impl Iterator<Item = (NodeId, &Chunk)> {
        self.nodes
            .iter()
            .enumerate()
            .flat_map(|(id, n)| n.chunks.iter().map(move |c| (id as NodeId, c)))
    }

    /// Blob offset where `.prefetch.landmark` starts: the prioritized files
    /// are the bytes before it.
    pub fn prefetch_end(&self) -> Option<u64> {
        self.prefetch_end
    }

    /// The layer says it has no prioritized files (`.no.prefetch.landmark`).
    pub fn has_no_prefetch_landmark(&self) -> bool {
        self.no_prefetch
    }

    /// Base name of node `id` in its parent (the first name of a hardlinked
    /// file); `""` for the root. Linear in the parent's size: for messages.
    pub fn name_of(&self, id: NodeId) -> &str {
        let Some(n) = self.node(id) else { return "" };
        if id == ROOT {
            return "";
        }
        self.node(n.parent)
            .and_then(|p| p.children.iter().find(|(_, &c)| c == id))
            .map_or("", |(k, _)| k.as_str())
    }

    /// Chunks without a `chunkDigest` (only with `IndexOptions::unverified_key`).
    pub fn unverified_chunks(&self) -> usize {
        self.unverified_chunks
    }

    /// Build and validate the tree of a gzip (eStargz) layer. `toc_offset`
    /// bounds every chunk; `blob_size` bounds the TOC offset. Every chunk
    /// must carry a digest.
    pub fn from_toc(toc: &Toc, toc_offset: u64, blob_size: u64) -> Result<Index, TocError> {
        Self::from_toc_with(toc, toc_offset, blob_size, &IndexOptions::default())
    }

    /// [`Index::from_toc`] for a layer compressed as `compression` says
    /// (the `Footer`'s, or `reader::member_compression` of a kept TOC).
    pub fn from_toc_as(
        toc: &Toc,
        toc_offset: u64,
        blob_size: u64,
        compression: Compression,
    ) -> Result<Index, TocError> {
        let opts = IndexOptions {
            compression,
            ..IndexOptions::default()
        };
        Self::from_toc_with(toc, toc_offset, blob_size, &opts)
    }

    /// [`Index::from_toc`] with options (compression, chunks without digests).
    pub fn from_toc_with(
        toc: &Toc,
        toc_offset: u64,
        blob_size: u64,
        opts: &IndexOptions,
    ) -> Result<Index, TocError> {
        if toc.version != 1 {
            return Err(TocError::Version(toc.version));
        }
        if toc.entries.len() > MAX_ENTRIES {
            return Err(TocError::TooManyEntries {
                count: toc.entries.len(),
                cap: MAX_ENTRIES,
            });
        }
        if toc_offset > blob_size {
            return Err(TocError::FieldRange {
                name: String::new(),
                field: "toc offset",
            });
        }
        let mut b = Builder::new();
        b.entries(toc)?;
        b.hardlinks()?;
        let compression = opts.compression;
        b.chunks(toc_offset, compression, opts.unverified_key.as_deref())?;
        b.nlinks();
        Ok(Index {
            nodes: b.nodes,
            toc_offset,
            blob_size,
            compression,
            prefetch_end: b.prefetch_end,
            no_prefetch: b.no_prefetch,
            unverified_chunks: b.unverified,
        })
    }
}

/// One chunk as the TOC gave it, before layout checks.
struct RawChunk {
    file_offset: u64,
    /// 0: up to the end of the file.
    size: u64,
    blob_offset: u64,
    inner_offset: u64,
    digest: String,
}

struct Builder {
    nodes: Vec<Node>,
    /// Set by an entry (not created as a missing parent).
    explicit: Vec<bool>,
    paths: HashMap<String, NodeId>,
    raw_chunks: HashMap<NodeId, Vec<RawChunk>>,
    /// (clean name, clean target) of hardlinks, in TOC order.
    links: Vec<(String, String)>,
    prefetch_end: Option<u64>,
    no_prefetch: bool,
    /// Chunks accepted without a digest.
    unverified: usize,
}

fn new_node(kind: NodeKind, parent: NodeId) -> Node {
    Node {
        kind,
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: 0,
        nlink: 1,
        link_target: None,
        dev_major: 0,
        dev_minor: 0,
        xattrs: BTreeMap::new(),
        children: BTreeMap::new(),
        parent,
        chunks: Vec::new(),
        digest: None,
    }
}

fn range_u32(e: &TocEntry, v: i64, field: &'static str) -> Result<u32, TocError> {
    u32::try_from(v).map_err(|_| TocError::FieldRange {
        name: e.name.clone(),
        field,
    })
}

fn range_u64(e: &TocEntry, v: i64, field: &'static str) -> Result<u64, TocError> {
    u64::try_from(v).map_err(|_| TocError::FieldRange {
        name: e.name.clone(),
        field,
    })
}

fn valid_sha256(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

fn split_parent(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    }
}

impl Builder {
    fn new() -> Self {
        let mut paths = HashMap::new();
        paths.insert(String::new(), ROOT);
        Builder {
            nodes: vec![new_node(NodeKind::Dir, ROOT)],
            explicit: vec![false],
            paths,
            raw_chunks: HashMap::new(),
            links: Vec::new(),
            prefetch_end: None,
            no_prefetch: false,
            unverified: 0,
        }
    }

    fn entries(&mut self, toc: &Toc) -> Result<(), TocError> {
        // The regular file that `chunk` entries extend.
        let mut last_reg: Option<(NodeId, String)> = None;
        for e in &toc.entries {
            if e.kind == EntryType::Chunk {
                let Some((id, name)) = &last_reg else {
                    return Err(TocError::OrphanChunk(e.name.clone()));
                };
                if !e.name.is_empty() && clean_path(&e.name).as_deref() != Some(name) {
                    return Err(TocError::OrphanChunk(e.name.clone()));
                }
                let c = raw_chunk(e)?;
                self.raw_chunks.entry(*id).or_default().push(c);
                continue;
            }
            last_reg = None;
            let path = clean_path(&e.name).ok_or_else(|| TocError::BadName(e.name.clone()))?;
            if e.kind == EntryType::Hardlink {
                let target = clean_path(&e.link_name)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| TocError::BadHardlink {
                        name: e.name.clone(),
                        target: e.link_name.clone(),
                    })?;
                if path.is_empty() {
                    return Err(TocError::BadName(e.name.clone()));
                }
                self.links.push((path, target));
                continue;
            }
            let id = self.place(e, &path)?;
            if e.kind == EntryType::Reg {
                if self.nodes[id as usize].size > 0 {
                    let c = raw_chunk(e)?;
                    self.raw_chunks.entry(id).or_default().push(c);
                }
                if path == PREFETCH_LANDMARK {
                    self.prefetch_end = Some(range_u64(e, e.offset, "offset")?);
                } else if path == NO_PREFETCH_LANDMARK {
                    self.no_prefetch = true;
                }
                last_reg = Some((id, path));
            }
        }
        Ok(())
    }

    /// Create (or, for an implicit directory, fill in) the node for `e`.
    fn place(&mut self, e: &TocEntry, path: &str) -> Result<NodeId, TocError> {
        let kind = match e.kind {
            EntryType::Dir => NodeKind::Dir,
            EntryType::Reg => NodeKind::Reg,
            EntryType::Symlink => NodeKind::Symlink,
            EntryType::Char => NodeKind::Char,
            EntryType::Block => NodeKind::Block,
            EntryType::Fifo => NodeKind::Fifo,
            EntryType::Hardlink | EntryType::Chunk => unreachable!("handled by the caller"),
        };
        let id = match self.paths.get(path) {
            Some(&id) => {
                let implicit_dir =
                    !self.explicit[id as usize] && self.nodes[id as usize].kind == NodeKind::Dir;
                if !(implicit_dir && kind == NodeKind::Dir) {
                    return Err(if path.is_empty() {
                        TocError::BadName(e.name.clone())
                    } else {
                        TocError::Duplicate(path.to_string())
                    });
                }
                id
            }
            None => {
                let (parent, base) = split_parent(path);
                let pid = self.dir(parent)?;
                self.add_node(kind, pid, base, path)?
            }
        };
        self.explicit[id as usize] = true;
        let n = &mut self.nodes[id as usize];
        n.mode = (e.mode & 0o7777) as u32;
        n.uid = range_u32(e, e.uid, "uid")?;
        n.gid = range_u32(e, e.gid, "gid")?;
        n.mtime = parse_mtime(&e.modtime);
        n.xattrs = e.xattrs.clone();
        match kind {
            NodeKind::Reg => {
                n.size = range_u64(e, e.size, "size")?;
                n.digest = Some(e.digest.clone()).filter(|d| !d.is_empty());
            }
            NodeKind::Symlink => n.link_target = Some(e.link_name.clone()),
            NodeKind::Char | NodeKind::Block => {
                n.dev_major = range_u32(e, e.dev_major, "devMajor")?;
                n.dev_minor = range_u32(e, e.dev_minor, "devMinor")?;
            }
            NodeKind::Dir | NodeKind::Fifo => {}
        }
        Ok(id)
    }

    fn add_node(
        &mut self,
        kind: NodeKind,
        parent: NodeId,
        base: &str,
        path: &str,
    ) -> Result<NodeId, TocError> {
        let id = NodeId::try_from(self.nodes.len()).map_err(|_| TocError::TooManyEntries {
            count: self.nodes.len(),
            cap: MAX_ENTRIES,
        })?;
        self.nodes.push(new_node(kind, parent));
        self.explicit.push(false);
        self.nodes[parent as usize]
            .children
            .insert(base.to_string(), id);
        self.paths.insert(path.to_string(), id);
        Ok(id)
    }

    /// The directory at `path`, created with its missing parents.
    fn dir(&mut self, path: &str) -> Result<NodeId, TocError> {
        if let Some(&id) = self.paths.get(path) {
            if self.nodes[id as usize].kind != NodeKind::Dir {
                return Err(TocError::NotADirectory(path.to_string()));
            }
            return Ok(id);
        }
        let (parent, base) = split_parent(path);
        let pid = self.dir(parent)?;
        self.add_node(NodeKind::Dir, pid, base, path)
    }

    /// Second pass, so a hardlink may name a file listed after it.
    fn hardlinks(&mut self) -> Result<(), TocError> {
        let links = std::mem::take(&mut self.links);
        let by_name: HashMap<&str, &str> = links
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        for (name, target) in &links {
            let bad = || TocError::BadHardlink {
                name: name.clone(),
                target: target.clone(),
            };
            // Follow links to links; a cycle ends after links.len() steps.
            let mut t = target.as_str();
            let mut steps = 0;
            let id = loop {
                if let Some(&id) = self.paths.get(t) {
                    break id;
                }
                t = by_name.get(t).ok_or_else(bad)?;
                steps += 1;
                if steps > links.len() {
                    return Err(bad());
                }
            };
            if self.nodes[id as usize].kind == NodeKind::Dir {
                return Err(bad());
            }
            if self.paths.contains_key(name.as_str()) {
                return Err(TocError::Duplicate(name.clone()));
            }
            let (parent, base) = split_parent(name);
            let pid = self.dir(parent)?;
            self.nodes[pid as usize]
                .children
                .insert(base.to_string(), id);
            self.paths.insert(name.clone(), id);
            let n = &mut self.nodes[id as usize];
            n.nlink = n.nlink.saturating_add(1);
        }
        Ok(())
    }

    fn chunks(
        &mut self,
        toc_offset: u64,
        compression: Compression,
        unverified_key: Option<&str>,
    ) -> Result<(), TocError> {
        let mut offsets: Vec<u64> = self
            .raw_chunks
            .values()
            .flatten()
            .map(|c| c.blob_offset)
            .collect();
        offsets.sort_unstable();
        offsets.dedup();
        let raw = std::mem::take(&mut self.raw_chunks);
        for (id, mut list) in raw {
            let size = self.nodes[id as usize].size;
            let name = || {
                self.paths
                    .iter()
                    .find(|(_, &v)| v == id)
                    .map(|(k, _)| k.clone())
                    .unwrap_or_default()
            };
            list.sort_by_key(|c| c.file_offset);
            let mut chunks = Vec::with_capacity(list.len());
            let mut pos = 0u64;
            for c in list {
                let end = if c.size == 0 {
                    size
                } else {
                    c.file_offset.saturating_add(c.size)
                };
                if c.file_offset != pos || end <= pos || end > size {
                    return Err(TocError::ChunkLayout(name()));
                }
                // The bytes skipped before the chunk are decompressed too, so
                // they count (members packing small files stay far below).
                let decompressed = c.inner_offset.saturating_add(end - pos);
                if decompressed > MAX_CHUNK_SIZE {
                    return Err(TocError::ChunkTooLarge {
                        name: name(),
                        size: decompressed,
                        cap: MAX_CHUNK_SIZE,
                    });
                }
                if c.blob_offset >= toc_offset {
                    return Err(TocError::ChunkOutOfRange {
                        name: name(),
                        offset: c.blob_offset,
                        toc_offset,
                    });
                }
                let (digest, verified) = match unverified_key {
                    _ if valid_sha256(&c.digest) => (c.digest, true),
                    Some(key) if c.digest.is_empty() => {
                        self.unverified += 1;
                        (
                            position_key(key, c.blob_offset, c.inner_offset, end - pos),
                            false,
                        )
                    }
                    _ => return Err(TocError::MissingChunkDigest(name())),
                };
                let next = offsets.partition_point(|&o| o <= c.blob_offset);
                let blob_end = offsets.get(next).copied().unwrap_or(toc_offset);
                chunks.push(Chunk {
                    blob_offset: c.blob_offset,
                    blob_end,
                    inner_offset: c.inner_offset,
                    file_offset: pos,
                    size: end - pos,
                    digest,
                    verified,
                    compression,
                });
                pos = end;
            }
            if pos != size {
                return Err(TocError::ChunkLayout(name()));
            }
            self.nodes[id as usize].chunks = chunks;
        }
        // A non-empty file whose entry had no chunk cannot be served.
        for (id, n) in self.nodes.iter().enumerate() {
            if n.kind == NodeKind::Reg && n.size > 0 && n.chunks.is_empty() {
                let name = self
                    .paths
                    .iter()
                    .find(|(_, &v)| v as usize == id)
                    .map(|(k, _)| k.clone());
                return Err(TocError::ChunkLayout(name.unwrap_or_default()));
            }
        }
        Ok(())
    }

    /// Directories: 2 + subdirectories, like a real file system.
    fn nlinks(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].kind != NodeKind::Dir {
                continue;
            }
            let subdirs = self.nodes[i]
                .children
                .values()
                .filter(|&&c| c as usize != i && self.nodes[c as usize].kind == NodeKind::Dir)
                .count();
            self.nodes[i].nlink = 2u32.saturating_add(subdirs as u32);
        }
    }
}

/// The cache key of an unverified chunk: `sha256:` of the layer key and the
/// chunk's place, so it has the shape of a digest but names no content.
fn position_key(key: &str, blob_offset: u64, inner_offset: u64, size: u64) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"rsnap unverified chunk\0");
    h.update(key.as_bytes());
    h.update(b"\0");
    for v in [blob_offset, inner_offset, size] {
        h.update(v.to_le_bytes());
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

fn raw_chunk(e: &TocEntry) -> Result<RawChunk, TocError> {
    Ok(RawChunk {
        file_offset: range_u64(e, e.chunk_offset, "chunkOffset")?,
        size: range_u64(e, e.chunk_size, "chunkSize")?,
        blob_offset: range_u64(e, e.offset, "offset")?,
        inner_offset: range_u64(e, e.inner_offset, "innerOffset")?,
        digest: e.chunk_digest.clone(),
    })
}

/// RFC3339 to epoch seconds; like the reference, an unparsable time is "unknown" (0).
fn parse_mtime(s: &str) -> i64 {
    if s.is_empty() {
        return 0;
    }
    chrono::DateTime::parse_from_rfc3339(s).map_or(0, |t| t.timestamp())
}

#[cfg(test)]
mod tests;
