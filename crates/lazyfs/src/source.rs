//! Where a layer's compressed bytes come from: a registry blob or a local file.
//!
//! `RangeSource` is the only thing the rest of the crate knows about the
//! network. Errors say whether trying again later may help (`Unavailable`) or
//! the request itself is wrong (`Invalid`).

use async_trait::async_trait;
use bytes::Bytes;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
pub enum SourceError {
    /// Network down, registry failing, timed out: may work later.
    #[error("source unavailable: {0}")]
    Unavailable(String),
    /// Out of range, short answer, blob gone or not ours: retrying will not help.
    #[error("invalid read: {0}")]
    Invalid(String),
}

impl SourceError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, SourceError::Unavailable(_))
    }
}

/// Random access to one immutable blob.
#[async_trait]
pub trait RangeSource: Send + Sync {
    /// Size of the blob in bytes.
    fn size(&self) -> u64;

    /// Exactly `len` bytes at `off` (a shorter answer is an error).
    async fn read(&self, off: u64, len: u64) -> Result<Bytes, SourceError>;

    /// Several ranges; sources that can ask for them in one request override this.
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
        _ => Err(SourceError::Invalid(format!(
            "range {off}+{len} outside blob of {size} bytes"
        ))),
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
                .map_err(|e| SourceError::Unavailable(format!("{}: {e}", path.display())))?;
            Ok(Bytes::from(buf))
        })
        .await
        .map_err(|e| SourceError::Unavailable(format!("read task: {e}")))?
    }
}

#[cfg(feature = "registry")]
mod registry_source {
    use super::*;
    use registry::{BlobReader, ErrorKind};

    fn map_err(e: registry::Error) -> SourceError {
        match e.kind() {
            ErrorKind::Unreachable | ErrorKind::Unauthorized | ErrorKind::NotFound => {
                SourceError::Unavailable(e.to_string())
            }
            _ => SourceError::Invalid(e.to_string()),
        }
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
                return Err(SourceError::Invalid(format!(
                    "asked {len} bytes at {off}, got {}",
                    b.len()
                )));
            }
            Ok(b)
        }

        async fn read_many(&self, ranges: &[(u64, u64)]) -> Result<Vec<Bytes>, SourceError> {
            for &(off, len) in ranges {
                check_range(RangeSource::size(self), off, len)?;
            }
            let out = self.read_ranges(ranges).await.map_err(map_err)?;
            if out.len() != ranges.len()
                || out.iter().zip(ranges).any(|(b, r)| b.len() as u64 != r.1)
            {
                return Err(SourceError::Invalid(
                    "multi-range answer does not match request".into(),
                ));
            }
            Ok(out)
        }
    }
}
