//! One layer pulled into a directory: the blob streamed in with parallel
//! ranged requests ([`crate::stream`]), hashed and decompressed on one
//! thread, the tar hashed there too (the diff ID) and unpacked on a second
//! thread, so download, inflate and file writes overlap. The caller commits
//! the directory only if [`pull_into`] returns Ok: blob digest, size and
//! diff ID all matched.

use crate::error::Error;
use crate::stream::{self, Source};
use crate::unpack::{unpack_tar, Written};
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
#[derive(Debug, Clone, Copy, Default)]
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
    let (incoming, fetcher) = stream::start(src, layer.size, fetch.request_bytes, fetch.concurrency);
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
    let (blob_sha, compressed, tar_sha, uncompressed) =
        inflate_result.map_err(|source| Error::Unpack {
            layer: layer_name(),
            source,
        })?;
    let written = unpacked?.map_err(|source| Error::Unpack {
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
    let r = (|| {
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
