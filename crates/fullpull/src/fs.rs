//! [`PullingFs`]: a `RemoteFs` around another (the lazy one) that, when
//! the lazy one cannot serve a layer, pulls the layer itself
//! (`RemoteFs::unpack`): manifest and image config once per image, then the
//! blob into the directory the snapshotter gives. The first such layer of
//! an image also starts pulling the image's layers above it into staging
//! directories under `ROOT/fallback-pull` (containerd prepares one layer
//! at a time; their chain IDs are new, so no snapshot of theirs exists),
//! and their Prepares take the result by rename.

use crate::error::Error;
use crate::pull::{pull_into, Compression, Fetch, LayerSpec, Pulled};
use crate::Config;
use async_trait::async_trait;
use overlay_unpack::adopt_lower_attrs;
use parking_lot::Mutex;
use registry::Reference;
use snapshot_labels::labels::{DIGEST_KEYS, REF_KEYS};
use snapshotter::{Labels, RemoteFs, RemoteFsError, Unpack};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::{info, warn};

/// An image's layers as the manifest and config list them, bottom first.
struct ImageFacts {
    /// Digest, size, media type, diff ID.
    layers: Vec<(String, u64, String, Option<String>)>,
}

/// How long manifest facts and unclaimed pulls ahead are kept.
const KEEP: Duration = Duration::from_secs(600);
const FACTS_TTL: Duration = Duration::from_secs(60);

type AheadJob = JoinHandle<Result<(PathBuf, Pulled), Error>>;

/// Counters for the daemon's metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub layers: AtomicU64,
    pub failures: AtomicU64,
    pub compressed_bytes: AtomicU64,
    pub ahead_started: AtomicU64,
    pub ahead_used: AtomicU64,
}

pub struct PullingFs {
    inner: Arc<dyn RemoteFs>,
    client: registry::Client,
    cfg: Config,
    staging: PathBuf,
    /// By image manifest digest (the manifest itself comes from the
    /// client's memory of recent answers, shared with `inner`).
    images: Mutex<HashMap<String, (Instant, Arc<ImageFacts>)>>,
    /// By layer digest and diff ID: a job checks the diff ID its image's
    /// config states, so only a Prepare expecting the same may take it.
    ahead: Mutex<HashMap<String, (Instant, AheadJob)>>,
    ahead_slots: Arc<tokio::sync::Semaphore>,
    seq: AtomicU64,
    stats: Arc<Stats>,
}

fn first<'a>(labels: &'a Labels, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| labels.get(*k))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

