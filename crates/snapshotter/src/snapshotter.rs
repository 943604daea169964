//! The snapshotter containerd talks to: local semantics from [`Core`] plus
//! the remote-snapshot protocol over a [`RemoteFs`].
//!
//! Remote protocol (containerd's, as stargz-snapshotter speaks it):
//! - `prepare` with a target ref and image-fact labels creates an active
//!   snapshot, asks the `RemoteFs` to mount the layer on its fs dir and, on
//!   success, commits it under the target name with the remote marker label
//!   ([`Prepared::Mounted`]; the gRPC face answers `AlreadyExists`, which
//!   tells containerd to skip unpacking); on failure it logs, counts and
//!   falls back to the ordinary active snapshot.
//! - `prepare`, `view` and `mounts` first make sure every remote layer under
//!   the snapshot is served (check; if broken unmount + mount again).
//! - `open` restores remote layers from metadata; a layer that cannot be
//!   mounted then is marked and mounted again on first use.
//!
//! Per-layer state lives behind an async mutex so that checks, refreshes
//! and removal of one layer never run at the same time.

use crate::core::Core;
use crate::error::{Error, Result};
use crate::filter::Filters;
use crate::layout;
use crate::metrics::{inc, Metrics};
use crate::remote::{self, FallbackReason, RemoteFs};
use crate::store::{Record, RemoteRecord};
use crate::types::{Info, Kind, Labels, Mount, Prepared, Usage};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, Clone)]
enum LayerState {
    Mounted,
    /// Not mounted (restore failed, refresh failed, unmounted at exit):
    /// the next use tries to mount it.
    NeedsMount(String),
}

type StateCell = Arc<tokio::sync::Mutex<LayerState>>;

/// What trying to mount a Prepare's layer remotely came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RemoteOutcome {
    /// Mounted and committed as the target.
    Mounted,
    /// Not mounted; the ordinary active snapshot stays.
    FellBack(FallbackReason),
    /// Mounted, but a concurrent Prepare committed the target first.
    AlreadyThere,
}

/// Longest time `open` spends restoring remote layers before it returns.
const RESTORE_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Snapshotter {
    core: Arc<Core>,
    remote: Arc<dyn RemoteFs>,
    metrics: Arc<Metrics>,
    layers: parking_lot::Mutex<HashMap<u64, StateCell>>,
    /// Mounts the RemoteFs took over from a previous process: never
    /// detached while restoring them.
    kept: parking_lot::Mutex<std::collections::HashSet<std::path::PathBuf>>,
}

impl Snapshotter {
    /// Opens (or creates) the state under `root`, removes what a crash left
    /// behind and restores remote layers. A layer that cannot be mounted now
    /// does not fail the open.
    pub async fn open(root: &Path, remote: Arc<dyn RemoteFs>) -> Result<Snapshotter> {
        let root = root.to_path_buf();
        let kept = remote.kept_mounts().await;
        let keep = kept.clone();
        let core = Arc::new(
            tokio::task::spawn_blocking(move || -> Result<Core> {
                let core = Core::open(&root)?;
                // Mounts left by a previous process are dead (FUSE) or
                // stale; every remote layer is mounted afresh below, except
                // those the RemoteFs serves already (handed over).
                layout::detach_mounts_under_except(&core.layout().snapshots(), &keep)?;
                for p in core.cleanup(true)? {
                    tracing::info!(path = %p.display(), "removed orphan snapshot directory");
                }
                Ok(core)
            })
            .await
            .map_err(join_err)??,
        );
        let s = Snapshotter {
            core,
            remote,
            metrics: Arc::new(Metrics::default()),
            layers: Default::default(),
            kept: parking_lot::Mutex::new(kept.into_iter().collect()),
        };
        let remote: Vec<_> = s
            .run(|c| c.all())
            .await?
            .into_iter()
            .filter(|(_, rec)| rec.remote.is_some())
            .collect();
        for (_, rec) in &remote {
            s.cell(rec.id, LayerState::NeedsMount("restoring".into()));
        }
        // A registry that accepts connections and never answers would hold
        // the socket back for retries x request timeout per layer; what is
        // not restored within the budget is mounted on first use instead.
        let restore = async {
            for (name, rec) in &remote {
                if let Err(e) = s.ensure_layer(name, rec).await {
                    tracing::warn!(snapshot = %name, error = %e, "remote layer not restored; will retry on use");
                }
            }
        };
        if tokio::time::timeout(RESTORE_BUDGET, restore).await.is_err() {
            tracing::warn!(budget = ?RESTORE_BUDGET, "restoring remote layers takes too long; the rest are mounted on first use");
        }
        Ok(s)
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn root(&self) -> &Path {
        self.core.layout().root()
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Core) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let core = self.core.clone();
        tokio::task::spawn_blocking(move || f(&core))
            .await
            .map_err(join_err)?
    }

