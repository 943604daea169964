//! Plain gzip layers (no eStargz TOC) served lazily through a seekable
//! index (`gzindex`, built by `rsnap index`): looked up in the local index
//! directory first, then among the image manifest's OCI referrers (the
//! referrers API, else the `sha256-<hex>` tag). No index: the caller falls
//! back as for any layer without a TOC. An index that does not fit its
//! layer (another digest or size, a file table or pieces that do not match
//! its checkpoints) is refused here; one that lies about bytes fails its
//! piece digests at read time, never serving them.

use crate::error::Error;
use crate::manifest::{self, RECENT};
use bytes::Bytes;
use gzindex::index_path;
use lazyfs::{ChunkError, LazyLayer, MemberDecoder, Scheduler};
use registry::Reference;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::runtime::Handle;

/// The decoder lazyfs calls for this layer's pieces.
struct Pieces(gzindex::SpanDecoder);

impl MemberDecoder for Pieces {
    fn format(&self) -> &'static str {
        "gzindex"
    }

    fn decode(
        &self,
        member: &[u8],
        chunks: &[&estargz::index::Chunk],
    ) -> Vec<Result<Bytes, ChunkError>> {
        self.0
            .decode(member, chunks)
            .into_iter()
            .zip(chunks)
            .map(|(r, c)| match r {
                Ok(v) => Ok(Bytes::from(v)),
                Err(gzindex::Error::DigestMismatch { actual, .. }) => {
                    Err(ChunkError::DigestMismatch {
                        digest: c.digest.clone(),
                        actual,
                    })
                }
                Err(e) => Err(ChunkError::Malformed {
                    digest: c.digest.clone(),
                    reason: e.to_string(),
                }),
            })
            .collect()
    }
}

/// Where indexes are looked for, and the registry's recent answers about
/// them; cheap to clone (clones share the client and what it remembers).
#[derive(Clone)]
pub(crate) struct GzLookup {
    client: registry::Client,
    dir: Option<PathBuf>,
    registry_lookup: bool,
    /// Index blobs by layer, per image manifest, as the referrers list them.
    found: Arc<registry::Recent<Arc<HashMap<String, String>>>>,
}

impl GzLookup {
    /// Indexes in `dir`, then (if `registry_lookup`) among the referrers of
    /// the image manifest.
    pub(crate) fn new(
        client: registry::Client,
        dir: Option<PathBuf>,
        registry_lookup: bool,
    ) -> GzLookup {
        GzLookup {
            client,
            dir,
            registry_lookup,
            found: Default::default(),
        }
    }

    /// The layer through its index, `None` when there is no index for it;
    /// opened with the opener's lazyfs settings and scheduler.
    pub(crate) async fn open(
        &self,
        image: &Reference,
        digest: &str,
        cfg: &lazyfs::Config,
        sched: &Arc<Scheduler>,
        rt: &Handle,
    ) -> Result<Option<Arc<LazyLayer>>, Error> {
        let bad = |source: gzindex::Error| Error::GzIndex {
            layer: digest.to_string(),
            source,
        };
        let Some(bytes) = self.find_index(image, digest).await? else {
            return Ok(None);
        };
        let reader = self
            .client
            .blob_reader(image, digest, None)
            .await
            .map_err(|source| Error::Blob {
                layer: digest.to_string(),
                source,
            })?;
        let size = reader.size();
        let d = digest.to_string();
        // Up to 64 MiB to inflate and a tree to build: off the async threads.
        let (index, decoder) = tokio::task::spawn_blocking(move || {
            let idx = gzindex::GzIndex::parse(&bytes)?;
            idx.check_layer(&d, size)?;
            let index = idx.layer_index()?;
            Ok::<_, gzindex::Error>((index, gzindex::SpanDecoder::new(&idx)))
        })
        .await
        .map_err(|e| Error::GzIndex {
            layer: digest.to_string(),
            source: gzindex::Error::Io(std::io::Error::other(e)),
        })?
        .map_err(bad)?;
        tracing::info!(
            layer = digest,
            "serving a plain gzip layer through its index"
        );
        Ok(Some(LazyLayer::open_indexed(
            Arc::new(reader),
            digest,
            index,
            Arc::new(Pieces(decoder)),
            cfg,
            sched.clone(),
            rt.clone(),
        )))
    }

