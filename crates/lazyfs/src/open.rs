//! Opening a layer from its blob: the footer and TOC in at most two ranged
//! reads (one fewer when the caller already has the blob's tail, say from
//! the suffix-range request that also told it the blob's size), the TOC
//! checked against the digest the image promised, then the validated index
//! (all parsing in `estargz`).

use crate::cache::ChunkCache;
use crate::error::{Error, NotEstargz};
use crate::layer::LazyLayer;
use crate::source::RangeSource;
use crate::Config;
use bytes::Bytes;
use estargz::reader::{parse_toc_member, toc_region, verify_toc_digest, TAIL_READ};
use estargz::Index;
use std::sync::Arc;
use tokio::runtime::Handle;

impl LazyLayer {
    /// Read footer and TOC from `source`, verify the TOC against `toc_digest`
    /// (the `containerd.io/snapshot/stargz/toc.digest` annotation) when given,
    /// and build the layer. Does not prefetch or start background fetch.
    pub async fn open(
        source: Arc<dyn RangeSource>,
        layer_digest: &str,
        toc_digest: Option<&str>,
        cfg: &Config,
        cache: Arc<ChunkCache>,
        rt: Handle,
    ) -> Result<Arc<LazyLayer>, Error> {
        Self::open_with_tail(
            source,
            Bytes::new(),
            layer_digest,
            toc_digest,
            cfg,
            cache,
            rt,
        )
        .await
    }

    /// [`LazyLayer::open`] with the blob's last `tail.len()` bytes already
    /// at hand: the TOC is then read only if it does not fit in them.
    pub async fn open_with_tail(
        source: Arc<dyn RangeSource>,
        tail: Bytes,
        layer_digest: &str,
        toc_digest: Option<&str>,
        cfg: &Config,
        cache: Arc<ChunkCache>,
        rt: Handle,
    ) -> Result<Arc<LazyLayer>, Error> {
        let (index, _) = read_index(source.as_ref(), tail, layer_digest, toc_digest, cfg).await?;
        let prefetch_end = index.prefetch_end();
        Ok(LazyLayer::from_nodes(
            source,
            layer_digest,
            index.nodes,
            prefetch_end,
            cfg,
            cache,
            rt,
        ))
    }
}

/// The validated index of the blob and its TOC digest. `tail`: the blob's
/// last bytes if the caller has them (empty: read here).
pub async fn read_index(
    source: &dyn RangeSource,
    tail: Bytes,
    layer: &str,
    toc_digest: Option<&str>,
    cfg: &Config,
) -> Result<(Index, String), Error> {
    let size = source.size();
    let not_estargz = |reason: NotEstargz| Error::NotEstargz {
        layer: layer.to_string(),
        reason,
    };
    let invalid = |source: estargz::Error| Error::Invalid {
        layer: layer.to_string(),
        source,
    };
    let read = |off: u64, len: u64| async move {
        tokio::time::timeout(cfg.fetch_timeout(), source.read(off, len))
            .await
            .map_err(|_| Error::Unavailable {
                layer: layer.to_string(),
                source: crate::fetch::FetchError::Timeout(cfg.fetch_timeout()),
            })?
            .map_err(|e| Error::Unavailable {
                layer: layer.to_string(),
                source: e.into(),
            })
    };
    if size < estargz::footer::LEGACY_FOOTER_SIZE as u64 {
        return Err(not_estargz(NotEstargz::TooSmall { size }));
    }
    let (tail_start, tail) =
        if tail.len() as u64 >= estargz::footer::FOOTER_SIZE as u64 && tail.len() as u64 <= size {
            (size - tail.len() as u64, tail)
        } else {
            let start = size - size.min(TAIL_READ);
            (start, read(start, size - start).await?)
        };
    let footer = estargz::parse_footer(&tail).map_err(|e| not_estargz(NotEstargz::Footer(e)))?;
    let region = toc_region(&footer, size).map_err(invalid)?;
    let member = if region.start >= tail_start {
        tail.slice((region.start - tail_start) as usize..(region.end - tail_start) as usize)
    } else {
        let head = read(region.start, tail_start - region.start).await?;
        let mut m = Vec::with_capacity((region.end - region.start) as usize);
        m.extend_from_slice(&head);
        m.extend_from_slice(&tail[..(region.end - tail_start) as usize]);
        m.into()
    };
    // Up to 64 MiB of JSON: parse off the async threads.
    let (index, digest) = tokio::task::spawn_blocking(move || {
        let (toc, digest) = parse_toc_member(&member)?;
        Ok::<_, estargz::Error>((toc, digest))
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?
    .map_err(invalid)
    .and_then(|(toc, digest)| {
        verify_toc_digest(&digest, toc_digest).map_err(|_| Error::TocDigestMismatch {
            layer: layer.to_string(),
            expected: toc_digest.unwrap_or_default().to_string(),
            actual: digest.clone(),
        })?;
        let index = Index::from_toc(&toc, region.start, size)
            .map_err(|e| invalid(estargz::Error::Toc(e)))?;
        Ok((index, digest))
    })?;
    Ok((index, digest))
}
