//! One layer pulled into a directory: the blob streamed in with parallel
//! ranged requests ([`crate::stream`]), hashed and decompressed on one
//! thread, the tar hashed there too (the diff ID) and unpacked on a second
//! thread, so download, inflate and file writes overlap. The caller commits
//! the directory only if [`pull_into`] returns Ok: blob digest, size and
//! diff ID all matched.

use crate::error::Error;
use crate::stream::{self, Source};
use overlay_unpack::{unpack_tar, Written};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

/// How the blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    None,
}

impl Compression {
    /// The layer media types this crate can unpack.
    pub fn of_media_type(mt: &str) -> Option<Compression> {
        match mt {
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            _ => None,
        }
    }
}

/// The layer to pull: digest, size and media type from the manifest, diff
/// ID from the image config.
#[derive(Debug, Clone)]
pub struct LayerSpec {
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
    pub compression: Compression,
}

/// How the blob is fetched.
#[derive(Debug, Clone, Copy)]
pub struct Fetch {
    pub request_bytes: u64,
    pub concurrency: usize,
}

/// What a pull did.
#[derive(Debug, Clone, Default)]
pub struct Pulled {
    pub compressed: u64,
    pub uncompressed: u64,
    pub written: Written,
}

/// Uncompressed bytes handed from the inflating to the unpacking thread at a time.
const BLOCK: usize = 1 << 20;

fn sha(h: Sha256) -> String {
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Pulls `layer` from `src` into `dir` (an existing empty directory).
pub(crate) async fn pull_into<S: Source>(
    src: Arc<S>,
    layer: &LayerSpec,
    fetch: Fetch,
    dir: &Path,
) -> Result<Pulled, Error> {
    let (incoming, fetcher) =
        stream::start(src, layer.size, fetch.request_bytes, fetch.concurrency);
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(8);
    let abort = Arc::new(AtomicBool::new(false));
    let root = dir.to_path_buf();
    let stop = abort.clone();
    let unpacker = tokio::task::spawn_blocking(move || {
        let r = unpack_tar(Blocks::new(rx), &root);
        if r.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        r
    });
    let compression = layer.compression;
    let stop = abort.clone();
    let inflater = tokio::task::spawn_blocking(move || inflate(incoming, compression, tx, &stop));
    let inflated = inflater.await.map_err(|source| Error::Task {
        what: "inflate",
        source,
    });
    let unpacked = unpacker.await.map_err(|source| Error::Task {
        what: "unpack",
        source,
    });
    fetcher.abort();
    let layer_name = || layer.digest.clone();
    // A fetch error explains an unpack error that followed it: report it first.
    let (incoming, inflate_result) = inflated?;
    if let Some(source) = incoming.error {
        return Err(Error::Fetch {
            layer: layer_name(),
            source,
        });
    }
    // The unpacker's own error explains the inflater's stop.
    let written = unpacked?.map_err(|source| Error::Unpack {
        layer: layer_name(),
        source,
    })?;
    let (blob_sha, compressed, tar_sha, uncompressed) =
        inflate_result.map_err(|source| Error::Unpack {
            layer: layer_name(),
            source,
        })?;
    if compressed != layer.size {
        return Err(Error::Size {
            layer: layer_name(),
            got: compressed,
            want: layer.size,
        });
    }
    if blob_sha != layer.digest {
        return Err(Error::Digest {
            layer: layer_name(),
            got: blob_sha,
        });
    }
    if tar_sha != layer.diff_id {
        return Err(Error::DiffId {
            layer: layer_name(),
            got: tar_sha,
            want: layer.diff_id.clone(),
        });
    }
    Ok(Pulled {
        compressed,
        uncompressed,
        written,
    })
}

type Inflated = io::Result<(String, u64, String, u64)>;

/// Reads the whole blob (hashing it), inflates it (hashing the tar) and
/// sends the tar on; keeps reading after the unpacker is done so both
/// digests cover every byte, unless the unpacker failed.
fn inflate(
    incoming: stream::Incoming,
    compression: Compression,
    tx: mpsc::SyncSender<Vec<u8>>,
    abort: &AtomicBool,
) -> (stream::Incoming, Inflated) {
    let mut hashed = Hashing {
        inner: incoming,
        h: Sha256::new(),
        n: 0,
    };
    let r = (|| -> io::Result<(Sha256, u64)> {
        let mut tar_h = Sha256::new();
        let mut tar_n = 0u64;
        {
            let mut r: Box<dyn Read + '_> = match compression {
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
                    io::BufReader::with_capacity(256 << 10, &mut hashed),
                )),
                Compression::None => Box::new(&mut hashed),
            };
            let mut open = true;
            loop {
                if abort.load(Ordering::Relaxed) {
                    return Err(io::Error::other("unpacking stopped"));
                }
                let mut buf = vec![0u8; BLOCK];
                let mut filled = 0;
                while filled < BLOCK {
                    match r.read(&mut buf[filled..])? {
                        0 => break,
                        n => filled += n,
                    }
                }
                if filled == 0 {
                    break;
                }
                buf.truncate(filled);
                tar_h.update(&buf);
                tar_n += filled as u64;
                // A closed channel: the tar ended (or failed); go on hashing.
                if open && tx.send(buf).is_err() {
                    open = false;
                }
            }
        }
        drop(tx);
        Ok((tar_h, tar_n))
    })();
    let Hashing { inner, h, n } = hashed;
    (inner, r.map(|(th, tn)| (sha(h), n, sha(th), tn)))
}

