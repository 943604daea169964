//! Opening a layer from its blob: the footer and TOC in at most two ranged
//! reads, the TOC checked against the digest the image promised, then the
//! validated index (all parsing in `estargz`).

use crate::error::{Error, NotEstargz};
use crate::layer::LazyLayer;
use crate::scheduler::FetchVia;
use crate::source::RangeSource;
use crate::Config;
use bytes::Bytes;
use estargz::reader::{
    member_compression, parse_toc_member, toc_region, verify_toc_digest, TAIL_READ,
};
use estargz::Index;
use std::sync::Arc;
use tokio::runtime::Handle;

/// A blob's TOC member as read from it (gzip, or zstd:chunked's skippable
/// frame, as in the blob: its first bytes tell which), where it
/// starts and the blob's size: enough to open the layer again without the
/// registry. Worth nothing until checked against the TOC digest again.
#[derive(Debug, Clone)]
pub struct TocBytes {
    pub member: Bytes,
    pub toc_offset: u64,
    pub blob_size: u64,
}

impl LazyLayer {
    /// Read footer and TOC from `source`, verify the TOC against `toc_digest`
    /// (the `containerd.io/snapshot/stargz/toc.digest` annotation) when given,
    /// and build the layer, fetching through `via` (the process's
    /// `Scheduler`, or a cache alone). Does not prefetch or start background
    /// fetch.
    pub async fn open(
        source: Arc<dyn RangeSource>,
        layer_digest: &str,
        toc_digest: Option<&str>,
        cfg: &Config,
        via: impl Into<FetchVia>,
        rt: Handle,
    ) -> Result<Arc<LazyLayer>, Error> {
        let (layer, _) =
            Self::open_keeping_toc(source, Bytes::new(), layer_digest, toc_digest, cfg, via, rt)
                .await?;
        Ok(layer)
    }

    /// [`LazyLayer::open`] with the blob's last `tail.len()` bytes already
    /// at hand (empty: read here), also returning the TOC bytes it verified
    /// (to persist them). The TOC is read only if it does not fit in `tail`.
    pub async fn open_keeping_toc(
        source: Arc<dyn RangeSource>,
        tail: Bytes,
        layer_digest: &str,
        toc_digest: Option<&str>,
        cfg: &Config,
        via: impl Into<FetchVia>,
        rt: Handle,
    ) -> Result<(Arc<LazyLayer>, TocBytes), Error> {
        let toc = read_toc_member(source.as_ref(), tail, layer_digest, cfg).await?;
        let (index, _) = index_from_member(&toc, layer_digest, toc_digest, cfg).await?;
        let layer = Self::from_index(source, layer_digest, index, cfg, via.into(), rt);
        Ok((layer, toc))
    }

    /// Open from TOC bytes kept earlier, without reading the blob: they are
    /// parsed and hashed again and must match `toc_digest`, or this fails
    /// (`TocDigestMismatch` / `Invalid`) and the caller reads the blob.
    /// `source` must be the blob of `toc.blob_size` bytes the TOC came from.
    pub async fn open_from_toc(
        source: Arc<dyn RangeSource>,
        layer_digest: &str,
        toc: &TocBytes,
        toc_digest: &str,
        cfg: &Config,
        via: impl Into<FetchVia>,
        rt: Handle,
    ) -> Result<Arc<LazyLayer>, Error> {
        Self::open_with_toc(source, layer_digest, toc, Some(toc_digest), cfg, via, rt).await
    }

    /// Open with a TOC from elsewhere: kept on disk, or an external TOC
    /// (`toc.toc_offset` is then where the blob's data ends, before its
    /// 46-byte footer: see [`external_toc_bytes`]). Without `toc_digest`
    /// the layer is unverified ([`LazyLayer::mark_unverified`]).
    pub async fn open_with_toc(
        source: Arc<dyn RangeSource>,
        layer_digest: &str,
        toc: &TocBytes,
        toc_digest: Option<&str>,
        cfg: &Config,
        via: impl Into<FetchVia>,
        rt: Handle,
    ) -> Result<Arc<LazyLayer>, Error> {
        let (index, _) = index_from_member(toc, layer_digest, toc_digest, cfg).await?;
        let layer = Self::from_index(source, layer_digest, index, cfg, via.into(), rt);
        if toc_digest.is_none() {
            layer.mark_unverified();
        }
        Ok(layer)
    }

