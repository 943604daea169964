//! The seam where the daemon chooses its [`RemoteFs`]: the only place that
//! knows remote snapshots are eStargz layers served by `lazyfs` from a
//! registry through the `registry` client.

use crate::config::Config;
use async_trait::async_trait;
use lazyfs::{ChunkCache, LazyLayer, MountHandle};
use registry::{ErrorKind, Reference};
use snapshotter::{Labels, RemoteFs, RemoteFsError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

use crate::preopen::{self, Preopened};
use futures::FutureExt;

use estargz::toc::TOC_DIGEST_ANNOTATION as TOC_DIGEST;
use snapshotter::remote::labels::{DIGEST_KEYS, REF_KEYS};

/// Builds the remote filesystem from the config; `root` is the daemon's
/// state directory (the chunk cache lives under it).
pub fn build_remote_fs(cfg: &Config, root: &Path) -> anyhow::Result<Arc<dyn RemoteFs>> {
    let lcfg = lazy_config(cfg, root);
    // FUSE mounts of a daemon that died are dead ("transport endpoint is not
    // connected"); clear them before the snapshotter restores its layers.
    for dead in lazyfs::cleanup_dead_mounts(root).unwrap_or_default() {
        info!(mount = %dead.display(), "cleaned a dead mount from a previous run");
    }
    let cache = Arc::new(ChunkCache::new(&lcfg.cache_config())?);
    let mut ccfg = registry::ClientConfig::default();
    if let Some(resolver) = &cfg.resolver {
        ccfg.hosts = resolver
            .clone()
            .try_into()
            .map_err(|e| anyhow::anyhow!("[resolver]: {e}"))?;
    }
    if let Some(r) = cfg.blob.max_retries {
        ccfg.retries = r;
    }
    // stargz's first backoff; the registry client doubles it per retry.
    if let Some(ms) = cfg.blob.min_wait_msec {
        ccfg.retry_base = std::time::Duration::from_millis(ms);
    }
    // Nothing may wait on one request longer than a read may wait in all:
    // a registry that accepts and never answers must not hold a mount (or
    // a containerd call) for the 30 s default per attempt.
    if let Some(t) = cfg.blob.fetching_timeout_sec {
        let t = std::time::Duration::from_secs(t.max(1));
        ccfg.request_timeout = ccfg.request_timeout.min(t);
        ccfg.stall_timeout = ccfg.stall_timeout.min(t);
    }
    if let Some(n) = cfg.max_concurrency {
        ccfg.max_concurrency = (n as usize).max(1) * 4;
    }
    let client = registry::Client::new(ccfg)?;
    Ok(Arc::new(LazyRemoteFs {
        opener: Opener {
            client,
            cfg: lcfg,
            cache,
            rt: Handle::current(),
        },
        preopened: Arc::new(Preopened::default()),
        mounts: tokio::sync::Mutex::new(HashMap::new()),
    }))
}

fn lazy_config(cfg: &Config, root: &Path) -> lazyfs::Config {
    let mut l = lazyfs::Config {
        noprefetch: cfg.noprefetch,
        no_background_fetch: cfg.no_background_fetch,
        cache_dir: Some(root.join("cache")),
        // The daemon has the disk tier and the kernel's page cache holds
        // what containers read, so a small memory tier only saves a disk
        // read of hot chunks: 16 MiB took its RSS after the python
        // benchmark's run from 88 to 54 MiB at the same speed.
        memory_cache_bytes: 16 << 20,
        ..lazyfs::Config::default()
    };
    if let Some(t) = cfg.prefetch_timeout_sec {
        l.prefetch_timeout_sec = t;
    }
    if let Some(n) = cfg.max_concurrency {
        l.max_concurrency = (n as usize).max(1);
    }
    if let Some(t) = cfg.blob.fetching_timeout_sec {
        l.fetch_timeout_sec = t;
    }
    if let Some(m) = cfg.cache.max_size {
        l.cache_max_bytes = m;
    }
    l
}

/// What opening a layer needs; cheap to clone into a spawned task.
#[derive(Clone)]
struct Opener {
    client: registry::Client,
    cfg: lazyfs::Config,
    cache: Arc<ChunkCache>,
    rt: Handle,
}

struct LazyRemoteFs {
    opener: Opener,
    preopened: Arc<Preopened>,
    mounts: tokio::sync::Mutex<HashMap<PathBuf, MountHandle>>,
}

fn first<'a>(labels: &'a Labels, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| labels.get(*k))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn registry_err(e: registry::Error) -> RemoteFsError {
    match e.kind() {
        ErrorKind::Unreachable | ErrorKind::Unauthorized => {
            RemoteFsError::Unavailable(e.to_string())
        }
        _ => RemoteFsError::NotRemote(e.to_string()),
    }
}

