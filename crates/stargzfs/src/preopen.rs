//! Opening the other layers of an image while containerd prepares the
//! first. containerd prepares an image's layers one after another and each
//! open costs a round trip or two (footer, TOC), so on a distant registry a
//! 3-layer pull paid them three times in a row. The first Prepare names
//! every layer (`stargz.layers` / `cri.image-layers`); their opens start at
//! once and later Prepares pick up the result.
//!
//! The TOC digests of those layers are in the image manifest, not in the
//! labels; so each layer's tail (footer, TOC, size) is fetched at once, in
//! parallel with the manifest, and checked against the manifest when both
//! are in: all layers of an image open in the round trips of one.

use crate::open::{LayerFacts, Opener};
use futures::future::{BoxFuture, FutureExt, Shared};
use lazyfs::LazyLayer;
use parking_lot::Mutex;
use registry::Reference;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::debug;

/// A layer being opened, with the TOC digest it was checked against;
/// `None` if that failed (the Prepare then opens it itself and reports its
/// own error).
pub(crate) type Opening = Shared<BoxFuture<'static, Option<(Arc<LazyLayer>, String)>>>;

/// What a layer opened through its seekable index was "checked against"
/// (it has no TOC digest).
pub(crate) const GZINDEX: &str = "gzindex";

/// Opens nobody asked for are dropped after this (the layer may already
/// have a snapshot, so containerd never prepares it).
const KEEP: Duration = Duration::from_secs(60);

/// By layer digest; a pre-opened layer is used only for a Prepare that
/// expects the TOC digest it was checked against.
#[derive(Default)]
pub(crate) struct Preopened {
    layers: Mutex<HashMap<String, (Opening, Instant)>>,
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

    /// Record an open in flight unless one for the layer is there.
    pub fn insert(&self, digest: &str, f: BoxFuture<'static, Option<(Arc<LazyLayer>, String)>>) {
        let now = Instant::now();
        let mut m = self.layers.lock();
        m.retain(|_, (_, t)| now.duration_since(*t) < KEEP);
        m.entry(digest.to_string())
            .or_insert_with(|| (f.shared(), now));
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.layers.lock().contains_key(digest)
    }

    /// The layer opened ahead, if one was started, it worked and its TOC
    /// is `toc` (taken: used once).
    pub async fn take(&self, digest: &str, toc: &str) -> Option<Arc<LazyLayer>> {
        let opening = self.layers.lock().remove(digest).map(|(f, _)| f)?;
        match opening.await {
            Some((layer, t)) if t == toc => Some(layer),
            _ => None,
        }
    }

    /// Start opening the `listed` layers of `image` but `current`. `facts`:
    /// the manifest's, if the caller has it; else it is fetched alongside
    /// the layers' tails.
    pub fn start(
        self: &Arc<Self>,
        opener: &Opener,
        image: &Reference,
        current: &str,
        listed: Vec<String>,
        facts: Option<LayerFacts>,
    ) {
        let facts: Shared<BoxFuture<'static, Option<Arc<LayerFacts>>>> = match facts {
            Some(f) => futures::future::ready(Some(Arc::new(f))).boxed().shared(),
            None => {
                let (opener, image) = (opener.clone(), image.clone());
                let task = opener.rt.clone().spawn(async move {
                    match opener.layer_facts(&image, None).await {
                        Ok(f) => Some(Arc::new(f)),
                        Err(e) => {
                            debug!(image = %image, error = %e, "not opening layers ahead");
                            None
                        }
                    }
                });
                async move { task.await.ok().flatten() }.boxed().shared()
            }
        };
        for d in listed.into_iter().filter(|d| d != current) {
            if self.contains(&d) {
                continue;
            }
            let (opener2, image, facts, digest) =
                (opener.clone(), image.clone(), facts.clone(), d.clone());
            let task = opener.rt.spawn(async move {
                let (tail, facts) = futures::join!(opener2.tail(&image, &digest), facts);
                let (size, toc) = facts?.get(&digest)?.clone();
                let Some(toc) = toc else {
                    // No TOC: lazy only through a seekable index (the
                    // tail read beside the manifest is not needed).
                    let layer = opener2.open_gz_indexed(&image, &digest).await.ok()??;
                    return Some((layer, GZINDEX.to_string()));
                };
                let tail = tail.ok()?;
                // The manifest's size is verified; the answer's is not.
                if tail.0.size() != size {
                    debug!(layer = %digest, "blob size differs from the manifest's; not opened ahead");
                    return None;
                }
                let layer = opener2.open_tail(&image, &digest, tail, &toc).await.ok()?;
                Some((layer, toc))
            });
            self.insert(&d, async move { task.await.ok().flatten() }.boxed());
        }
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
        p.insert("d", async { None }.boxed());
        assert!(p.contains("d"));
        assert!(p.take("d", "t").await.is_none());
        assert!(!p.contains("d"));
        assert!(p.take("d", "t").await.is_none());
    }
}