struct Hashing<R> {
    inner: R,
    h: Sha256,
    n: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.h.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
}

/// `Read` over the blocks the inflating thread sends.
struct Blocks {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Blocks {
    fn new(rx: mpsc::Receiver<Vec<u8>>) -> Blocks {
        Blocks {
            rx,
            cur: Vec::new(),
            pos: 0,
        }
    }
}

impl Read for Blocks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(b) => (self.cur, self.pos) = (b, 0),
                // The sender is gone: end of the stream (its own error, if
                // any, is reported by the inflating side).
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// A blob in memory; fails every read at or past `fail_from`.
    struct Mem {
        blob: Vec<u8>,
        fail_from: u64,
    }

    #[async_trait::async_trait]
    impl Source for Mem {
        async fn read_at(&self, off: u64, len: u64) -> Result<Bytes, registry::Error> {
            if off + len > self.fail_from {
                return Err(registry::Error::Unreachable {
                    url: "mem".into(),
                    detail: "gone".into(),
                });
            }
            Ok(Bytes::copy_from_slice(
                &self.blob[off as usize..(off + len) as usize],
            ))
        }
    }

    fn layer() -> (Vec<u8>, Vec<u8>) {
        let mut b = tar::Builder::new(Vec::new());
        // Incompressible data, so the blob spans many requests.
        let mut x = 1u64;
        let data: Vec<u8> = (0..3 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, "data.bin", &data[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        (tar, gz.finish().unwrap())
    }

    fn digest(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    async fn run(
        blob: Vec<u8>,
        spec: LayerSpec,
        fail_from: u64,
    ) -> (Result<Pulled, Error>, tempfile::TempDir) {
        let d = tempfile::tempdir().unwrap();
        let src = Arc::new(Mem { blob, fail_from });
        let fetch = Fetch {
            request_bytes: 256 << 10,
            concurrency: 3,
        };
        (pull_into(src, &spec, fetch, d.path()).await, d)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pulls_verifies_and_refuses_lies() {
        let (tar, gz) = layer();
        let spec = LayerSpec {
            digest: digest(&gz),
            size: gz.len() as u64,
            diff_id: digest(&tar),
            compression: Compression::Gzip,
        };
        let (r, d) = run(gz.clone(), spec.clone(), u64::MAX).await;
        let p = r.unwrap();
        assert_eq!(
            (p.compressed, p.uncompressed),
            (gz.len() as u64, tar.len() as u64)
        );
        assert_eq!(
            std::fs::read(d.path().join("data.bin")).unwrap().len(),
            3 << 20
        );

        let lie = LayerSpec {
            diff_id: digest(b"other"),
            ..spec.clone()
        };
        let (r, _) = run(gz.clone(), lie, u64::MAX).await;
        assert!(matches!(r, Err(Error::DiffId { .. })), "{r:?}");

        let mut bad = gz.clone();
        let n = bad.len();
        bad[n - 5] ^= 1; // the gzip trailer's size: the stream still inflates
        let (r, _) = run(bad, spec.clone(), u64::MAX).await;
        assert!(r.is_err(), "a changed blob is refused: {r:?}");

        let (r, _) = run(gz.clone(), spec.clone(), gz.len() as u64 / 2).await;
        assert!(
            matches!(&r, Err(Error::Fetch { source, .. }) if source.kind() == registry::ErrorKind::Unreachable),
            "{r:?}"
        );

        let plain = LayerSpec {
            digest: digest(&tar),
            size: tar.len() as u64,
            diff_id: digest(&tar),
            compression: Compression::None,
        };
        let (r, d) = run(tar.clone(), plain, u64::MAX).await;
        r.unwrap();
        assert!(d.path().join("data.bin").exists());
    }
}
