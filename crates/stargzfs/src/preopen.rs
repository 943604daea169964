//! Opening the other layers of an image while containerd prepares the
//! first. containerd prepares an image's layers one after another and each
//! open costs a few round trips (blob size, footer, TOC), so on a distant
//! registry a 3-layer pull paid them three times in a row. The first
//! Prepare names every layer (`stargz.layers` / `cri.image-layers`); their
//! opens start at once and later Prepares pick up the result.

use futures::future::{BoxFuture, FutureExt, Shared};
use lazyfs::LazyLayer;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A layer being opened; `None` if that failed (the Prepare then opens it
/// itself and reports its own error).
pub(crate) type Opening = Shared<BoxFuture<'static, Option<Arc<LazyLayer>>>>;

/// Opens nobody asked for are dropped after this (the layer may already
/// have a snapshot, so containerd never prepares it).
const KEEP: Duration = Duration::from_secs(60);

/// (layer digest, TOC digest): a pre-opened layer is used only for a
/// Prepare that expects the same TOC.
type Key = (String, String);

#[derive(Default)]
pub(crate) struct Preopened {
    layers: Mutex<HashMap<Key, (Opening, Instant)>>,
    images: Mutex<HashMap<String, Instant>>,
}

impl Preopened {
    /// Whether to start pre-opening the layers of `image` now (once a minute at most).
    pub fn claim_image(&self, image: &str) -> bool {
        let now = Instant::now();
        let mut m = self.images.lock();
        m.retain(|_, t| now.duration_since(*t) < KEEP);
        if m.contains_key(image) {
            return false;
        }
        m.insert(image.to_string(), now);
        true
    }

    /// Record an open in flight unless one for the same key is there.
    pub fn insert(&self, digest: &str, toc: &str, f: BoxFuture<'static, Option<Arc<LazyLayer>>>) {
        let now = Instant::now();
        let mut m = self.layers.lock();
        m.retain(|_, (_, t)| now.duration_since(*t) < KEEP);
        m.entry((digest.to_string(), toc.to_string()))
            .or_insert_with(|| (f.shared(), now));
    }

    pub fn contains(&self, digest: &str, toc: &str) -> bool {
        self.layers
            .lock()
            .contains_key(&(digest.to_string(), toc.to_string()))
    }

    /// The open of this layer, if one was started (taken: used once).
    pub fn take(&self, digest: &str, toc: &str) -> Option<Opening> {
        self.layers
            .lock()
            .remove(&(digest.to_string(), toc.to_string()))
            .map(|(f, _)| f)
    }
}

/// The layer digests a Prepare's labels list for the whole image.
pub(crate) fn listed_layers(labels: &snapshotter::Labels) -> Vec<String> {
    snapshot_labels::labels::LAYERS_KEYS
        .iter()
        .find_map(|k| labels.get(*k))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_layers_from_either_label() {
        let mut l = snapshotter::Labels::new();
        assert!(listed_layers(&l).is_empty());
        l.insert(
            snapshot_labels::labels::CRI_LAYERS.into(),
            "sha256:a, sha256:b,".into(),
        );
        assert_eq!(listed_layers(&l), ["sha256:a", "sha256:b"]);
    }

    #[tokio::test]
    async fn an_open_is_taken_once_and_images_are_claimed_once() {
        let p = Preopened::default();
        assert!(p.claim_image("r/a:1"));
        assert!(!p.claim_image("r/a:1"));
        p.insert("d", "t", async { None }.boxed());
        assert!(p.contains("d", "t"));
        assert!(p.take("d", "other-toc").is_none());
        assert!(p.take("d", "t").unwrap().await.is_none());
        assert!(p.take("d", "t").is_none());
    }
}