    fn cell(&self, id: u64, init: LayerState) -> StateCell {
        self.layers
            .lock()
            .entry(id)
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(init)))
            .clone()
    }

    pub async fn prepare(&self, key: &str, parent: &str, labels: &Labels) -> Result<Prepared> {
        self.ensure_chain_of(parent).await?;
        if let Some(target) = remote::is_remote_request(labels) {
            if self
                .run({
                    let t = target.to_string();
                    move |c| c.stat(&t)
                })
                .await
                .is_ok()
            {
                return Ok(Prepared::AlreadyThere {
                    target: target.to_string(),
                });
            }
        }
        let rec = self.create(Kind::Active, key, parent, labels).await?;
        if let Some(target) = remote::is_remote_request(labels) {
            match self.try_remote(key, target, &rec, labels).await {
                RemoteOutcome::Mounted => {
                    return Ok(Prepared::Mounted {
                        target: target.to_string(),
                    })
                }
                RemoteOutcome::AlreadyThere => {
                    return Ok(Prepared::AlreadyThere {
                        target: target.to_string(),
                    })
                }
                // Unreachable now: a pull of our own would fail the same way.
                RemoteOutcome::FellBack(FallbackReason::Unavailable) => {}
                RemoteOutcome::FellBack(_) => {
                    match self.try_unpack(key, target, &rec, labels).await {
                        RemoteOutcome::Mounted => {
                            return Ok(Prepared::Mounted {
                                target: target.to_string(),
                            })
                        }
                        RemoteOutcome::AlreadyThere => {
                            return Ok(Prepared::AlreadyThere {
                                target: target.to_string(),
                            })
                        }
                        RemoteOutcome::FellBack(_) => {}
                    }
                }
            }
        }
        self.mounts(key).await.map(Prepared::Active)
    }

    /// A layer that cannot be mounted lazily, pulled and unpacked by the
    /// `RemoteFs` itself (`RemoteFs::unpack`) into a directory beside the
    /// snapshot's `fs`, which takes its place once the layer is verified;
    /// then committed as `target` like a mounted layer, so containerd skips
    /// its own fetch and apply. On any failure `fs` is as it was (empty) and
    /// containerd applies the layer itself.
    async fn try_unpack(
        &self,
        key: &str,
        target: &str,
        rec: &Record,
        labels: &Labels,
    ) -> RemoteOutcome {
        let fs = self.core.layout().fs(rec.id);
        let staging = self.core.layout().dir(rec.id).join("unpack");
        if let Err(e) = std::fs::create_dir(&staging) {
            tracing::warn!(key, error = %e, "cannot make the unpack directory");
            return RemoteOutcome::FellBack(FallbackReason::Error);
        }
        let started = std::time::Instant::now();
        let k = key.to_string();
        let parents = self
            .run(move |c| {
                let rec = c.get(&k)?;
                c.parents(&rec)
            })
            .await;
        let lowers: Vec<std::path::PathBuf> = match parents {
            Ok(p) => p.iter().map(|(_, r)| self.core.layout().fs(r.id)).collect(),
            Err(e) => {
                tracing::warn!(key, error = %e, "cannot list the parent layers");
                let _ = layout::remove_tree(&staging);
                return RemoteOutcome::FellBack(FallbackReason::Error);
            }
        };
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            inc(&self.metrics.unpack_failures);
            tracing::warn!(key, target, error = %e, "{what}; containerd pulls the layer");
            let _ = layout::remove_tree(&staging);
            RemoteOutcome::FellBack(FallbackReason::Error)
        };
        match self.remote.unpack(&staging, &lowers, labels).await {
            Ok(remote::Unpack::Done) => {}
            Ok(remote::Unpack::Declined) => {
                let _ = layout::remove_tree(&staging);
                return RemoteOutcome::FellBack(FallbackReason::NotRemote);
            }
            Err(e) => return failed("pulling the layer ourselves failed", &e),
        }
        // `fs` is an empty directory: rename(2) replaces it.
        if let Err(e) = std::fs::rename(&staging, &fs) {
            return failed("moving the unpacked layer in place failed", &e);
        }
        let (t, k, l) = (target.to_string(), key.to_string(), labels.clone());
        match self.run(move |c| c.commit(&t, &k, &l, None)).await {
            Ok(_) => {
                inc(&self.metrics.unpacked);
                tracing::info!(key, target, elapsed = ?started.elapsed(), "layer pulled and unpacked by the snapshotter");
                RemoteOutcome::Mounted
            }
            Err(Error::AlreadyExists(_)) => {
                let k = key.to_string();
                let _ = self.run(move |c| c.remove(&k)).await;
                RemoteOutcome::AlreadyThere
            }
            Err(e) => {
                // The active snapshot now holds the layer; containerd's own
                // apply would write over it, so start it empty again.
                let _ = layout::remove_tree(&fs);
                let _ = std::fs::create_dir(&fs);
                failed("committing the unpacked layer failed", &e)
            }
        }
    }

    /// Mounts the layer on the new active snapshot and commits it as
    /// `target`. On a fallback the active snapshot `key` stays as it is.
    async fn try_remote(
        &self,
        key: &str,
        target: &str,
        rec: &Record,
        labels: &Labels,
    ) -> RemoteOutcome {
        let mp = self.core.layout().fs(rec.id);
        if let Err(e) = self.remote.mount(&mp, labels).await {
            let reason = e.fallback_reason();
            inc(match reason {
                FallbackReason::NotRemote => &self.metrics.fallback_not_remote,
                FallbackReason::Unavailable => &self.metrics.fallback_unavailable,
                FallbackReason::Error => &self.metrics.fallback_other,
            });
            tracing::info!(key, target, %reason, error = %e, "falling back to an ordinary snapshot");
            // Whatever half-mount the failure left must not hide the upper dir.
            let _ = layout::detach_mounts_under(&mp);
            return RemoteOutcome::FellBack(reason);
        }
        let mut committed = labels.clone();
        committed.insert(
            remote::LABEL_REMOTE.into(),
            remote::LABEL_REMOTE_VALUE.into(),
        );
        let remote_rec = RemoteRecord {
            mount_labels: labels.clone(),
        };
        let (t, k) = (target.to_string(), key.to_string());
        match self
            .run(move |c| c.commit(&t, &k, &committed, Some(remote_rec)))
            .await
        {
            Ok(_) => {
                *self.cell(rec.id, LayerState::Mounted).lock().await = LayerState::Mounted;
                inc(&self.metrics.remote_mounts);
                tracing::info!(key, target, "remote snapshot mounted");
                RemoteOutcome::Mounted
            }
            Err(e) => {
                let _ = self.remote.unmount(&mp).await;
                let _ = layout::detach_mounts_under(&mp);
                if let Error::AlreadyExists(_) = e {
                    // Someone committed the target meanwhile: ours is surplus.
                    let k = key.to_string();
                    let _ = self.run(move |c| c.remove(&k)).await;
                    return RemoteOutcome::AlreadyThere;
                }
                inc(&self.metrics.fallback_other);
                tracing::warn!(key, target, error = %e, "committing remote snapshot failed; falling back");
                RemoteOutcome::FellBack(FallbackReason::Error)
            }
        }
    }

    pub async fn view(&self, key: &str, parent: &str, labels: &Labels) -> Result<Vec<Mount>> {
        self.ensure_chain_of(parent).await?;
        self.create(Kind::View, key, parent, labels).await?;
        self.mounts(key).await
    }

    async fn create(&self, kind: Kind, key: &str, parent: &str, labels: &Labels) -> Result<Record> {
        let (k, p, l) = (key.to_string(), parent.to_string(), labels.clone());
        self.run(move |c| c.create(kind, &k, &p, &l)).await
    }

    pub async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let k = key.to_string();
        let (rec, parents) = self
            .run(move |c| {
                let rec = c.get(&k)?;
                let parents = c.parents(&rec)?;
                Ok((rec, parents))
            })
            .await?;
        for (name, p) in &parents {
            self.ensure_layer(name, p).await?;
        }
        self.core.mounts_for(key, &rec, &parents)
    }

    /// Makes sure every remote layer of `parent` and its ancestors is served.
    async fn ensure_chain_of(&self, parent: &str) -> Result<()> {
        if parent.is_empty() {
            return Ok(());
        }
        let p = parent.to_string();
        let chain = self
            .run(move |c| {
                // A missing parent is reported by create with its own code.
                let Ok(rec) = c.get(&p) else {
                    return Ok(Vec::new());
                };
                let mut chain = c.parents(&rec)?;
                chain.insert(0, (p, rec));
                Ok(chain)
            })
            .await?;
        for (name, rec) in &chain {
            self.ensure_layer(name, rec).await?;
        }
        Ok(())
    }

    /// Check a remote layer; refresh (unmount + mount) it if it is broken or
    /// was never mounted in this process.
    async fn ensure_layer(&self, name: &str, rec: &Record) -> Result<()> {
        let Some(remote) = &rec.remote else {
            return Ok(());
        };
        let mp = self.core.layout().fs(rec.id);
        let cell = self.cell(
            rec.id,
            LayerState::NeedsMount("not mounted by this process".into()),
        );
        let mut st = cell.lock().await;
        let restoring = match &*st {
            LayerState::Mounted => match self.remote.check(&mp, &remote.mount_labels).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    inc(&self.metrics.check_failures);
                    tracing::warn!(snapshot = name, error = %e, "remote layer check failed; refreshing");
                    let _ = self.remote.unmount(&mp).await;
                    false
                }
            },
            LayerState::NeedsMount(why) => {
                tracing::debug!(snapshot = name, why = %why, "mounting remote layer");
                true
            }
        };
        let kept = restoring && self.kept.lock().contains(&mp);
        if !kept {
            let _ = layout::detach_mounts_under(&mp);
        }
        let (ok, fail) = if restoring {
            (&self.metrics.restores, &self.metrics.restore_failures)
        } else {
            (&self.metrics.refreshes, &self.metrics.refresh_failures)
        };
        match self.remote.mount(&mp, &remote.mount_labels).await {
            Ok(()) => {
                inc(ok);
                self.kept.lock().remove(&mp);
                tracing::info!(snapshot = name, "remote layer mounted again");
                *st = LayerState::Mounted;
                Ok(())
            }
            Err(e) => {
                inc(fail);
                if !kept {
                    let _ = layout::detach_mounts_under(&mp);
                }
                *st = LayerState::NeedsMount(e.to_string());
                Err(Error::Unavailable {
                    snapshot: name.to_string(),
                    source: e,
                })
            }
        }
    }

    pub async fn commit(&self, name: &str, key: &str, labels: &Labels) -> Result<()> {
        let (n, k, l) = (name.to_string(), key.to_string(), labels.clone());
        self.run(move |c| c.commit(&n, &k, &l, None))
            .await
            .map(|_| ())
    }

    pub async fn remove(&self, key: &str) -> Result<()> {
        let k = key.to_string();
        let rec = self.run(move |c| c.get(&k)).await?;
        if rec.remote.is_none() {
            let k = key.to_string();
            return self.run(move |c| c.remove(&k)).await.map(|_| ());
        }
        let cell = self.cell(rec.id, LayerState::NeedsMount("removing".into()));
        let mut st = cell.lock().await;
        let k = key.to_string();
        if self.run(move |c| c.has_children(&k)).await? {
            return Err(Error::FailedPrecondition(format!(
                "failed to remove snapshot {key:?}: cannot remove snapshot with child"
            )));
        }
        let mp = self.core.layout().fs(rec.id);
        if let Err(e) = self.remote.unmount(&mp).await {
            tracing::warn!(snapshot = key, error = %e, "remote unmount failed; detaching");
        }
        *st = LayerState::NeedsMount("unmounted for removal".into());
        let k = key.to_string();
        self.run(move |c| c.remove(&k)).await?;
        drop(st);
        self.layers.lock().remove(&rec.id);
        Ok(())
    }

    pub async fn stat(&self, key: &str) -> Result<Info> {
        let k = key.to_string();
        self.run(move |c| c.stat(&k)).await
    }

    pub async fn update(&self, info: &Info, paths: &[String]) -> Result<Info> {
        let (i, p) = (info.clone(), paths.to_vec());
        self.run(move |c| c.update(&i, &p)).await
    }

    pub async fn list(&self, filters: &[String]) -> Result<Vec<Info>> {
        let f = Filters::parse(filters)?;
        self.run(move |c| c.list(&f)).await
    }

    pub async fn usage(&self, key: &str) -> Result<Usage> {
        let k = key.to_string();
        self.run(move |c| c.usage(&k)).await
    }

    pub async fn cleanup(&self) -> Result<()> {
        self.run(|c| c.cleanup(false)).await.map(|_| ())
    }

    /// Unmounts every remote layer (for a shutdown that should leave no
    /// mounts). The metadata stays: the next start mounts them again.
    pub async fn unmount_all(&self) {
        let Ok(all) = self.run(|c| c.all()).await else {
            return;
        };
        for (name, rec) in all {
            if rec.remote.is_none() {
                continue;
            }
            let cell = self.cell(rec.id, LayerState::Mounted);
            let mut st = cell.lock().await;
            let mp = self.core.layout().fs(rec.id);
            if let Err(e) = self.remote.unmount(&mp).await {
                tracing::warn!(snapshot = %name, error = %e, "remote unmount failed; detaching");
            }
            let _ = layout::detach_mounts_under(&mp);
            *st = LayerState::NeedsMount("unmounted".into());
        }
    }
}

