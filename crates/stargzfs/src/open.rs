//! From a Prepare's labels to an opened lazy layer: the image reference and
//! layer digest from the labels, the TOC digest from the labels or else the
//! image manifest, then footer and TOC from the registry blob.

use crate::error::Error;
use lazyfs::{LazyLayer, Scheduler};
use registry::Reference;
use snapshot_labels::annotations::TOC_DIGEST;
use snapshotter::Labels;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::runtime::Handle;

/// Size and TOC digest (if the manifest has one) of each layer, by digest.
pub(crate) type LayerFacts = HashMap<String, (u64, Option<String>)>;

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
}

impl Opener {
    /// Size and TOC digest of every layer of the image manifest, for
    /// callers (CRI, containerd's unpacker without annotations) that did not
    /// pass them, and for pre-opening the other layers.
    pub async fn layer_facts(&self, image: &Reference) -> Result<LayerFacts, Error> {
        let m = self
            .client
            .fetch_manifest(image)
            .await
            .map_err(|source| Error::Manifest {
                image: image.to_string(),
                source,
            })?;
        Ok(m.manifest
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
            .collect())
    }

    pub async fn open(
        self,
        image: Reference,
        digest: String,
        size: Option<u64>,
        toc: String,
    ) -> Result<Arc<LazyLayer>, Error> {
        let reader = self
            .client
            .blob_reader(&image, &digest, size)
            .await
            .map_err(|source| Error::Blob {
                layer: digest.clone(),
                source,
            })?;
        Ok(LazyLayer::open(
            Arc::new(reader),
            &digest,
            Some(&toc),
            &self.cfg,
            self.sched.clone(),
            self.rt.clone(),
        )
        .await?)
    }
}
