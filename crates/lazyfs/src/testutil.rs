//! Test helpers: a layer built directly as index nodes + gzip members (no
//! TOC needed), and a `RangeSource` that counts, fails, stalls or corrupts.

use crate::source::{check_range, RangeSource, SourceError};
use async_trait::async_trait;
use bytes::Bytes;
use estargz::index::{Chunk, Node, NodeId, NodeKind};
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::Duration;

pub fn node(kind: NodeKind, mode: u32, parent: NodeId) -> Node {
    Node {
        kind,
        mode,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: 1_600_000_000,
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

pub fn sha(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(1));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// Builds nodes and a blob of one gzip member per chunk.
pub struct TestLayer {
    pub nodes: Vec<Node>,
    pub blob: Vec<u8>,
    chunk_size: usize,
}

impl TestLayer {
    pub fn new(chunk_size: usize) -> TestLayer {
        TestLayer {
            nodes: vec![node(NodeKind::Dir, 0o755, 0)],
            blob: Vec::new(),
            chunk_size,
        }
    }

    /// The node at `path`, creating missing parent directories.
    fn add(&mut self, path: &str, n: Node) -> NodeId {
        let mut cur: NodeId = 0;
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        for (i, p) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            if let Some(&c) = self.nodes[cur as usize].children.get(*p) {
                if last {
                    self.nodes[c as usize] = Node { parent: cur, ..n };
                    return c;
                }
                cur = c;
                continue;
            }
            let id = self.nodes.len() as NodeId;
            let new = if last {
                Node {
                    parent: cur,
                    ..n.clone()
                }
            } else {
                node(NodeKind::Dir, 0o755, cur)
            };
            self.nodes.push(new);
            self.nodes[cur as usize].children.insert(p.to_string(), id);
            if last {
                return id;
            }
            cur = id;
        }
        unreachable!()
    }

    pub fn id(&self, path: &str) -> NodeId {
        let mut cur = 0;
        for p in path.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            cur = self.nodes[cur as usize].children[p];
        }
        cur
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> NodeId {
        self.add(path, node(NodeKind::Dir, mode, 0))
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> NodeId {
        let mut n = node(NodeKind::Reg, mode, 0);
        n.size = data.len() as u64;
        n.digest = Some(sha(data));
        for (i, part) in data.chunks(self.chunk_size).enumerate() {
            let member = gzip(part);
            let start = self.blob.len() as u64;
            self.blob.extend_from_slice(&member);
            n.chunks.push(Chunk {
                blob_offset: start,
                blob_end: self.blob.len() as u64,
                inner_offset: 0,
                file_offset: (i * self.chunk_size) as u64,
                size: part.len() as u64,
                digest: sha(part),
                compression: estargz::Compression::Gzip,
                verified: true,
            });
        }
        self.add(path, n)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> NodeId {
        let mut n = node(NodeKind::Symlink, 0o777, 0);
        n.link_target = Some(target.to_string());
        self.add(path, n)
    }

    pub fn special(&mut self, path: &str, kind: NodeKind, major: u32, minor: u32) -> NodeId {
        let mut n = node(kind, 0o644, 0);
        n.dev_major = major;
        n.dev_minor = minor;
        self.add(path, n)
    }

    /// A second name for the node at `target` (shares the node).
    pub fn hardlink(&mut self, path: &str, target: &str) {
        let t = self.id(target);
        self.nodes[t as usize].nlink += 1;
        let (dir, name) = path
            .trim_matches('/')
            .rsplit_once('/')
            .unwrap_or(("", path));
        let d = if dir.is_empty() { 0 } else { self.id(dir) };
        self.nodes[d as usize].children.insert(name.to_string(), t);
    }

    pub fn edit(&mut self, path: &str, f: impl FnOnce(&mut Node)) {
        let id = self.id(path);
        f(&mut self.nodes[id as usize]);
    }
}

/// A blob in memory that records requests and misbehaves on demand.
#[derive(Default)]
pub struct FakeSource {
    pub data: Bytes,
    pub requests: AtomicU64,
    pub ranges: Mutex<Vec<(u64, u64)>>,
    pub fail: AtomicBool,
    pub stall: AtomicBool,
    /// Flip a byte at this blob offset in answers.
    pub corrupt_at: Mutex<Option<u64>>,
    pub delay_ms: AtomicU64,
    /// Answer `read_many` in one request (a registry honouring multi-range).
    pub multi: AtomicBool,
    /// The ranges of each multi-range request.
    pub multi_requests: Mutex<Vec<Vec<(u64, u64)>>>,
    /// Requests running now, and the most that ever ran at once.
    pub running: AtomicU64,
    pub max_running: AtomicU64,
}

impl FakeSource {
    pub fn new(data: Vec<u8>) -> FakeSource {
        FakeSource {
            data: Bytes::from(data),
            ..Default::default()
        }
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(SeqCst)
    }
}

#[async_trait]
impl RangeSource for FakeSource {
    fn size(&self) -> u64 {
        self.data.len() as u64
    }

    fn multi_range(&self) -> bool {
        self.multi.load(SeqCst)
    }

    async fn read(&self, off: u64, len: u64) -> Result<Bytes, SourceError> {
        check_range(self.size(), off, len)?;
        self.requests.fetch_add(1, SeqCst);
        self.ranges.lock().push((off, len));
        let _running = Running::new(self);
        self.misbehave().await?;
        Ok(self.answer(off, len))
    }

    async fn read_many(&self, ranges: &[(u64, u64)]) -> Result<Vec<Bytes>, SourceError> {
        if !self.multi.load(SeqCst) {
            let mut out = Vec::new();
            for &(off, len) in ranges {
                out.push(self.read(off, len).await?);
            }
            return Ok(out);
        }
        for &(off, len) in ranges {
            check_range(self.size(), off, len)?;
        }
        self.requests.fetch_add(1, SeqCst);
        self.ranges.lock().extend_from_slice(ranges);
        self.multi_requests.lock().push(ranges.to_vec());
        let _running = Running::new(self);
        self.misbehave().await?;
        Ok(ranges.iter().map(|&(o, l)| self.answer(o, l)).collect())
    }
}

/// Counts a request while it runs.
struct Running<'a>(&'a FakeSource);

impl<'a> Running<'a> {
    fn new(s: &'a FakeSource) -> Self {
        let now = s.running.fetch_add(1, SeqCst) + 1;
        s.max_running.fetch_max(now, SeqCst);
        Running(s)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, SeqCst);
    }
}

impl FakeSource {
    async fn misbehave(&self) -> Result<(), SourceError> {
        let d = self.delay_ms.load(SeqCst);
        if d > 0 {
            tokio::time::sleep(Duration::from_millis(d)).await;
        }
        if self.stall.load(SeqCst) {
            futures::future::pending::<()>().await;
        }
        if self.fail.load(SeqCst) {
            return Err(SourceError::other(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused (fake)",
            )));
        }
        Ok(())
    }

    fn answer(&self, off: u64, len: u64) -> Bytes {
        let mut v = self.data.slice(off as usize..(off + len) as usize).to_vec();
        if let Some(at) = *self.corrupt_at.lock() {
            if at >= off && at < off + len {
                v[(at - off) as usize] ^= 0x55;
            }
        }
        Bytes::from(v)
    }
}