impl PullingFs {
    /// Wraps `inner`; staging directories live in `root/fallback-pull`
    /// (emptied here: no pull survives a restart). `client`: best the one
    /// `inner` uses, so the manifest is fetched once for both.
    pub fn new(
        inner: Arc<dyn RemoteFs>,
        client: registry::Client,
        cfg: Config,
        root: &Path,
    ) -> Result<PullingFs, Error> {
        let staging = root.join("fallback-pull");
        let io = |source| Error::Staging {
            path: staging.clone(),
            source,
        };
        match std::fs::remove_dir_all(&staging) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        std::fs::create_dir_all(&staging).map_err(io)?;
        Ok(PullingFs {
            inner,
            client,
            ahead_slots: Arc::new(tokio::sync::Semaphore::new(cfg.parallel_layers.max(1))),
            cfg,
            staging,
            images: Mutex::new(HashMap::new()),
            ahead: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            stats: Arc::new(Stats::default()),
        })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    fn fetch(&self) -> Fetch {
        Fetch {
            request_bytes: self.cfg.request_bytes.max(64 << 10),
            concurrency: self.cfg.concurrency.max(1),
        }
    }

    /// The image's layers; `layer` must be among them (else the manifest
    /// remembered may be of where the tag pointed before: fetched again).
    async fn facts(&self, image: &Reference, layer: &str) -> Result<Arc<ImageFacts>, Error> {
        let key = image.to_string();
        let err = |source| Error::Image {
            image: key.clone(),
            source,
        };
        let mut m = self
            .client
            .fetch_manifest_recent(image, FACTS_TTL)
            .await
            .map_err(err)?;
        if !m
            .manifest
            .layers()
            .iter()
            .any(|l| l.digest().as_ref() == layer)
        {
            self.client.forget_manifest(image);
            m = self
                .client
                .fetch_manifest_recent(image, FACTS_TTL)
                .await
                .map_err(err)?;
        }
        let id = m.resolved.digest.clone();
        if let Some((t, f)) = self.images.lock().get(&id) {
            if t.elapsed() < FACTS_TTL {
                return Ok(f.clone());
            }
        }
        let (_, config) = self
            .client
            .fetch_config(image, m.manifest.config().digest().as_ref())
            .await
            .map_err(err)?;
        let diff_ids = config.rootfs().diff_ids();
        let layers = m
            .manifest
            .layers()
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    l.digest().to_string(),
                    l.size(),
                    l.media_type().to_string(),
                    diff_ids.get(i).cloned(),
                )
            })
            .collect();
        let f = Arc::new(ImageFacts { layers });
        let mut images = self.images.lock();
        images.retain(|_, (t, _)| t.elapsed() < FACTS_TTL);
        images.insert(id, (Instant::now(), f.clone()));
        Ok(f)
    }

    fn spec(image: &str, facts: &ImageFacts, i: usize) -> Result<Option<LayerSpec>, Error> {
        let (digest, size, mt, diff_id) = &facts.layers[i];
        let Some(compression) = Compression::of_media_type(mt) else {
            return Ok(None);
        };
        let diff_id = diff_id.clone().ok_or_else(|| Error::NoDiffId {
            image: image.to_string(),
            index: i,
        })?;
        Ok(Some(LayerSpec {
            digest: digest.clone(),
            size: *size,
            diff_id,
            compression,
        }))
    }

    async fn pull(
        client: &registry::Client,
        image: &Reference,
        spec: &LayerSpec,
        fetch: Fetch,
        dir: &Path,
    ) -> Result<Pulled, Error> {
        let reader = client
            .blob_reader(image, &spec.digest, Some(spec.size))
            .await
            .map_err(|source| Error::Fetch {
                layer: spec.digest.clone(),
                source,
            })?;
        pull_into(Arc::new(reader), spec, fetch, dir).await
    }

    /// Starts pulling the layers above `current` that no job pulls yet and
    /// that `inner` would not mount lazily (a TOC, a seekable index).
    async fn start_ahead(&self, image: &Reference, facts: &ImageFacts, current: usize) {
        if self.cfg.parallel_layers == 0 {
            return;
        }
        let name = image.to_string();
        let mut wanted = Vec::new();
        for i in current + 1..facts.layers.len() {
            // Answered from what the registry said moments ago.
            if !self.inner.can_mount(&name, &facts.layers[i].0).await {
                wanted.push(i);
            }
        }
        let mut jobs = self.ahead.lock();
        // Unclaimed for long: the Prepare went elsewhere; drop the result.
        jobs.retain(|_, (t, h)| {
            if t.elapsed() < KEEP {
                return true;
            }
            h.abort();
            false
        });
        for i in wanted {
            let Ok(Some(spec)) = Self::spec(&name, facts, i) else {
                continue;
            };
            let key = ahead_key(&spec.digest, &spec.diff_id);
            if jobs.contains_key(&key) {
                continue;
            }
            let digest = &spec.digest;
            let n = self.seq.fetch_add(1, Ordering::Relaxed);
            let dir = self
                .staging
                .join(format!("{}-{n}", digest.trim_start_matches("sha256:")));
            let (client, image, fetch) = (self.client.clone(), image.clone(), self.fetch());
            let (slots, stats) = (self.ahead_slots.clone(), self.stats.clone());
            stats.ahead_started.fetch_add(1, Ordering::Relaxed);
            let job = tokio::spawn(async move {
                let _slot = slots.acquire_owned().await;
                std::fs::create_dir(&dir).map_err(|source| Error::Staging {
                    path: dir.clone(),
                    source,
                })?;
                let mut guard = RemoveOnDrop(Some(dir.clone()));
                let pulled = Self::pull(&client, &image, &spec, fetch, &dir).await?;
                guard.0 = None;
                Ok::<_, Error>((dir, pulled))
            });
            jobs.insert(key, (Instant::now(), job));
        }
    }

    async fn unpack_layer(
        &self,
        dir: &Path,
        lowers: &[PathBuf],
        labels: &Labels,
    ) -> Result<Unpack, Error> {
        let image = first(labels, &REF_KEYS).ok_or(Error::NoImageRef)?;
        let digest = first(labels, &DIGEST_KEYS).ok_or(Error::NoLayerDigest)?;
        let image = Reference::parse(image).map_err(Error::Reference)?;
        let started = Instant::now();
        let facts = self.facts(&image, digest).await?;
        let i = facts
            .layers
            .iter()
            .position(|l| l.0 == digest)
            .ok_or_else(|| Error::NotInManifest {
                image: image.to_string(),
                layer: digest.to_string(),
            })?;
        let Some(spec) = Self::spec(&image.to_string(), &facts, i)? else {
            info!(layer = %digest, media_type = %facts.layers[i].2, "layer type not unpacked here; containerd pulls it");
            return Ok(Unpack::Declined);
        };
        let claimed = self
            .ahead
            .lock()
            .remove(&ahead_key(&spec.digest, &spec.diff_id));
        let pulled = if let Some((_, job)) = claimed {
            let (staged, pulled) = match job.await {
                Ok(r) => r?,
                Err(source) => {
                    return Err(Error::Task {
                        what: "pull ahead",
                        source,
                    })
                }
            };
            let moved = std::fs::rename(&staged, dir);
            if let Err(source) = moved {
                let _ = std::fs::remove_dir_all(&staged);
                return Err(Error::Staging {
                    path: staged,
                    source,
                });
            }
            self.stats.ahead_used.fetch_add(1, Ordering::Relaxed);
            pulled
        } else {
            self.start_ahead(&image, &facts, i).await;
            Self::pull(&self.client, &image, &spec, self.fetch(), dir).await?
        };
        // Only now are the layers below all there (one pulled ahead ran
        // beside them).
        let (root, implicit, lowers) = (
            dir.to_path_buf(),
            pulled.written.implicit.clone(),
            lowers.to_vec(),
        );
        tokio::task::spawn_blocking(move || adopt_lower_attrs(&root, &implicit, &lowers))
            .await
            .map_err(|source| Error::Task {
                what: "lower attributes",
                source,
            })?
            .map_err(|source| Error::Unpack {
                layer: digest.to_string(),
                source,
            })?;
        self.stats.layers.fetch_add(1, Ordering::Relaxed);
        self.stats
            .compressed_bytes
            .fetch_add(pulled.compressed, Ordering::Relaxed);
        info!(
            layer = %digest,
            compressed = pulled.compressed,
            uncompressed = pulled.uncompressed,
            entries = pulled.written.entries,
            elapsed = ?started.elapsed(),
            "layer pulled and unpacked (digest and diff ID verified)"
        );
        Ok(Unpack::Done)
    }
}

