//! The chunk cache shared by every layer of a daemon, keyed by chunk digest so
//! a chunk that appears in several layers or images is stored and fetched once.
//!
//! Two tiers, both with a byte cap and least-recently-used eviction:
//! - memory: decompressed chunks as `Bytes`, so the many small kernel reads
//!   that make up one chunk do not each go to disk;
//! - disk: `<dir>/chunks/<sha256 hex>` (the daemon's `dir` is
//!   `<state root>/cache`), written to a temporary name and
//!   renamed, so a crash leaves either nothing or a whole file.
//!
//! Every read from disk is hashed again before it is served: a file damaged
//! or replaced behind our back is deleted and counted, never returned.
//! Hashing costs ~0.5 ms per MiB and only happens on a memory miss.

use crate::lru::Lru;
use bytes::Bytes;
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::SystemTime;
use tracing::warn;

/// Sizes and place of the cache.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Cache directory; chunks go to `<dir>/chunks`. `None`: memory only.
    pub dir: Option<PathBuf>,
    /// Cap of the disk tier in bytes.
    pub disk_cap_bytes: u64,
    /// Cap of the memory tier in bytes.
    pub memory_cap_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            dir: None,
            disk_cap_bytes: 10 << 30,
            memory_cap_bytes: 128 << 20,
        }
    }
}

/// Counters of the cache (monotonic except the two `*_bytes` gauges).
#[derive(Debug, Default)]
pub(crate) struct CacheStats {
    pub(crate) memory_hits: AtomicU64,
    pub(crate) disk_hits: AtomicU64,
    pub(crate) misses: AtomicU64,
    pub(crate) disk_evictions: AtomicU64,
    /// Files on disk whose content did not match their name (deleted).
    pub(crate) disk_corrupt: AtomicU64,
    pub(crate) disk_write_errors: AtomicU64,
    pub(crate) memory_bytes: AtomicU64,
    pub(crate) disk_bytes: AtomicU64,
    pub(crate) memory_evictions: AtomicU64,
    /// Bytes served from each tier, and bytes of fetched chunks settled.
    pub(crate) memory_hit_bytes: AtomicU64,
    pub(crate) disk_hit_bytes: AtomicU64,
    pub(crate) inserted_bytes: AtomicU64,
}

pub struct ChunkCache {
    dir: Option<PathBuf>,
    mem: Mutex<Lru<Bytes>>,
    mem_cap: u64,
    disk: Mutex<Lru<()>>,
    disk_cap: u64,
    seq: AtomicU64,
    pub(crate) stats: CacheStats,
}

/// The hex part of a `sha256:<64 lowercase hex>` digest, or `None`. The TOC
/// is untrusted and these names become file names: nothing else passes.
pub(crate) fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

impl ChunkCache {
    /// Open (and index) the disk tier, removing leftovers of interrupted writes.
    pub fn new(cfg: &CacheConfig) -> std::io::Result<ChunkCache> {
        let dir = match &cfg.dir {
            Some(dir) => {
                let d = dir.join("chunks");
                std::fs::create_dir_all(&d)?;
                Some(d)
            }
            None => None,
        };
        let cache = ChunkCache {
            dir,
            mem: Mutex::new(Lru::new()),
            mem_cap: cfg.memory_cap_bytes,
            disk: Mutex::new(Lru::new()),
            disk_cap: cfg.disk_cap_bytes,
            seq: AtomicU64::new(0),
            stats: CacheStats::default(),
        };
        if let Some(d) = &cache.dir {
            cache.scan(d)?;
        }
        Ok(cache)
    }

    /// A cache without a disk tier.
    pub fn memory_only(memory_cap_bytes: u64) -> ChunkCache {
        ChunkCache::new(&CacheConfig {
            dir: None,
            disk_cap_bytes: 0,
            memory_cap_bytes,
        })
        .expect("no I/O without a directory")
    }

