//! Verified TOCs kept on disk (`ROOT/toc/<layer digest hex>`), so a layer
//! opens again after a restart without its registry.
//!
//! A file is written only after its TOC matched the TOC digest the image
//! promised (atomically: temporary file, fsync, rename). It holds a sha256
//! of its own contents, the TOC digest, the TOC's offset and the blob size,
//! then the TOC member as it was in the blob (a gzip member, or
//! zstd:chunked's skippable frame: its first bytes keep the layer's
//! compression, `estargz::reader::member_compression`). On load the file's hash is
//! checked, and the opener parses and hashes the TOC again against the
//! digest: a corrupt or truncated file is deleted and the TOC read from the
//! registry again, never trusted.

use lazyfs::TocBytes;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use tracing::{debug, warn};

const MAGIC: &[u8; 10] = b"RSNAPTOC1\n";
/// Magic, sha256, offset, size, digest length.
const HEADER: usize = 10 + 32 + 8 + 8 + 2;

/// Counters of what the store did (exported as metrics).
#[derive(Debug, Default)]
pub struct TocStoreStats {
    /// Layers opened from a kept TOC, without reading the blob's TOC.
    pub opened_from_disk: AtomicU64,
    /// Kept TOCs found corrupt (bad file hash, bad TOC digest) and deleted.
    pub corrupt: AtomicU64,
    /// TOCs written.
    pub saved: AtomicU64,
    /// Layers whose TOC was read from the registry (none kept, or the kept
    /// one was corrupt or for another TOC digest).
    pub fetched_from_registry: AtomicU64,
}

#[derive(Debug)]
pub struct TocStore {
    dir: PathBuf,
    pub stats: TocStoreStats,
}

/// A kept TOC whose file hash matched: still to be checked against the
/// TOC digest by whoever parses it.
#[derive(Debug, Clone)]
pub struct KeptToc {
    pub toc_digest: String,
    pub toc: TocBytes,
}

impl TocStore {
    pub fn new(root: &Path) -> TocStore {
        TocStore {
            dir: root.join("toc"),
            stats: TocStoreStats::default(),
        }
    }

    fn path(&self, layer_digest: &str) -> Option<PathBuf> {
        // Only a well-formed digest names a file: no path tricks from labels.
        let hex = layer_digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| self.dir.join(hex))
    }

    /// Keep the TOC of `layer_digest`, which matched `toc_digest`.
    pub fn save(
        &self,
        layer_digest: &str,
        toc_digest: &str,
        toc: &TocBytes,
    ) -> std::io::Result<()> {
        let Some(path) = self.path(layer_digest) else {
            return Ok(());
        };
        std::fs::create_dir_all(&self.dir)?;
        let mut body = Vec::with_capacity(HEADER + toc_digest.len() + toc.member.len());
        body.extend_from_slice(&toc.toc_offset.to_le_bytes());
        body.extend_from_slice(&toc.blob_size.to_le_bytes());
        body.extend_from_slice(&(toc_digest.len() as u16).to_le_bytes());
        body.extend_from_slice(toc_digest.as_bytes());
        body.extend_from_slice(&toc.member);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            path.file_name().and_then(|n| n.to_str()).unwrap_or("x")
        ));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&Sha256::digest(&body))?;
        f.write_all(&body)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.stats.saved.fetch_add(1, Relaxed);
        debug!(layer = layer_digest, "TOC kept on disk");
        Ok(())
    }

    /// The kept TOC of `layer_digest`, if there is one whose file is whole.
    /// A damaged file is deleted (and counted) and `None` returned.
    pub fn load(&self, layer_digest: &str) -> Option<KeptToc> {
        let path = self.path(layer_digest)?;
        let raw = match std::fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(layer = layer_digest, error = %e, "cannot read kept TOC");
                return None;
            }
        };
        match parse(&raw) {
            Some(k) => Some(k),
            None => {
                self.discard(layer_digest, "file damaged (hash or length)");
                None
            }
        }
    }

    /// Delete a kept TOC that turned out bad (and count it).
    pub fn discard(&self, layer_digest: &str, why: &str) {
        if let Some(path) = self.path(layer_digest) {
            warn!(
                layer = layer_digest,
                why, "kept TOC is corrupt; deleting it, reading the TOC from the registry"
            );
            self.stats.corrupt.fetch_add(1, Relaxed);
            let _ = std::fs::remove_file(path);
        }
    }

    /// The TOC digest recorded with a kept TOC (verified when it was kept),
    /// for labels that do not carry one.
    pub fn toc_digest(&self, layer_digest: &str) -> Option<String> {
        self.load(layer_digest).map(|k| k.toc_digest)
    }
}

fn parse(raw: &[u8]) -> Option<KeptToc> {
    if raw.len() < HEADER || &raw[..10] != MAGIC {
        return None;
    }
    let (sum, body) = raw[10..].split_at(32);
    if Sha256::digest(body).as_slice() != sum {
        return None;
    }
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().expect("8 bytes"));
    let (toc_offset, blob_size) = (u64_at(0), u64_at(8));
    let dlen = u16::from_le_bytes([body[16], body[17]]) as usize;
    let digest = body.get(18..18 + dlen)?;
    let member = body.get(18 + dlen..)?;
    Some(KeptToc {
        toc_digest: String::from_utf8(digest.to_vec()).ok()?,
        toc: TocBytes {
            member: bytes::Bytes::copy_from_slice(member),
            toc_offset,
            blob_size,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn toc() -> TocBytes {
        TocBytes {
            member: bytes::Bytes::from_static(b"gzip member bytes"),
            toc_offset: 1234,
            blob_size: 5678,
        }
    }

    #[test]
    fn roundtrip_and_damage_is_detected_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let s = TocStore::new(dir.path());
        assert!(s.load(D).is_none());
        s.save(D, "sha256:toc", &toc()).unwrap();
        let k = s.load(D).unwrap();
        assert_eq!(k.toc_digest, "sha256:toc");
        assert_eq!(k.toc.member, toc().member);
        assert_eq!((k.toc.toc_offset, k.toc.blob_size), (1234, 5678));
        let file = dir.path().join("toc").join(&D[7..]);
        // A flipped byte anywhere, then a truncation: both detected.
        let mut raw = std::fs::read(&file).unwrap();
        let n = raw.len();
        raw[n - 3] ^= 1;
        std::fs::write(&file, &raw).unwrap();
        assert!(s.load(D).is_none());
        assert!(!file.exists(), "a damaged file is deleted");
        s.save(D, "sha256:toc", &toc()).unwrap();
        let raw = std::fs::read(&file).unwrap();
        std::fs::write(&file, &raw[..raw.len() - 1]).unwrap();
        assert!(s.load(D).is_none());
        assert_eq!(s.stats.corrupt.load(Relaxed), 2);
        assert_eq!(s.stats.saved.load(Relaxed), 2);
    }

    #[test]
    fn odd_digests_name_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = TocStore::new(dir.path());
        s.save("sha256:../../etc", "t", &toc()).unwrap();
        assert!(s.load("sha256:../../etc").is_none());
        assert!(!dir.path().join("toc").exists());
    }
}