    /// A layer from an index built elsewhere (a plain gzip layer's
    /// `gzindex`), whose chunks `decoder` decodes and verifies. The caller
    /// has validated `index` and checked it belongs to this blob.
    pub fn open_indexed(
        source: Arc<dyn RangeSource>,
        layer_digest: &str,
        index: Index,
        decoder: Arc<dyn crate::MemberDecoder>,
        cfg: &Config,
        via: impl Into<FetchVia>,
        rt: Handle,
    ) -> Arc<LazyLayer> {
        // A span is one blob range for all its pieces: a request must be
        // allowed to hold a whole one, or each piece goes alone.
        let widest = index
            .all_chunks()
            .map(|(_, c)| c.blob_end.saturating_sub(c.blob_offset))
            .max()
            .unwrap_or(0);
        let mut cfg = cfg.clone();
        cfg.max_request_bytes = cfg.max_request_bytes.max(widest);
        cfg.background_request_bytes = cfg.background_request_bytes.max(widest);
        let layer = Self::from_index(source, layer_digest, index, &cfg, via.into(), rt);
        layer.fetcher().set_decoder(decoder);
        layer
    }

    /// A layer with chunks that carry no digest starts unverified (see
    /// [`LazyLayer::mark_unverified`]).
    fn from_index(
        source: Arc<dyn RangeSource>,
        layer_digest: &str,
        index: Index,
        cfg: &Config,
        via: FetchVia,
        rt: Handle,
    ) -> Arc<LazyLayer> {
        let prefetch_end = index.prefetch_end();
        let verified = index.unverified_chunks() == 0;
        let layer = LazyLayer::from_nodes(
            source,
            layer_digest,
            index.nodes,
            prefetch_end,
            cfg,
            via,
            rt,
        );
        if !verified {
            layer.mark_unverified();
        }
        layer
    }
}

/// The [`TocBytes`] of an external-TOC blob of `blob_size` bytes whose
/// TOC member (from its TOC image) is `member`: the data ends before the
/// 46-byte footer. `None` if the blob cannot hold that footer.
pub fn external_toc_bytes(member: Bytes, blob_size: u64) -> Option<TocBytes> {
    let toc_offset = estargz::external::data_end(blob_size).ok()?;
    Some(TocBytes {
        member,
        toc_offset,
        blob_size,
    })
}

/// Footer and TOC member from the blob, in at most two ranged reads.
/// `tail`: the blob's last bytes if the caller has them (empty: read here).
pub async fn read_toc_member(
    source: &dyn RangeSource,
    tail: Bytes,
    layer: &str,
    cfg: &Config,
) -> Result<TocBytes, Error> {
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
    Ok(TocBytes {
        member,
        toc_offset: region.start,
        blob_size: size,
    })
}

/// Parse and verify a TOC member (the digest of its JSON against
/// `toc_digest`, when given) into the validated index; chunks without
/// digests only with `cfg.allow_no_verification`.
pub async fn index_from_member(
    toc: &TocBytes,
    layer: &str,
    toc_digest: Option<&str>,
    cfg: &Config,
) -> Result<(Index, String), Error> {
    let opts = estargz::IndexOptions {
        unverified_key: cfg.allow_no_verification.then(|| layer.to_string()),
        ..Default::default()
    };
    let invalid = |source: estargz::Error| Error::Invalid {
        layer: layer.to_string(),
        source,
    };
    let member = toc.member.clone();
    let toc_member = toc.member.clone();
    let (start, size) = (toc.toc_offset, toc.blob_size);
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
        // The member says gzip or zstd:chunked, and the digest just checked covers it.
        let opts = estargz::IndexOptions {
            compression: member_compression(&toc_member),
            ..opts
        };
        let index = Index::from_toc_with(&toc, start, size, &opts)
            .map_err(|e| invalid(estargz::Error::Toc(e)))?;
        Ok((index, digest))
    })?;
    Ok((index, digest))
}
