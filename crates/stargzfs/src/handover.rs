//! The daemon's side of keeping mounts alive across its own restarts: every
//! mount's FUSE fd goes to the fd holder (`lazyfs::handover`), started on
//! demand in its own process group; at start the connections the holder
//! kept are taken back and served again ([`crate::StargzFs::adopt_inherited`]).

use lazyfs::handover::{ConnState, FdStore, Lease};
use lazyfs::MountHandle;
use parking_lot::Mutex;
use snapshotter::Labels;
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// Where the holder listens, under the daemon's root.
pub fn fd_store_path(root: &Path) -> PathBuf {
    root.join("fdstore.sock")
}

/// Counters of the handover (exported as metrics).
#[derive(Debug, Default)]
pub struct HandoverStats {
    /// Mounts whose connection this process took over and serves.
    pub adopted: AtomicU64,
    /// Handed-over connections this process could not serve (yet).
    pub adopt_failures: AtomicU64,
    /// Mounts handed to the next process at a graceful stop.
    pub handed_over: AtomicU64,
    /// Requests a previous process had read and not answered when it died
    /// (the kernel answered them ECONNABORTED).
    pub abandoned_requests: AtomicU64,
    /// Requests still unanswered when a graceful stop gave up waiting.
    pub undrained_requests: AtomicU64,
    /// Failures to give a mount's fd to the holder.
    pub keep_failures: AtomicU64,
    /// Mounts the holder gave up while no daemon ran (`handover_timeout_sec`
    /// passed): their readers got an error, the mounts were detached.
    pub given_up: AtomicU64,
}

pub(crate) struct Handover {
    store: FdStore,
    /// argv of the holder, run when none answers.
    holder: Vec<OsString>,
    log: PathBuf,
    root: PathBuf,
    inherited: Mutex<HashMap<PathBuf, (ConnState, OwnedFd)>>,
    /// This process's lease with the holder (see `lazyfs::handover`): while
    /// it is open the holder never gives the connections up.
    lease: Mutex<Option<Lease>>,
    pub stats: HandoverStats,
}

impl Handover {
    pub fn new(root: &Path, holder: Vec<OsString>) -> Handover {
        Handover {
            store: FdStore::new(fd_store_path(root)),
            holder,
            log: root.join("fd-holder.log"),
            root: root.to_path_buf(),
            inherited: Mutex::new(HashMap::new()),
            lease: Mutex::new(None),
            stats: HandoverStats::default(),
        }
    }

    /// Take the connections a holder kept (none if no holder runs).
    pub fn collect(&self, in_flight_dir: &Path) -> usize {
        match lazyfs::persist_in_flight(in_flight_dir) {
            Ok(n) if n > 0 => {
                warn!(
                    requests = n,
                    "the previous process died with requests unanswered (the kernel aborted them)"
                );
                self.stats.abandoned_requests.fetch_add(n, Relaxed);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "cannot keep the in-flight count on disk"),
        }
        self.count_given_up();
        if !self.store.is_running() {
            return 0;
        }
        // Attach before taking the connections: from now on the holder
        // knows a daemon serves them.
        self.ensure_lease();
        match self.store.list() {
            Ok(list) => {
                let mut inh = self.inherited.lock();
                for (st, fd) in list {
                    inh.insert(st.mountpoint.clone(), (st, fd));
                }
                info!(
                    mounts = inh.len(),
                    "took over FUSE connections from the fd holder"
                );
                inh.len()
            }
            Err(e) => {
                warn!(error = %e, "fd holder does not list its connections");
                0
            }
        }
    }

    /// Count (and remove) the holder's note of mounts it gave up.
    fn count_given_up(&self) {
        let note = self.root.join(lazyfs::handover::GAVE_UP_FILE);
        let Ok(text) = std::fs::read_to_string(&note) else {
            return;
        };
        let _ = std::fs::remove_file(&note);
        let n = text.lines().filter(|l| !l.is_empty()).count() as u64;
        if n > 0 {
            warn!(
                mounts = n,
                "the fd holder gave up mounts while no daemon ran (their readers got errors)"
            );
            self.stats.given_up.fetch_add(n, Relaxed);
        }
    }

    /// Hold a lease with the running holder (a new one if the holder we
    /// attached to has exited). A holder too old to know leases refuses;
    /// it then never gives up, as before.
    fn ensure_lease(&self) {
        let mut lease = self.lease.lock();
        if lease.as_ref().is_some_and(Lease::is_alive) {
            return;
        }
        *lease = match self.store.attach() {
            Ok(fd) => Some(fd),
            Err(e) => {
                debug!(error = %e, "no lease with the fd holder");
                None
            }
        };
    }

    pub fn inherited_paths(&self) -> Vec<PathBuf> {
        self.inherited.lock().keys().cloned().collect()
    }

