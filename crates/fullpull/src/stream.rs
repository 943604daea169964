//! The blob as one in-order byte stream from parallel ranged requests: a
//! task keeps `concurrency` requests of `request_bytes` in flight and hands
//! the answers, in blob order, to a blocking reader ([`Incoming`]) on the
//! thread that decompresses. A slow consumer stops the task (bounded
//! channel), so memory stays at about `concurrency x request_bytes`.

use bytes::{Buf, Bytes};
use futures::StreamExt;
use std::io::{self, Read};
use tokio::sync::mpsc;

/// Ranges of `size` bytes cut into requests of `request_bytes`.
pub(crate) fn ranges(size: u64, request_bytes: u64) -> Vec<(u64, u64)> {
    let step = request_bytes.max(1);
    (0..size.div_ceil(step))
        .map(|i| (i * step, step.min(size - i * step)))
        .collect()
}

/// Where the bytes come from; `registry::BlobReader` in the daemon.
#[async_trait::async_trait]
pub(crate) trait Source: Send + Sync + 'static {
    async fn read_at(&self, off: u64, len: u64) -> Result<Bytes, registry::Error>;
}

#[async_trait::async_trait]
impl Source for registry::BlobReader {
    async fn read_at(&self, off: u64, len: u64) -> Result<Bytes, registry::Error> {
        registry::BlobReader::read_at(self, off, len).await
    }
}

/// Starts fetching; the returned reader yields the blob's bytes in order,
/// or the first fetch error (then nothing more).
pub(crate) fn start<S: Source>(
    src: std::sync::Arc<S>,
    size: u64,
    request_bytes: u64,
    concurrency: usize,
) -> (Incoming, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(concurrency.max(1));
    let task = tokio::spawn(async move {
        let mut answers = futures::stream::iter(ranges(size, request_bytes))
            .map(|(off, len)| {
                let src = src.clone();
                async move {
                    let b = src.read_at(off, len).await?;
                    if b.len() as u64 != len {
                        return Err(registry::Error::Config(format!(
                            "range {off}+{len} answered with {} bytes",
                            b.len()
                        )));
                    }
                    Ok(b)
                }
            })
            .buffered(concurrency.max(1));
        while let Some(a) = answers.next().await {
            let failed = a.is_err();
            // The reader is gone (it failed or finished): stop fetching.
            if tx.send(a).await.is_err() || failed {
                return;
            }
        }
    });
    (
        Incoming {
            rx,
            cur: Bytes::new(),
            error: None,
        },
        task,
    )
}

/// The blocking end: `Read` over the answers as they arrive.
pub(crate) struct Incoming {
    rx: mpsc::Receiver<Result<Bytes, registry::Error>>,
    cur: Bytes,
    /// The fetch error, kept for the caller's typed error.
    pub(crate) error: Option<registry::Error>,
}

impl Read for Incoming {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while !self.cur.has_remaining() {
            if self.error.is_some() {
                return Err(io::Error::other("fetching the blob failed"));
            }
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.cur = b,
                Some(Err(e)) => {
                    self.error = Some(e);
                    return Err(io::Error::other("fetching the blob failed"));
                }
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        self.cur.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_blob_once() {
        assert_eq!(ranges(0, 4), vec![]);
        assert_eq!(ranges(10, 4), vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(ranges(8, 4), vec![(0, 4), (4, 4)]);
    }
}