    fn scan(&self, dir: &Path) -> std::io::Result<()> {
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            if digest_hex(&format!("sha256:{name}")).is_none() {
                continue; // not ours: leave it alone
            }
            let md = e.metadata()?;
            let used = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((used, name.into_owned(), md.len()));
        }
        // Oldest first, so the LRU order continues where the last run left it.
        found.sort();
        let mut disk = self.disk.lock();
        for (_, hex, len) in found {
            disk.insert(&hex, (), len);
        }
        drop(disk);
        self.evict_disk();
        Ok(())
    }

    /// From memory only (no I/O).
    pub(crate) fn get_memory(&self, digest: &str) -> Option<Bytes> {
        let hex = digest_hex(digest)?;
        let b = self.mem.lock().get(hex)?;
        self.stats.memory_hits.fetch_add(1, Relaxed);
        self.stats
            .memory_hit_bytes
            .fetch_add(b.len() as u64, Relaxed);
        Some(b)
    }

    /// Whether either tier holds it (no I/O, no counting).
    pub(crate) fn contains(&self, digest: &str) -> bool {
        let Some(hex) = digest_hex(digest) else {
            return false;
        };
        self.mem.lock().contains(hex) || self.disk.lock().contains(hex)
    }

    /// Memory, then disk (blocking file I/O and a hash on the disk path).
    pub(crate) fn get(&self, digest: &str) -> Option<Bytes> {
        if let Some(b) = self.get_memory(digest) {
            return Some(b);
        }
        self.get_disk(digest)
    }

    /// From disk, verified, and promoted to memory. Blocking.
    pub(crate) fn get_disk(&self, digest: &str) -> Option<Bytes> {
        let hit = self.read_disk(digest);
        match &hit {
            Some(b) => {
                self.stats.disk_hits.fetch_add(1, Relaxed);
                self.stats.disk_hit_bytes.fetch_add(b.len() as u64, Relaxed);
                self.insert_memory(digest, b.clone());
            }
            None => {
                self.stats.misses.fetch_add(1, Relaxed);
            }
        }
        hit
    }

    fn read_disk(&self, digest: &str) -> Option<Bytes> {
        let dir = self.dir.as_ref()?;
        let hex = digest_hex(digest)?;
        // The index knows the size: refuse files it does not know.
        self.disk.lock().get(hex)?;
        let path = dir.join(hex);
        let mut f = std::fs::File::open(&path).ok()?;
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return None;
        }
        if sha256_hex(&buf) != hex {
            warn!(path = %path.display(), "cached chunk does not match its digest; deleting it");
            self.stats.disk_corrupt.fetch_add(1, Relaxed);
            self.forget_disk(hex, &path);
            return None;
        }
        // Keep the use time on disk for the order after a restart.
        let _ = f.set_modified(SystemTime::now());
        Some(Bytes::from(buf))
    }

    fn forget_disk(&self, hex: &str, path: &Path) {
        if let Some((_, len)) = self.disk.lock().remove(hex) {
            self.stats.disk_bytes.fetch_sub(len, Relaxed);
        }
        let _ = std::fs::remove_file(path);
    }

    /// Keep a verified chunk in memory (evicting the oldest beyond the cap).
    pub(crate) fn insert_memory(&self, digest: &str, data: Bytes) {
        let Some(hex) = digest_hex(digest) else {
            return;
        };
        let len = data.len() as u64;
        // One chunk must not flush the whole tier.
        if len > self.mem_cap / 4 {
            return;
        }
        let mut mem = self.mem.lock();
        mem.insert(hex, data, len);
        while mem.weight() > self.mem_cap {
            if mem.pop_oldest().is_none() {
                break;
            }
            self.stats.memory_evictions.fetch_add(1, Relaxed);
        }
        self.stats.memory_bytes.store(mem.weight(), Relaxed);
    }

    /// Store a verified chunk on disk. Blocking. The caller has checked
    /// `data` against `digest`; the name is the digest.
    pub(crate) fn insert_disk(&self, digest: &str, data: &[u8]) {
        let (Some(dir), Some(hex)) = (self.dir.as_ref(), digest_hex(digest)) else {
            return;
        };
        if self.disk.lock().contains(hex) || data.len() as u64 > self.disk_cap {
            return;
        }
        let tmp = dir.join(format!(
            ".tmp-{hex}-{}-{}",
            std::process::id(),
            self.seq.fetch_add(1, Relaxed)
        ));
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            std::fs::rename(&tmp, dir.join(hex))
        })();
        if let Err(e) = res {
            let _ = std::fs::remove_file(&tmp);
            self.stats.disk_write_errors.fetch_add(1, Relaxed);
            warn!(error = %e, "cannot write chunk to the disk cache");
            return;
        }
        self.disk.lock().insert(hex, (), data.len() as u64);
        self.evict_disk();
    }

    /// Both tiers; blocking.
    #[cfg(test)]
    pub(crate) fn insert(&self, digest: &str, data: Bytes) {
        self.insert_disk(digest, &data);
        self.insert_memory(digest, data);
    }

    fn evict_disk(&self) {
        let mut victims = Vec::new();
        let weight = {
            let mut disk = self.disk.lock();
            while disk.weight() > self.disk_cap {
                match disk.pop_oldest() {
                    Some((hex, _, _)) => victims.push(hex),
                    None => break,
                }
            }
            disk.weight()
        };
        self.stats.disk_bytes.store(weight, Relaxed);
        if let Some(dir) = &self.dir {
            for hex in &victims {
                let _ = std::fs::remove_file(dir.join(hex));
            }
        }
        self.stats
            .disk_evictions
            .fetch_add(victims.len() as u64, Relaxed);
    }

    /// Fraction of the disk cap in use (0 without a disk tier).
    pub(crate) fn disk_fill(&self) -> f64 {
        if self.dir.is_none() || self.disk_cap == 0 {
            return 0.0;
        }
        self.disk.lock().weight() as f64 / self.disk_cap as f64
    }

    /// The cache's counters and tier sizes now.
    pub fn figures(&self) -> crate::metrics::CacheFigures {
        let s = &self.stats;
        crate::metrics::CacheFigures {
            memory_hits: s.memory_hits.load(Relaxed),
            disk_hits: s.disk_hits.load(Relaxed),
            misses: s.misses.load(Relaxed),
            memory_evictions: s.memory_evictions.load(Relaxed),
            disk_evictions: s.disk_evictions.load(Relaxed),
            disk_corrupt: s.disk_corrupt.load(Relaxed),
            disk_write_errors: s.disk_write_errors.load(Relaxed),
            inserted_bytes: s.inserted_bytes.load(Relaxed),
            memory_hit_bytes: s.memory_hit_bytes.load(Relaxed),
            disk_hit_bytes: s.disk_hit_bytes.load(Relaxed),
            memory_bytes: s.memory_bytes.load(Relaxed),
            disk_bytes: s.disk_bytes.load(Relaxed),
        }
    }

    pub(crate) fn has_disk(&self) -> bool {
        self.dir.is_some()
    }

    /// Number of chunks on disk.
    #[cfg(test)]
    pub(crate) fn disk_entries(&self) -> usize {
        self.disk.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(data: &[u8]) -> String {
        format!("sha256:{}", sha256_hex(data))
    }

    fn disk_cache(root: &Path, disk_cap: u64, mem_cap: u64) -> ChunkCache {
        ChunkCache::new(&CacheConfig {
            dir: Some(root.to_path_buf()),
            disk_cap_bytes: disk_cap,
            memory_cap_bytes: mem_cap,
        })
        .unwrap()
    }

    #[test]
    fn digest_names_are_checked() {
        assert!(digest_hex(&digest_of(b"x")).is_some());
        assert!(digest_hex("sha256:../../etc/passwd").is_none());
        assert!(digest_hex(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(digest_hex(&format!("sha512:{}", "a".repeat(64))).is_none());
    }

    #[test]
    fn disk_tier_round_trip_survives_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let data = Bytes::from(vec![7u8; 1000]);
        let d = digest_of(&data);
        {
            let c = disk_cache(tmp.path(), 1 << 20, 0);
            assert!(c.get(&d).is_none());
            c.insert(&d, data.clone());
            assert_eq!(c.get(&d).unwrap(), data);
        }
        // Leftover temp file from a crash is cleaned up.
        let chunks = tmp.path().join("chunks");
        std::fs::write(chunks.join(".tmp-partial"), b"junk").unwrap();
        let c = disk_cache(tmp.path(), 1 << 20, 0);
        assert!(!chunks.join(".tmp-partial").exists());
        assert_eq!(c.get(&d).unwrap(), data);
        assert_eq!(c.stats.disk_hits.load(Relaxed), 1);
    }

    #[test]
    fn disk_cap_evicts_least_recently_used() {
        let tmp = tempfile::tempdir().unwrap();
        let c = disk_cache(tmp.path(), 3000, 0);
        let chunks: Vec<Bytes> = (0..4u8).map(|i| Bytes::from(vec![i; 1000])).collect();
        let ds: Vec<String> = chunks.iter().map(|b| digest_of(b)).collect();
        for i in 0..3 {
            c.insert(&ds[i], chunks[i].clone());
        }
        // Use chunk 0 so chunk 1 becomes the oldest.
        assert!(c.get(&ds[0]).is_some());
        c.insert(&ds[3], chunks[3].clone());
        assert!(c.contains(&ds[0]));
        assert!(!c.contains(&ds[1]), "oldest entry evicted");
        assert!(c.contains(&ds[2]) && c.contains(&ds[3]));
        assert_eq!(c.disk_entries(), 3);
        assert!(!tmp
            .path()
            .join("chunks")
            .join(digest_hex(&ds[1]).unwrap())
            .exists());
        assert_eq!(c.stats.disk_evictions.load(Relaxed), 1);
        assert!(c.stats.disk_bytes.load(Relaxed) <= 3000);
        // A smaller cap after a restart trims at once.
        drop(c);
        let c = disk_cache(tmp.path(), 1500, 0);
        assert_eq!(c.disk_entries(), 1);
        let n = std::fs::read_dir(tmp.path().join("chunks"))
            .unwrap()
            .count();
        assert_eq!(n, 1);
    }

    #[test]
    fn memory_cap_is_kept() {
        let c = ChunkCache::memory_only(4000);
        for i in 0..10u8 {
            let b = Bytes::from(vec![i; 900]);
            c.insert(&digest_of(&b), b);
        }
        assert!(c.stats.memory_bytes.load(Relaxed) <= 4000);
        // 10 x 900 bytes under a 4000-byte cap: 4 stay, 6 were evicted.
        assert_eq!(c.figures().memory_evictions, 6);
        let newest = Bytes::from(vec![9u8; 900]);
        assert!(c.get_memory(&digest_of(&newest)).is_some());
        let oldest = Bytes::from(vec![0u8; 900]);
        assert!(c.get_memory(&digest_of(&oldest)).is_none());
    }

    #[test]
    fn identical_chunks_are_stored_once() {
        let tmp = tempfile::tempdir().unwrap();
        let c = disk_cache(tmp.path(), 1 << 20, 1 << 20);
        let b = Bytes::from(vec![1u8; 500]);
        let d = digest_of(&b);
        c.insert(&d, b.clone());
        c.insert(&d, b.clone());
        assert_eq!(c.disk_entries(), 1);
        assert_eq!(c.stats.disk_bytes.load(Relaxed), 500);
    }

    #[test]
    fn corrupted_file_on_disk_is_never_served() {
        let tmp = tempfile::tempdir().unwrap();
        let b = Bytes::from(vec![3u8; 2000]);
        let d = digest_of(&b);
        {
            let c = disk_cache(tmp.path(), 1 << 20, 0);
            c.insert(&d, b.clone());
        }
        let path = tmp.path().join("chunks").join(digest_hex(&d).unwrap());
        let mut bad = std::fs::read(&path).unwrap();
        bad[100] ^= 1;
        std::fs::write(&path, bad).unwrap();
        let c = disk_cache(tmp.path(), 1 << 20, 0);
        assert!(c.get(&d).is_none());
        assert!(!path.exists(), "bad file removed");
        assert_eq!(c.stats.disk_corrupt.load(Relaxed), 1);
    }
}