    pub fn take(&self, mountpoint: &Path) -> Option<(ConnState, OwnedFd)> {
        self.inherited.lock().remove(mountpoint)
    }

    /// Put back one that could not be served now (retried on next mount).
    pub fn put_back(&self, st: ConnState, fd: OwnedFd) {
        self.stats.adopt_failures.fetch_add(1, Relaxed);
        self.inherited
            .lock()
            .insert(st.mountpoint.clone(), (st, fd));
    }

    fn spawn_holder(&self) -> std::io::Result<()> {
        use std::os::unix::process::CommandExt;
        let (exe, args) = self
            .holder
            .split_first()
            .ok_or_else(|| std::io::Error::other("no fd holder command"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        // Own process group: a ^C or a kill of the daemon's group does not
        // reach it; it exits by itself once it holds nothing.
        let child = std::process::Command::new(exe)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()?;
        info!(pid = child.id(), "started the fd holder");
        // Not waited for: it outlives us. Reaped by init after we exit.
        std::mem::forget(child);
        for _ in 0..100 {
            if self.store.is_running() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(std::io::Error::other("fd holder did not start"))
    }

    /// Give the holder a dup of a mount's FUSE fd (blocking; starts a
    /// holder if none answers).
    pub fn keep(&self, st: &ConnState, anchor: &OwnedFd) {
        use std::os::fd::AsFd;
        let key = st.mountpoint.to_string_lossy().into_owned();
        let mut result = self.store.put(&key, st, anchor.as_fd());
        if result.is_err() {
            result = self
                .spawn_holder()
                .and_then(|()| self.store.put(&key, st, anchor.as_fd()));
        }
        if result.is_ok() {
            self.ensure_lease();
        }
        if let Err(e) = result {
            self.stats.keep_failures.fetch_add(1, Relaxed);
            warn!(mount = %key, error = %e, "cannot give the mount's FUSE fd to the fd holder; it will not survive a restart");
        }
    }

    /// The mount is gone: let the holder close its fd.
    pub fn forget(&self, mountpoint: &Path) {
        self.inherited.lock().remove(mountpoint);
        if self.store.is_running() {
            if let Err(e) = self.store.del(&mountpoint.to_string_lossy()) {
                warn!(mount = %mountpoint.display(), error = %e, "fd holder did not release a mount");
            }
        }
    }
}

impl crate::StargzFs {
    /// Serve the connections the previous process handed over (their
    /// layers open from the TOCs kept on disk: no registry needed), then
    /// clear dead mounts. Call once, before the snapshotter restores.
    /// Returns (adopted, failed).
    pub async fn adopt_inherited(&self) -> (usize, usize) {
        let Some(h) = &self.handover else {
            return (0, 0);
        };
        let paths = h.inherited_paths();
        let jobs = paths.iter().map(|mp| async move {
            let labels = h
                .inherited
                .lock()
                .get(mp)
                .map(|(st, _)| st.labels.clone().into_iter().collect::<Labels>());
            match labels {
                Some(l) => self.mount_layer(mp, &l).await.map_err(|e| (mp, e)),
                None => Ok(()),
            }
        });
        let mut failed = 0;
        for r in futures::future::join_all(jobs).await {
            if let Err((mp, e)) = r {
                failed += 1;
                warn!(mount = %mp.display(), error = %e, "cannot serve a handed-over mount yet; its readers wait");
            }
        }
        if !paths.is_empty() {
            for dead in lazyfs::cleanup_dead_mounts(&h.root).unwrap_or_default() {
                info!(mount = %dead.display(), "cleaned a dead mount from a previous run");
            }
        }
        (paths.len() - failed, failed)
    }

    /// `Ok(true)`: `mountpoint` is served by this process (already, or
    /// now by adopting the connection handed over for it).
    pub(crate) async fn serve_inherited(
        &self,
        mountpoint: &Path,
        labels: &Labels,
    ) -> Result<bool, crate::Error> {
        if let Some(m) = self.mounts.lock().await.get(mountpoint) {
            if m.is_alive() {
                return Ok(true);
            }
        }
        let Some(h) = &self.handover else {
            return Ok(false);
        };
        let Some((st, fd)) = h.take(mountpoint) else {
            return Ok(false);
        };
        let layer = match self.open_layer(labels).await {
            Ok(l) if l.digest() == st.layer_digest => l,
            Ok(l) => {
                // Not the layer that is mounted there: never serve it.
                warn!(mount = %mountpoint.display(), held = %st.layer_digest, labels = %l.digest(), "handed-over mount is of another layer; dropping it");
                h.forget(mountpoint);
                return Ok(false);
            }
            Err(e) => {
                h.put_back(st, fd);
                return Err(e);
            }
        };
        let mp = mountpoint.to_path_buf();
        let (l, proto) = (layer.clone(), st.proto);
        let handle = tokio::task::spawn_blocking(move || lazyfs::adopt(l, &mp, fd, proto))
            .await
            .map_err(|source| crate::Error::Task {
                what: "adopt",
                path: mountpoint.to_path_buf(),
                source,
            })?
            .map_err(|source| crate::Error::Mount {
                path: mountpoint.to_path_buf(),
                source: Box::new(source),
            })?;
        layer.start_background_fetch();
        h.stats.adopted.fetch_add(1, Relaxed);
        self.mounts
            .lock()
            .await
            .insert(mountpoint.to_path_buf(), handle);
        Ok(true)
    }

    pub(crate) async fn keep_across_restarts(&self, mountpoint: &Path, labels: &Labels) {
        let Some(h) = self.handover.clone() else {
            return;
        };
        let (st, anchor) = {
            let mounts = self.mounts.lock().await;
            let Some(handle) = mounts.get(mountpoint) else {
                return;
            };
            let st = ConnState {
                mountpoint: mountpoint.to_path_buf(),
                layer_digest: handle.layer().digest().to_string(),
                labels: labels.clone().into_iter().collect(),
                proto: handle.proto(),
                mounted_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            };
            match handle.anchor().try_clone_to_owned() {
                Ok(fd) => (st, fd),
                Err(e) => {
                    warn!(mount = %mountpoint.display(), error = %e, "cannot dup the mount's FUSE fd");
                    return;
                }
            }
        };
        // Short local calls; starting a holder takes well under 2 s.
        let _ = tokio::task::spawn_blocking(move || h.keep(&st, &anchor)).await;
    }

    pub(crate) async fn served_or_inherited(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.mounts.lock().await.keys().cloned().collect();
        if let Some(h) = &self.handover {
            v.extend(h.inherited_paths());
        }
        v
    }

    /// Graceful stop that keeps every mount for the next process: each
    /// session stops reading (what the kernel queues from now on waits for
    /// the next process), then replies to what was read go out, for at most
    /// `drain`. Returns (mounts handed over, requests left unanswered).
    pub async fn hand_over_all(&self, drain: Duration) -> (usize, u64) {
        let handles: Vec<MountHandle> = self.mounts.lock().await.drain().map(|(_, h)| h).collect();
        let n = handles.len();
        let h = self.handover.clone();
        let left = tokio::task::spawn_blocking(move || {
            for m in handles {
                m.stop_serving();
            }
            lazyfs::wait_drained(drain) as u64
        })
        .await
        .unwrap_or(0);
        if let Some(h) = h {
            h.stats.handed_over.fetch_add(n as u64, Relaxed);
            h.stats.undrained_requests.fetch_add(left, Relaxed);
        }
        (n, left)
    }

    /// Counters of the handover, if it is configured.
    pub fn handover_stats(&self) -> Option<&HandoverStats> {
        self.handover.as_deref().map(|h| &h.stats)
    }

    /// Request latencies, bounded failures and chunk cache figures of
    /// every layer (one scheduler and cache per process).
    pub fn fetch_figures(&self) -> lazyfs::FetchFigures {
        self.opener.sched.figures()
    }

    /// Counters of the TOCs kept on disk.
    pub fn toc_stats(&self) -> &crate::TocStoreStats {
        &self.opener.tocs.stats
    }

    /// Layers mounted without verification since the start.
    pub fn unverified_mounted(&self) -> u64 {
        self.unverified_mounted
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The mounted layers: mount point, layer digest, blob size, bytes fetched.
    pub async fn layers(&self) -> Vec<LayerInfo> {
        self.mounts
            .lock()
            .await
            .iter()
            .map(|(mp, h)| {
                let s = h.layer().stats().snapshot();
                LayerInfo {
                    mountpoint: mp.clone(),
                    digest: h.layer().digest().to_string(),
                    size: h.layer().blob_size(),
                    fetched: h.layer().fetched_bytes(),
                    requests: s.requests,
                    alive: h.is_alive(),
                    blob_check: h.layer().blob_check(),
                    format: h.layer().format(),
                }
            })
            .collect()
    }
}

/// One mounted layer, for metrics and `rsnap layers`.
#[derive(Debug, Clone)]
pub struct LayerInfo {
    pub mountpoint: PathBuf,
    pub digest: String,
    pub size: u64,
    pub fetched: u64,
    pub requests: u64,
    pub alive: bool,
    /// `NotNeeded` for a verified layer; else where its whole-blob check stands.
    pub blob_check: lazyfs::BlobCheck,
    /// What the layer is served from: `estargz` (its TOC) or `gzindex`
    /// (a plain gzip layer's seekable index).
    pub format: &'static str,
}