fn join_err(e: tokio::task::JoinError) -> Error {
    match e.try_into_panic() {
        Ok(p) => std::panic::resume_unwind(p),
        Err(_) => Error::ShuttingDown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::{labels::CRI_DIGEST, RemoteFsError, LABEL_TARGET_REF};

    /// "Mounts" without mounting anything, or fails with `fail`.
    struct Fake(Option<fn() -> RemoteFsError>);

    #[async_trait::async_trait]
    impl RemoteFs for Fake {
        async fn mount(&self, _: &Path, _: &Labels) -> std::result::Result<(), RemoteFsError> {
            self.0.map_or(Ok(()), |f| Err(f()))
        }
        async fn check(&self, _: &Path, _: &Labels) -> std::result::Result<(), RemoteFsError> {
            Ok(())
        }
        async fn unmount(&self, _: &Path) -> std::result::Result<(), RemoteFsError> {
            Ok(())
        }
    }

    fn remote_labels(target: &str) -> Labels {
        [(LABEL_TARGET_REF, target), (CRI_DIGEST, "sha256:a")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[tokio::test]
    async fn a_remote_prepare_is_mounted_and_then_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let s = Snapshotter::open(dir.path(), Arc::new(Fake(None)))
            .await
            .unwrap();
        let l = remote_labels("chain-1");
        let target = "chain-1".to_string();
        assert_eq!(
            s.prepare("x1", "", &l).await.unwrap(),
            Prepared::Mounted {
                target: target.clone()
            }
        );
        assert_eq!(s.stat("chain-1").await.unwrap().kind, Kind::Committed);
        assert_eq!(
            s.prepare("x2", "", &l).await.unwrap(),
            Prepared::AlreadyThere { target }
        );
        assert!(s.stat("x2").await.is_err(), "no active snapshot was made");
        assert_eq!(s.metrics().snapshot().remote_mounts, 1);
    }

    #[tokio::test]
    async fn a_failed_remote_mount_falls_back_to_an_active_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let fs = Fake(Some(|| RemoteFsError::Unavailable("down (fake)".into())));
        let s = Snapshotter::open(dir.path(), Arc::new(fs)).await.unwrap();
        let r = s.prepare("x1", "", &remote_labels("chain-1")).await;
        assert!(
            matches!(r, Ok(Prepared::Active(ref m)) if !m.is_empty()),
            "{r:?}"
        );
        assert_eq!(s.stat("x1").await.unwrap().kind, Kind::Active);
        assert!(s.stat("chain-1").await.is_err());
        let m = s.metrics().snapshot();
        assert_eq!((m.fallback_unavailable, m.remote_mounts), (1, 0));
    }
}
