//! Whole files of a layer written out from verified cached chunks, so the
//! FUSE front can hand the kernel a backing file (passthrough) and reads of
//! a fully cached file never reach the daemon.
//!
//! A file is kept under `<cache dir>/files/<sha256 hex>`, named by the
//! whole-file digest of its TOC entry (files without one are never
//! materialized): identical files of different layers share one copy. It is
//! written only from chunks `LazyLayer::read_cached` hands out (each
//! verified), hashed on the way and renamed into place only if the whole
//! matches the TOC digest. A copy found on disk (an earlier run) is hashed
//! once before this process uses it. Nothing here waits on the network: a
//! file with a chunk missing from the cache is simply not materialized yet.

use crate::layer::LazyLayer;
use parking_lot::Mutex;
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use tracing::{debug, warn};

/// Bytes taken from the cache per step while writing a file.
const STEP: u64 = 4 << 20;

pub(crate) struct FileStore {
    dir: PathBuf,
    /// Digests whose file under `dir` this process has verified.
    ready: Mutex<HashSet<String>>,
    /// Digests being written or checked now.
    busy: Mutex<HashSet<String>>,
    /// Inode -> the layer's fetched-bytes count when materializing it last
    /// failed (a chunk left the cache meanwhile, a read error): no new
    /// attempt until more arrived.
    missed: Mutex<HashMap<u64, u64>>,
    /// Files materialized (written or verified) by this store.
    pub(crate) made: AtomicU64,
}

/// The hex of a `sha256:<64 hex>` digest; `None` for anything else.
fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

impl FileStore {
    /// A store under `cache_dir/files` (created when first written to).
    pub(crate) fn new(cache_dir: &Path) -> FileStore {
        FileStore {
            dir: cache_dir.join("files"),
            ready: Mutex::new(HashSet::new()),
            busy: Mutex::new(HashSet::new()),
            missed: Mutex::new(HashMap::new()),
            made: AtomicU64::new(0),
        }
    }

    fn path(&self, hex: &str) -> PathBuf {
        self.dir.join(hex)
    }

    /// The verified whole-file copy of `ino`, if there is one.
    pub(crate) fn ready_path(&self, layer: &LazyLayer, ino: u64) -> Option<PathBuf> {
        let digest = layer.tree().regular(ino)?.digest.as_deref()?;
        let hex = sha256_hex(digest)?;
        self.ready.lock().contains(hex).then(|| self.path(hex))
    }

    /// Start materializing `ino` on the blocking pool unless it is ready,
    /// under way, empty, without a digest, or known to lack chunks since the
    /// last attempt. Never waits.
    pub(crate) fn request(self: &Arc<Self>, layer: &Arc<LazyLayer>, ino: u64) {
        let Some(node) = layer.tree().regular(ino) else {
            return;
        };
        let Some(hex) = node.digest.as_deref().and_then(sha256_hex) else {
            return;
        };
        if node.size == 0 || self.ready.lock().contains(hex) {
            return;
        }
        let fetched = layer.fetched_bytes();
        if self.missed.lock().get(&ino) == Some(&fetched) || !layer.fully_cached(ino) {
            return;
        }
        let hex = hex.to_string();
        if !self.busy.lock().insert(hex.clone()) {
            return;
        }
        let (store, layer) = (self.clone(), layer.clone());
        layer.runtime().clone().spawn_blocking(move || {
            let done = store.materialize(&layer, ino, &hex, fetched);
            if done {
                store.ready.lock().insert(hex.clone());
                store.made.fetch_add(1, Relaxed);
            }
            store.busy.lock().remove(&hex);
        });
    }

    /// Blocking: make `files/<hex>` hold the verified contents of `ino`.
    fn materialize(&self, layer: &LazyLayer, ino: u64, hex: &str, fetched: u64) -> bool {
        let path = self.path(hex);
        if path.exists() {
            if hash_file(&path).as_deref() == Some(hex) {
                return true;
            }
            warn!(path = %path.display(), "materialized file does not match its digest; rewriting it");
            let _ = std::fs::remove_file(&path);
        }
        match self.write(layer, ino, hex, &path) {
            Ok(true) => {
                debug!(layer = %layer.digest(), ino, "file materialized for passthrough");
                true
            }
            Ok(false) => {
                self.missed.lock().insert(ino, fetched);
                false
            }
            Err(e) => {
                debug!(layer = %layer.digest(), ino, error = %e, "cannot materialize a file");
                self.missed.lock().insert(ino, fetched);
                false
            }
        }
    }

    /// `Ok(false)`: a chunk is not cached, or the whole did not match.
    fn write(&self, layer: &LazyLayer, ino: u64, hex: &str, path: &Path) -> std::io::Result<bool> {
        let size = match layer.tree().regular(ino) {
            Some(n) => n.size,
            None => return Ok(false),
        };
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self
            .dir
            .join(format!(".tmp-{hex}-{}-{ino}", std::process::id()));
        let result = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            let mut h = Sha256::new();
            let mut off = 0;
            while off < size {
                let part = match layer.read_cached(ino, off, STEP.min(size - off)) {
                    Some(Ok(b)) if !b.is_empty() => b,
                    _ => return Ok(false),
                };
                h.update(&part);
                f.write_all(&part)?;
                off += part.len() as u64;
            }
            if hex::encode(h.finalize()) != hex {
                warn!(layer = %layer.digest(), ino, "file contents do not match the TOC digest; no passthrough");
                return Ok(false);
            }
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            Ok(true)
        })();
        if !matches!(result, Ok(true)) {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// sha256 hex of a file's contents; `None` if it cannot be read.
fn hash_file(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sha256_digests_name_files() {
        let hex = "ab".repeat(32);
        assert_eq!(sha256_hex(&format!("sha256:{hex}")), Some(hex.as_str()));
        assert_eq!(sha256_hex("sha256:../../etc/passwd"), None);
        assert_eq!(sha256_hex(&format!("sha512:{hex}")), None);
        assert_eq!(sha256_hex("sha256:abc"), None);
    }
}