impl Opener {
    /// Size and TOC digest of every layer of the image manifest, for
    /// callers (CRI, containerd's unpacker without annotations) that did not
    /// pass them, and for pre-opening the other layers.
    async fn layer_facts(
        &self,
        image: &Reference,
    ) -> Result<HashMap<String, (u64, Option<String>)>, RemoteFsError> {
        let m = self
            .client
            .fetch_manifest(image)
            .await
            .map_err(registry_err)?;
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

    async fn open(
        self,
        image: Reference,
        digest: String,
        size: Option<u64>,
        toc: String,
    ) -> Result<Arc<LazyLayer>, RemoteFsError> {
        let reader = self
            .client
            .blob_reader(&image, &digest, size)
            .await
            .map_err(registry_err)?;
        LazyLayer::open(
            Arc::new(reader),
            &digest,
            Some(&toc),
            &self.cfg,
            self.cache.clone(),
            self.rt.clone(),
        )
        .await
        .map_err(|e| {
            if e.is_unavailable() {
                RemoteFsError::Unavailable(e.to_string())
            } else {
                RemoteFsError::NotRemote(e.to_string())
            }
        })
    }
}

impl LazyRemoteFs {
    async fn open_layer(&self, labels: &Labels) -> Result<Arc<LazyLayer>, RemoteFsError> {
        let image = first(labels, &REF_KEYS)
            .ok_or_else(|| RemoteFsError::NotRemote("no image reference label".into()))?;
        let digest = first(labels, &DIGEST_KEYS)
            .ok_or_else(|| RemoteFsError::NotRemote("no layer digest label".into()))?;
        let image = Reference::parse(image).map_err(|e| RemoteFsError::NotRemote(e.to_string()))?;
        // The manifest, when the labels lack the TOC digest; opening the
        // other layers ahead reuses it rather than fetching it again.
        let mut facts = None;
        let (size, toc) = match labels.get(TOC_DIGEST) {
            Some(t) => (None, Some(t.clone())),
            None => {
                let f = self.opener.layer_facts(&image).await?;
                let own = f.get(digest).cloned();
                facts = Some(f);
                own.map_or((None, None), |(s, t)| (Some(s), t))
            }
        };
        // Without a TOC digest from the verified manifest the TOC cannot be
        // trusted, so the layer is not served lazily.
        let toc = toc.ok_or_else(|| {
            RemoteFsError::NotRemote(format!("layer {digest} has no {TOC_DIGEST}"))
        })?;
        self.preopen_others(&image, digest, labels, facts);
        if let Some(opening) = self.preopened.take(digest, &toc) {
            if let Some(layer) = opening.await {
                debug!(layer = %digest, "using the layer opened ahead");
                return Ok(layer);
            }
        }
        self.opener
            .clone()
            .open(image, digest.to_string(), size, toc)
            .await
    }

    /// Start opening the other layers the labels list (verified TOC digests
    /// from the manifest), once per image and minute.
    fn preopen_others(
        &self,
        image: &Reference,
        current: &str,
        labels: &Labels,
        facts: Option<HashMap<String, (u64, Option<String>)>>,
    ) {
        let listed = preopen::listed_layers(labels);
        if listed.len() < 2 || !self.preopened.claim_image(&image.to_string()) {
            return;
        }
        let (opener, pre, image, current) = (
            self.opener.clone(),
            self.preopened.clone(),
            image.clone(),
            current.to_string(),
        );
        self.opener.rt.spawn(async move {
            let facts = match facts {
                Some(f) => f,
                None => match opener.layer_facts(&image).await {
                    Ok(f) => f,
                    Err(e) => {
                        debug!(image = %image, error = %e, "not opening layers ahead");
                        return;
                    }
                },
            };
            for d in listed.iter().filter(|d| **d != current) {
                let Some((size, Some(toc))) = facts.get(d).cloned() else {
                    continue;
                };
                if pre.contains(d, &toc) {
                    continue;
                }
                let open = opener
                    .clone()
                    .open(image.clone(), d.clone(), Some(size), toc.clone());
                let task = opener.rt.spawn(open);
                pre.insert(
                    d,
                    &toc,
                    async move { task.await.ok().and_then(Result::ok) }.boxed(),
                );
            }
        });
    }
}

#[async_trait]
impl RemoteFs for LazyRemoteFs {
    async fn mount(&self, mountpoint: &Path, labels: &Labels) -> Result<(), RemoteFsError> {
        let layer = self.open_layer(labels).await?;
        if let Err(e) = layer.prefetch().await {
            // The layer still works without its prefetch; reads fetch on demand.
            warn!(layer = %layer.digest(), error = %e, "prefetch incomplete");
        }
        // A dead FUSE mount left here by a crashed daemon would make the new mount fail.
        if let Some(parent) = mountpoint.parent() {
            let _ = lazyfs::cleanup_dead_mounts(parent);
        }
        let mp = mountpoint.to_path_buf();
        let l = layer.clone();
        let handle = tokio::task::spawn_blocking(move || lazyfs::mount(l, &mp))
            .await
            .map_err(|e| RemoteFsError::Other(e.to_string()))?
            .map_err(|e| RemoteFsError::Other(e.to_string()))?;
        layer.start_background_fetch();
        info!(layer = %layer.digest(), mount = %mountpoint.display(), "remote layer mounted");
        self.mounts
            .lock()
            .await
            .insert(mountpoint.to_path_buf(), handle);
        Ok(())
    }

    async fn check(&self, mountpoint: &Path, _labels: &Labels) -> Result<(), RemoteFsError> {
        match self.mounts.lock().await.get(mountpoint) {
            Some(h) if h.is_alive() => Ok(()),
            Some(_) => Err(RemoteFsError::Unavailable(format!(
                "{} is no longer served",
                mountpoint.display()
            ))),
            None => Err(RemoteFsError::Unavailable(format!(
                "{} is not mounted",
                mountpoint.display()
            ))),
        }
    }

    async fn unmount(&self, mountpoint: &Path) -> Result<(), RemoteFsError> {
        let handle = self.mounts.lock().await.remove(mountpoint);
        let mp = mountpoint.to_path_buf();
        tokio::task::spawn_blocking(move || match handle {
            Some(h) => h.unmount().map_err(|e| RemoteFsError::Other(e.to_string())),
            // Not ours (left from before a restart): detach it if it is mounted at all.
            None if lazyfs::is_fuse_mounted(&mp) => {
                rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH)
                    .map_err(|e| RemoteFsError::Other(e.to_string()))
            }
            None => Ok(()),
        })
        .await
        .map_err(|e| RemoteFsError::Other(e.to_string()))?
    }
}