fn ahead_key(digest: &str, diff_id: &str) -> String {
    format!("{digest} {diff_id}")
}

/// Removes a staging directory a failed or aborted pull leaves.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

#[async_trait]
impl RemoteFs for PullingFs {
    async fn mount(&self, mountpoint: &Path, labels: &Labels) -> Result<(), RemoteFsError> {
        self.inner.mount(mountpoint, labels).await
    }

    async fn check(&self, mountpoint: &Path, labels: &Labels) -> Result<(), RemoteFsError> {
        self.inner.check(mountpoint, labels).await
    }

    async fn unmount(&self, mountpoint: &Path) -> Result<(), RemoteFsError> {
        self.inner.unmount(mountpoint).await
    }

    async fn kept_mounts(&self) -> Vec<PathBuf> {
        self.inner.kept_mounts().await
    }

    async fn can_mount(&self, image: &str, layer: &str) -> bool {
        self.inner.can_mount(image, layer).await
    }

    async fn unpack(
        &self,
        dir: &Path,
        lowers: &[PathBuf],
        labels: &Labels,
    ) -> Result<Unpack, RemoteFsError> {
        if !self.cfg.enable {
            return self.inner.unpack(dir, lowers, labels).await;
        }
        match self.unpack_layer(dir, lowers, labels).await {
            Ok(u) => Ok(u),
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                warn!(error = %crate::error::chain(&e), "pulling the layer ourselves failed");
                Err(e.into())
            }
        }
    }
}
