//! [`StargzFs`]: the `RemoteFs` the daemon hands the snapshotter. Opens the
//! layer a Prepare's labels name (reusing one opened ahead), starts its prefetch,
//! mounts it with lazyfs and keeps the mount handle until unmount.

use crate::config::Config;
use crate::error::Error;
use crate::gzlayer::GzLookup;
use crate::handover::Handover;
use crate::open::{first, LayerFacts, Opener};
use crate::preopen::{self, Preopened};
use crate::toc_store::TocStore;
use async_trait::async_trait;
use lazyfs::{ChunkCache, LazyLayer, MountHandle, Scheduler};
use registry::Reference;
use snapshot_labels::annotations::TOC_DIGEST;
use snapshot_labels::labels::{DIGEST_KEYS, REF_KEYS};
use snapshotter::{Labels, RemoteFs, RemoteFsError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::runtime::Handle;
use tracing::{debug, info, warn};

pub struct StargzFs {
    pub(crate) opener: Opener,
    preopened: Arc<Preopened>,
    pub(crate) mounts: tokio::sync::Mutex<HashMap<PathBuf, MountHandle>>,
    /// Mounts outliving this process (`handover`); `None`: not configured.
    pub(crate) handover: Option<Arc<Handover>>,
    /// Layers mounted without verification (`allow_no_verification`).
    pub(crate) unverified_mounted: std::sync::atomic::AtomicU64,
    /// Profiles of real runs (`[profile] record`); `None`: off.
    recorder: Option<Arc<crate::profile::Recorder>>,
}

impl StargzFs {
    /// Builds the filesystem; call inside the tokio runtime that is to run
    /// its fetches. Clears dead FUSE mounts a previous process left under
    /// `cfg.root`.
    pub fn new(cfg: &Config) -> Result<StargzFs, Error> {
        let lcfg = cfg.layer();
        let handover = cfg.fd_holder.clone().map(|argv| {
            let h = Handover::new(&cfg.root, argv);
            h.collect(&cfg.root.join("fuse-inflight"));
            Arc::new(h)
        });
        // FUSE mounts of a daemon that died are dead ("transport endpoint is
        // not connected"); clear them before the snapshotter restores its
        // layers. Handed-over ones are alive but not served until adopted:
        // `adopt_inherited` clears the rest after adopting them.
        if handover
            .as_ref()
            .is_none_or(|h| h.inherited_paths().is_empty())
        {
            for dead in lazyfs::cleanup_dead_mounts(&cfg.root).unwrap_or_default() {
                info!(mount = %dead.display(), "cleaned a dead mount from a previous run");
            }
        }
        let cache = Arc::new(ChunkCache::new(&lcfg.cache_config()).map_err(Error::Cache)?);
        // One scheduler for every layer: in-flight chunks, priorities and
        // limits are decided across layers.
        let sched = Scheduler::new(cache, &lcfg);
        let client = registry::Client::new(cfg.client()).map_err(Error::Client)?;
        Ok(StargzFs {
            opener: Opener {
                gz: GzLookup::new(
                    client.clone(),
                    cfg.gzindex_dir.clone(),
                    cfg.gzindex_registry,
                ),
                client,
                cfg: lcfg,
                sched,
                rt: Handle::current(),
                tocs: Arc::new(TocStore::new(&cfg.root)),
            },
            preopened: Arc::new(Preopened::default()),
            mounts: tokio::sync::Mutex::new(HashMap::new()),
            handover,
            unverified_mounted: Default::default(),
            recorder: cfg
                .profile
                .clone()
                .map(|p| crate::profile::Recorder::new(&cfg.root, p, Handle::current())),
        })
    }

    /// The registry client layers are opened with (its connections, tokens
    /// and memory of recent manifests are shared with its clones).
    pub fn client(&self) -> registry::Client {
        self.opener.client.clone()
    }

    pub(crate) async fn open_layer(&self, labels: &Labels) -> Result<Arc<LazyLayer>, Error> {
        let image = first(labels, &REF_KEYS).ok_or(Error::NoImageRef)?;
        let digest = first(labels, &DIGEST_KEYS).ok_or(Error::NoLayerDigest)?;
        let image = Reference::parse(image).map_err(Error::Reference)?;
        // The manifest, when the labels lack the TOC digest; opening the
        // other layers ahead reuses it rather than fetching it again.
        let mut facts = None;
        // A TOC digest kept with a verified TOC spares the manifest (and
        // the registry, when it is down).
        let kept = || self.opener.tocs.toc_digest(digest);
        let toc = match labels.get(TOC_DIGEST).cloned().or_else(kept) {
            Some(t) => Some(t),
            None => {
                let f = self.opener.layer_facts(&image, Some(digest)).await?;
                let own = f.get(digest).and_then(|(_, t)| t.clone());
                facts = Some(f);
                own
            }
        };
        let Some(toc) = toc else {
            // No TOC: a plain gzip layer, lazy only through a seekable index;
            // or legacy stargz, lazy only if the operator allows unverified layers.
            // The other layers' indexes are looked up meanwhile.
            self.preopen_others(&image, digest, labels, facts);
            if let Some(layer) = self.preopened.take(digest, preopen::GZINDEX).await {
                debug!(layer = %digest, "using the indexed layer opened ahead");
                return Ok(layer);
            }
            if let Some(layer) = self.opener.open_gz_indexed(&image, digest).await? {
                return Ok(layer);
            }
            if !self.opener.cfg.allow_no_verification {
                return Err(Error::NoTocDigest {
                    layer: digest.to_string(),
                });
            }
            return self.opener.open_unverified(&image, digest).await;
        };
        // A TOC kept on disk opens at once: never wait behind an opening
        // ahead (a manifest fetch) that an unreachable registry stalls.
        if let Some(layer) = self.opener.open_kept(&image, digest, &toc).await {
            return Ok(layer);
        }
        self.preopen_others(&image, digest, labels, facts);
        if let Some(layer) = self.preopened.take(digest, &toc).await {
            debug!(layer = %digest, "using the layer opened ahead");
            return Ok(layer);
        }
        self.opener
            .clone()
            .open(image, digest.to_string(), toc)
            .await
    }

    /// Start opening the other layers the labels list (TOC digests from
    /// the manifest), once per image and minute.
    fn preopen_others(
        &self,
        image: &Reference,
        current: &str,
        labels: &Labels,
        facts: Option<LayerFacts>,
    ) {
        let listed = preopen::listed_layers(labels);
        if listed.len() < 2 || !self.preopened.claim_image(&image.to_string()) {
            return;
        }
        self.preopened
            .start(&self.opener, image, current, listed, facts);
    }

    pub(crate) async fn mount_layer(
        &self,
        mountpoint: &Path,
        labels: &Labels,
    ) -> Result<(), Error> {
        // Served already (handed over from the previous process)?
        if self.serve_inherited(mountpoint, labels).await? {
            return Ok(());
        }
        let layer = self.open_layer(labels).await?;
        if layer.blob_check() != lazyfs::BlobCheck::NotNeeded {
            self.unverified_mounted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            warn!(layer = %layer.digest(), mount = %mountpoint.display(),
                "layer mounted WITHOUT verification (allow_no_verification): no TOC digest or no chunk digests; \
                 the whole blob is checked against the layer digest once every chunk was fetched");
        }
        if let (Some(rec), Some(image)) = (&self.recorder, first(labels, &REF_KEYS)) {
            rec.attach(&layer, image, preopen::listed_layers(labels));
        }
        // The prioritized files are fetched while the mount goes on; reads
        // of them join that request.
        layer.start_prefetch();
        // A dead FUSE mount left here by a crashed daemon would make the new mount fail.
        if let Some(parent) = mountpoint.parent() {
            let _ = lazyfs::cleanup_dead_mounts(parent);
        }
        let mp = mountpoint.to_path_buf();
        let l = layer.clone();
        let handle = tokio::task::spawn_blocking(move || lazyfs::mount(l, &mp))
            .await
            .map_err(|source| Error::Task {
                what: "mount",
                path: mountpoint.to_path_buf(),
                source,
            })?
            .map_err(|source| Error::Mount {
                path: mountpoint.to_path_buf(),
                source: Box::new(source),
            })?;
        layer.start_background_fetch();
        info!(layer = %layer.digest(), mount = %mountpoint.display(), "remote layer mounted");
        self.mounts
            .lock()
            .await
            .insert(mountpoint.to_path_buf(), handle);
        self.keep_across_restarts(mountpoint, labels).await;
        Ok(())
    }

    async fn check_mount(&self, mountpoint: &Path) -> Result<(), Error> {
        let path = mountpoint.to_path_buf();
        match self.mounts.lock().await.get(mountpoint) {
            Some(h) if h.is_alive() => Ok(()),
            Some(_) => Err(Error::NotServed { path }),
            None => Err(Error::NotMounted { path }),
        }
    }

    async fn unmount_layer(&self, mountpoint: &Path) -> Result<(), Error> {
        let handle = self.mounts.lock().await.remove(mountpoint);
        if let Some(h) = &self.handover {
            // Unmounted below either way; the holder's fd must not keep it.
            let (h, mp) = (h.clone(), mountpoint.to_path_buf());
            let _ = tokio::task::spawn_blocking(move || h.forget(&mp)).await;
        }
        let mp = mountpoint.to_path_buf();
        tokio::task::spawn_blocking(move || match handle {
            Some(h) => h.unmount().map_err(|source| Error::Unmount {
                path: mp,
                source: Box::new(source),
            }),
            // Not ours (left from before a restart): a dead FUSE mount is
            // cleared; whatever else is there the snapshotter detaches, as
            // it owns the directory.
            None => {
                let _ = lazyfs::cleanup_dead_mounts(&mp);
                Ok(())
            }
        })
        .await
        .map_err(|source| Error::Task {
            what: "unmount",
            path: mountpoint.to_path_buf(),
            source,
        })?
    }
}

#[async_trait]
impl RemoteFs for StargzFs {
    async fn mount(&self, mountpoint: &Path, labels: &Labels) -> Result<(), RemoteFsError> {
        Ok(self.mount_layer(mountpoint, labels).await?)
    }

    async fn check(&self, mountpoint: &Path, _labels: &Labels) -> Result<(), RemoteFsError> {
        Ok(self.check_mount(mountpoint).await?)
    }

    async fn unmount(&self, mountpoint: &Path) -> Result<(), RemoteFsError> {
        Ok(self.unmount_layer(mountpoint).await?)
    }

    async fn kept_mounts(&self) -> Vec<PathBuf> {
        self.served_or_inherited().await
    }

    async fn can_mount(&self, image: &str, layer: &str) -> bool {
        let Ok(image) = Reference::parse(image) else {
            return false;
        };
        let toc = match self.opener.layer_facts(&image, Some(layer)).await {
            Ok(f) => f.get(layer).is_some_and(|(_, t)| t.is_some()),
            Err(_) => return false,
        };
        toc || self.opener.gz.has_index(&image, layer).await
    }
}
