//! From a Prepare's labels to an opened lazy layer: the image reference and
//! layer digest from the labels, the TOC digest from the labels or else the
//! image manifest, then footer and TOC from the registry blob.
//!
//! Round trips: a blob's size is never asked with a HEAD. The first request
//! for a layer is a suffix range (`Range: bytes=-64KiB`) whose answer holds
//! the footer, usually the TOC, and in its Content-Range the blob's size;
//! a TOC larger than that costs one more ranged read. So a layer opens in
//! one round trip, or two for a big TOC (a few thousand files).

use crate::error::Error;
use crate::gzlayer::GzLookup;
use crate::manifest;
use crate::toc_store::TocStore;
use bytes::Bytes;
use lazyfs::{LazyLayer, Scheduler};
use registry::Reference;
use snapshot_labels::annotations::TOC_DIGEST;
use snapshotter::Labels;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::runtime::Handle;

/// The first request for a layer asks for this many bytes at the blob's
/// end (lazyfs reads as much when it opens a layer itself): the footer and
/// a TOC of up to ~1000 files. A bigger guess costs every layer bytes (and,
/// on a fresh connection, TCP slow-start round trips) to spare big TOCs one
/// round trip.
const TAIL_READ: u64 = 64 << 10;

/// Size and TOC digest (if the manifest has one) of each layer, by digest.
pub(crate) type LayerFacts = HashMap<String, (u64, Option<String>)>;

fn facts_of(m: &registry::Manifest) -> LayerFacts {
    m.manifest
        .layers()
        .iter()
        .map(|l| {
            let toc = l
                .annotations()
                .as_ref()
                .and_then(|a| a.get(TOC_DIGEST))
                .cloned();
            (l.digest().to_string(), (l.size(), toc))
        })
        .collect()
}

/// The first non-empty value of `keys` in `labels`.
pub(crate) fn first<'a>(labels: &'a Labels, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| labels.get(*k))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// What opening a layer needs; cheap to clone into a spawned task.
#[derive(Clone)]
pub(crate) struct Opener {
    pub client: registry::Client,
    pub cfg: lazyfs::Config,
    pub sched: Arc<Scheduler>,
    pub rt: Handle,
    /// Verified TOCs on disk: a layer opens without its registry after a restart.
    pub tocs: Arc<TocStore>,
    /// Seekable indexes of plain gzip layers: where they are looked for.
    pub(crate) gz: GzLookup,
}

impl Opener {
    /// Size and TOC digest of every layer of the image manifest, for
    /// callers (CRI, containerd's unpacker without annotations) that did not
    /// pass them, and for pre-opening the other layers. The manifest is
    /// fetched once for all of an image's Prepares (`manifest::RECENT`);
    /// if it does not list `layer` the tag may have moved, so it is
    /// fetched again.
    pub async fn layer_facts(
        &self,
        image: &Reference,
        layer: Option<&str>,
    ) -> Result<LayerFacts, Error> {
        let m = manifest::recent(&self.client, image).await?;
        let facts = facts_of(&m);
        match layer {
            Some(l) if !facts.contains_key(l) => {
                self.client.forget_manifest(image);
                Ok(facts_of(&manifest::recent(&self.client, image).await?))
            }
            _ => Ok(facts),
        }
    }

    /// A reader for the blob and its last bytes (footer, often the TOC),
    /// in one request.
    pub async fn tail(
        &self,
        image: &Reference,
        digest: &str,
    ) -> Result<(registry::BlobReader, Bytes), Error> {
        self.client
            .blob_reader_tail(image, digest, TAIL_READ)
            .await
            .map_err(|source| Error::Blob {
                layer: digest.to_string(),
                source,
            })
    }