    /// Whether layer `digest` has an index (a file in the local directory,
    /// or one the image's referrers list), without fetching it.
    pub(crate) async fn has_index(&self, image: &Reference, digest: &str) -> bool {
        let local = self.dir.as_deref().and_then(|d| index_path(d, digest));
        if local.is_some_and(|p| p.exists()) {
            return true;
        }
        self.registry_lookup
            && self
                .referred(image, digest)
                .await
                .is_ok_and(|(_, f)| f.contains_key(digest))
    }

    /// The index blobs the image's referrers list, by layer, and the
    /// repository they are in: asked once per manifest (`RECENT`).
    async fn referred(
        &self,
        image: &Reference,
        asking: &str,
    ) -> Result<(Reference, Arc<HashMap<String, String>>), Error> {
        let manifest = manifest::recent(&self.client, image).await?;
        let (repo, subject) = (image.repo_only(), manifest.resolved.digest);
        let found = self
            .found
            .get(&format!("{repo}@{subject}"), RECENT, || {
                self.index_blobs(&repo, &subject, asking)
            })
            .await?;
        Ok((repo, found))
    }

    /// The index file's bytes: the local directory, then the registry.
    async fn find_index(&self, image: &Reference, digest: &str) -> Result<Option<Bytes>, Error> {
        if let Some(path) = self.dir.as_deref().and_then(|dir| index_path(dir, digest)) {
            let limit = gzindex::MAX_INDEX_BYTES;
            let read = tokio::task::spawn_blocking(move || {
                use std::io::Read;
                let f = std::fs::File::open(&path)?;
                let mut b = Vec::new();
                f.take(limit + 1).read_to_end(&mut b)?;
                Ok::<_, std::io::Error>(b)
            })
            .await
            .ok();
            match read {
                Some(Ok(b)) => return Ok(Some(Bytes::from(b))),
                Some(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
                    tracing::warn!(layer = digest, error = %e, "cannot read the local gzip index");
                }
                _ => {}
            }
        }
        if !self.registry_lookup {
            return Ok(None);
        }
        let (repo, found) = self.referred(image, digest).await?;
        let Some(blob) = found.get(digest) else {
            return Ok(None);
        };
        let bytes = self
            .client
            .fetch_blob_bytes(&repo, blob, gzindex::MAX_INDEX_BYTES)
            .await
            .map_err(|source| Error::Blob {
                layer: digest.to_string(),
                source,
            })?;
        Ok(Some(bytes))
    }

    /// The index blob of each layer, from the referrers of manifest
    /// `subject`: asked once for all of an image's layers.
    async fn index_blobs(
        &self,
        repo: &Reference,
        subject: &str,
        asking: &str,
    ) -> Result<Arc<HashMap<String, String>>, Error> {
        let blob_err = |source| Error::Blob {
            layer: asking.to_string(),
            source,
        };
        let referrers = self
            .client
            .referrers(repo, subject, gzindex::ARTIFACT_TYPE)
            .await
            .map_err(blob_err)?;
        let mut found = HashMap::new();
        for r in referrers {
            let m = self
                .client
                .resolve(&repo.with_digest(&r.digest))
                .await
                .map_err(blob_err)?;
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&m.bytes) else {
                continue;
            };
            let layers = v.get("layers").and_then(|l| l.as_array());
            for l in layers.into_iter().flatten() {
                if l.get("mediaType").and_then(|m| m.as_str()) != Some(gzindex::MEDIA_TYPE) {
                    continue;
                }
                let layer = l
                    .get("annotations")
                    .and_then(|a| a.get(gzindex::LAYER_ANNOTATION))
                    .and_then(|a| a.as_str());
                let blob = l.get("digest").and_then(|d| d.as_str());
                if let (Some(layer), Some(blob)) = (layer, blob) {
                    // The first referrer listing a layer wins, as before.
                    found
                        .entry(layer.to_string())
                        .or_insert_with(|| blob.to_string());
                }
            }
        }
        Ok(Arc::new(found))
    }
}
