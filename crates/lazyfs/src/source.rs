//! Where a layer's compressed bytes come from: a registry blob or a local file.
//!
//! `RangeSource` is the only thing the rest of the crate knows about the
//! network. A [`SourceError`] says what went wrong and carries the cause
//! (the registry's own error, an I/O error) as it is: what a failure means
//! for a layer (try later, fall back) is for the user of the crate to
//! decide, not for this one.

use async_trait::async_trait;
use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A failed read of a blob. `Clone` (causes behind `Arc`) because one
/// fetch's result is shared by every reader waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// The registry answered with an error, or could not be reached.
    #[cfg(feature = "registry")]
    #[error("registry: {0}")]
    Registry(#[source] Arc<registry::Error>),
    /// Reading a local blob file failed.
    #[error("read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// A range outside the blob was asked for: the TOC lies about the blob.
    #[error("range {off}+{len} outside blob of {size} bytes")]
    OutOfRange { off: u64, len: u64, size: u64 },
    /// The source answered with another number of bytes than asked.
    #[error("asked {len} bytes at {off}, got {got}")]
    WrongLength { off: u64, len: u64, got: u64 },
    /// A multi-range answer did not match the ranges asked.
    #[error("multi-range answer does not match the request")]
    RangesMismatch,
    /// The task reading ended without an answer (shutting down).
    #[error("read abandoned")]
    Abandoned,
    /// The failure of another `RangeSource` implementation.
    #[error(transparent)]
    Other(Arc<dyn std::error::Error + Send + Sync>),
}

impl SourceError {
    /// Wraps the error of a `RangeSource` this crate does not know.
    pub fn other(e: impl std::error::Error + Send + Sync + 'static) -> SourceError {
        SourceError::Other(Arc::new(e))
    }
}

/// Random access to one immutable blob.
#[async_trait]
pub trait RangeSource: Send + Sync {
    /// Size of the blob in bytes.
    fn size(&self) -> u64;

    /// Exactly `len` bytes at `off` (a shorter answer is an error).
    async fn read(&self, off: u64, len: u64) -> Result<Bytes, SourceError>;

    /// Whether `read_many` asks for several ranges in one request (else the
    /// fetcher sends scattered spans as requests of their own, in parallel).
    fn multi_range(&self) -> bool {
        false
    }

    /// Several ranges; sources that can ask for them in one request override
    /// this and `multi_range`.
    async fn read_many(&self, ranges: &[(u64, u64)]) -> Result<Vec<Bytes>, SourceError> {
        let mut out = Vec::with_capacity(ranges.len());
        for &(off, len) in ranges {
            out.push(self.read(off, len).await?);
        }
        Ok(out)
    }
}

/// Reject ranges outside the blob before asking anyone.
pub(crate) fn check_range(size: u64, off: u64, len: u64) -> Result<(), SourceError> {
    match off.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(SourceError::OutOfRange { off, len, size }),
    }
}

/// A blob in a local file (tests, `rsnap mount --blob FILE`).
pub struct FileSource {
    file: Arc<std::fs::File>,
    size: u64,
    path: PathBuf,
}

impl FileSource {
    pub fn open(path: &Path) -> std::io::Result<FileSource> {
        let file = std::fs::File::open(path)?;
        let size = file.metadata()?.len();
        Ok(FileSource {
            file: Arc::new(file),
            size,
            path: path.to_path_buf(),
        })
    }
}

#[async_trait]
impl RangeSource for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    async fn read(&self, off: u64, len: u64) -> Result<Bytes, SourceError> {
        check_range(self.size, off, len)?;
        let file = self.file.clone();
        let path = self.path.clone();
        // Positional reads block; keep them off the async worker threads.
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, off)
                .map_err(|e| SourceError::Io {
                    path,
                    source: Arc::new(e),
                })?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|_| SourceError::Abandoned)?
    }
}

#[cfg(feature = "registry")]
mod registry_source {
    use super::*;
    use registry::BlobReader;

    fn map_err(e: registry::Error) -> SourceError {
        SourceError::Registry(Arc::new(e))
    }

    #[async_trait]
    impl RangeSource for BlobReader {
        fn size(&self) -> u64 {
            BlobReader::size(self)
        }

        async fn read(&self, off: u64, len: u64) -> Result<Bytes, SourceError> {
            check_range(RangeSource::size(self), off, len)?;
            let b = self.read_at(off, len).await.map_err(map_err)?;
            if b.len() as u64 != len {
                return Err(SourceError::WrongLength {
                    off,
                    len,
                    got: b.len() as u64,
                });
            }
            Ok(b)
        }

        /// One multi-range request where the registry honours them; the
        /// reader falls back to single ranges by itself where it does not.
        fn multi_range(&self) -> bool {
            true
        }

        async fn read_many(&self, ranges: &[(u64, u64)]) -> Result<Vec<Bytes>, SourceError> {
            for &(off, len) in ranges {
                check_range(RangeSource::size(self), off, len)?;
            }
            let out = self.read_ranges(ranges).await.map_err(map_err)?;
            if out.len() != ranges.len()
                || out.iter().zip(ranges).any(|(b, r)| b.len() as u64 != r.1)
            {
                return Err(SourceError::RangesMismatch);
            }
            Ok(out)
        }
    }
}