    /// Open a layer whose tail was read: the TOC checked against `toc`, then
    /// kept on disk for restarts.
    pub async fn open_tail(
        &self,
        image: &Reference,
        digest: &str,
        (reader, tail): (registry::BlobReader, Bytes),
        toc: &str,
    ) -> Result<Arc<LazyLayer>, Error> {
        let (layer, bytes) = if estargz::external::is_footer(&tail) {
            let bytes = self.external_toc(image, digest, reader.size()).await?;
            let layer = LazyLayer::open_with_toc(
                Arc::new(reader),
                digest,
                &bytes,
                Some(toc),
                &self.cfg,
                self.sched.clone(),
                self.rt.clone(),
            )
            .await?;
            (layer, bytes)
        } else {
            LazyLayer::open_keeping_toc(
                Arc::new(reader),
                tail,
                digest,
                Some(toc),
                &self.cfg,
                self.sched.clone(),
                self.rt.clone(),
            )
            .await?
        };
        self.tocs
            .stats
            .fetched_from_registry
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tocs = self.tocs.clone();
        let (digest, toc) = (digest.to_string(), toc.to_string());
        // Verified above; a failure to keep it only costs the next restart.
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = tocs.save(&digest, &toc, &bytes) {
                tracing::warn!(layer = %digest, error = %e, "cannot keep the TOC on disk");
            }
        })
        .await;
        Ok(layer)
    }

    /// The layer from its kept TOC, without a request: `None` if there is
    /// none, it is for another TOC digest, or it fails its checks (then it
    /// is deleted and the caller reads the TOC from the registry).
    pub(crate) async fn open_kept(
        &self,
        image: &Reference,
        digest: &str,
        toc: &str,
    ) -> Option<Arc<LazyLayer>> {
        let tocs = self.tocs.clone();
        let d = digest.to_string();
        let kept = tokio::task::spawn_blocking(move || tocs.load(&d))
            .await
            .ok()
            .flatten()?;
        if kept.toc_digest != toc {
            self.tocs.discard(digest, "kept for another TOC digest");
            return None;
        }
        // With the size known, making the reader sends nothing.
        let reader = self
            .client
            .blob_reader(image, digest, Some(kept.toc.blob_size))
            .await
            .ok()?;
        match LazyLayer::open_from_toc(
            Arc::new(reader),
            digest,
            &kept.toc,
            toc,
            &self.cfg,
            self.sched.clone(),
            self.rt.clone(),
        )
        .await
        {
            Ok(layer) => {
                self.tocs
                    .stats
                    .opened_from_disk
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(layer = digest, "opened from the TOC kept on disk");
                Some(layer)
            }
            Err(e) => {
                self.tocs.discard(digest, &e.to_string());
                None
            }
        }
    }

    /// Open a layer nothing vouches for (no TOC digest; the caller checked
    /// that unverified layers are allowed): marked unverified, so it gets
    /// the layer-level check; its TOC is not kept on disk.
    pub async fn open_unverified(
        &self,
        image: &Reference,
        digest: &str,
    ) -> Result<Arc<LazyLayer>, Error> {
        let (reader, tail) = self.tail(image, digest).await?;
        let layer = if estargz::external::is_footer(&tail) {
            let bytes = self.external_toc(image, digest, reader.size()).await?;
            LazyLayer::open_with_toc(
                Arc::new(reader),
                digest,
                &bytes,
                None,
                &self.cfg,
                self.sched.clone(),
                self.rt.clone(),
            )
            .await?
        } else {
            LazyLayer::open_keeping_toc(
                Arc::new(reader),
                tail,
                digest,
                None,
                &self.cfg,
                self.sched.clone(),
                self.rt.clone(),
            )
            .await?
            .0
        };
        layer.mark_unverified();
        Ok(layer)
    }

    /// The TOC of an external-TOC layer (a blob of `blob_size` bytes): from
    /// the TOC image `<tag>-esgztoc` of the same repository, the layer whose
    /// annotation names `digest`, fetched whole and checked against its
    /// digest (the TOC digest is checked by the caller).
    pub async fn external_toc(
        &self,
        image: &Reference,
        digest: &str,
        blob_size: u64,
    ) -> Result<lazyfs::TocBytes, Error> {
        let fail = |reason: String| Error::ExternalToc {
            layer: digest.to_string(),
            reason,
        };
        let tag = image
            .tag()
            .ok_or_else(|| fail(format!("{image} has no tag to name its TOC image by")))?;
        let toc_ref = image
            .repo_only()
            .with_tag(&estargz::external::toc_image_tag(tag));
        let m = self
            .client
            .fetch_manifest(&toc_ref)
            .await
            .map_err(|source| Error::Manifest {
                image: toc_ref.to_string(),
                source,
            })?;
        let found = estargz::external::find_toc_layer(&m.resolved.bytes, digest)
            .map_err(|e| fail(format!("{toc_ref}: {e}")))?;
        let member = self
            .client
            .fetch_blob_bytes(&toc_ref, &found.digest, found.size)
            .await
            .map_err(|source| Error::Blob {
                layer: found.digest.clone(),
                source,
            })?;
        tracing::debug!(layer = digest, toc_image = %toc_ref, "external TOC fetched");
        lazyfs::external_toc_bytes(member, blob_size).ok_or_else(|| {
            fail(format!(
                "a blob of {blob_size} bytes cannot hold the footer"
            ))
        })
    }

    /// A plain gzip layer through its seekable index, `None` when there is
    /// no index for it.
    pub(crate) async fn open_gz_indexed(
        &self,
        image: &Reference,
        digest: &str,
    ) -> Result<Option<Arc<LazyLayer>>, Error> {
        self.gz
            .open(image, digest, &self.cfg, &self.sched, &self.rt)
            .await
    }

    /// Open a layer from the registry (the caller has already tried its
    /// kept TOC with [`Opener::open_kept`]).
    pub async fn open(
        self,
        image: Reference,
        digest: String,
        toc: String,
    ) -> Result<Arc<LazyLayer>, Error> {
        let tail = self.tail(&image, &digest).await?;
        self.open_tail(&image, &digest, tail, &toc).await
    }
}
