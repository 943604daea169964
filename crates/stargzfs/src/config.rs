//! Settings of the eStargz filesystem, named as containerd-stargz-grpc
//! users know them; how they map onto lazy layers and the registry client.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What the daemon tells the filesystem. `None` keeps the default.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The daemon's state directory: the chunk cache lives in `root/cache`,
    /// and dead FUSE mounts under it are cleared at start.
    pub root: PathBuf,
    /// Do not fetch a layer's prioritized files before mounting it.
    pub noprefetch: bool,
    /// Do not fetch the rest of a layer in the background after mounting.
    pub no_background_fetch: bool,
    /// Longest wait for the prefetch range; the mount goes on without it.
    pub prefetch_timeout: Option<Duration>,
    /// Ranged requests in flight at once per layer.
    pub max_concurrency: Option<usize>,
    /// Bound on a read that needs the network, retries included.
    pub fetch_timeout: Option<Duration>,
    /// Upper bound of the chunk cache on disk, in bytes.
    pub cache_max_bytes: Option<u64>,
    /// FUSE passthrough for fully cached files (`[fuse] passthrough`).
    pub passthrough: bool,
    /// Registry retries after the first attempt.
    pub retries: Option<u32>,
    /// First backoff between registry retries (doubled per retry).
    pub retry_base: Option<Duration>,
    /// Mirrors, plain HTTP, CAs per registry host.
    pub hosts: registry::HostsConfig,
    /// Credentials per host and repository asked before the docker config
    /// (the daemon's CRI keychain: Kubernetes pull secrets).
    pub credentials: Option<Arc<dyn registry::CredentialSource>>,
    /// Mount layers that cannot be verified (no TOC digest in the labels
    /// or the manifest; legacy stargz without chunk digests), the
    /// reference's `allow_no_verification`. Each is logged and counted;
    /// once all its chunks were fetched the whole blob is checked against
    /// the layer digest, and a mismatch stops serving it.
    pub allow_no_verification: bool,
    /// The reference's `disable_verification`: here the same as
    /// `allow_no_verification` (the reference also skips digests a layer
    /// does carry; this daemon still checks every digest there is).
    pub disable_verification: bool,
    /// argv that starts the fd holder (`lazyfs::handover::run_holder` on
    /// [`crate::fd_store_path`]`(root)`); set, mounts survive restarts and
    /// crashes of the daemon. `None`: they die with it.
    pub fd_holder: Option<Vec<std::ffi::OsString>>,
    /// Directory of seekable indexes of plain gzip layers
    /// (`<hex>.gzindex`, as `rsnap index --out` writes them).
    pub gzindex_dir: Option<PathBuf>,
    /// Look for such an index among the image's OCI referrers when a layer
    /// has no TOC (a manifest and one or two more requests per such layer).
    pub gzindex_registry: bool,
    /// Record which files containers open first, per image
    /// (`crate::profile`); `None`: no recording.
    pub profile: Option<crate::ProfileConfig>,
}

impl Config {
    pub(crate) fn layer(&self) -> lazyfs::Config {
        let mut l = lazyfs::Config {
            noprefetch: self.noprefetch,
            no_background_fetch: self.no_background_fetch,
            cache_dir: Some(self.root.join("cache")),
            // The daemon has the disk tier and the kernel's page cache holds
            // what containers read, so a small memory tier only saves a disk
            // read of hot chunks: 16 MiB took its RSS after the python
            // benchmark's run from 88 to 54 MiB at the same speed.
            memory_cache_bytes: 16 << 20,
            passthrough: self.passthrough,
            allow_no_verification: self.unverified_allowed(),
            ..lazyfs::Config::default()
        };
        if let Some(t) = self.prefetch_timeout {
            l.prefetch_timeout_sec = t.as_secs();
        }
        if let Some(n) = self.max_concurrency {
            l.max_concurrency = n.max(1);
        }
        if let Some(t) = self.fetch_timeout {
            l.fetch_timeout_sec = t.as_secs();
        }
        if let Some(m) = self.cache_max_bytes {
            l.cache_max_bytes = m;
        }
        l
    }

    /// Either key lets unverifiable layers mount.
    pub(crate) fn unverified_allowed(&self) -> bool {
        self.allow_no_verification || self.disable_verification
    }

    /// The registry client settings (hosts, credentials, timeouts) this
    /// filesystem uses; also for the daemon's fallback pulls.
    pub fn client(&self) -> registry::ClientConfig {
        let mut c = registry::ClientConfig {
            hosts: self.hosts.clone(),
            credential_source: self.credentials.clone(),
            ..registry::ClientConfig::default()
        };
        if let Some(r) = self.retries {
            c.retries = r;
        }
        if let Some(b) = self.retry_base {
            c.retry_base = b;
        }
        // Nothing may wait on one request longer than a read may wait in all:
        // a registry that accepts and never answers must not hold a mount (or
        // a containerd call) for the 30 s default per attempt.
        if let Some(t) = self.fetch_timeout {
            let t = t.max(Duration::from_secs(1));
            c.request_timeout = c.request_timeout.min(t);
            c.stall_timeout = c.stall_timeout.min(t);
        }
        // Several layers are read at once; each may use its own limit.
        if let Some(n) = self.max_concurrency {
            c.max_concurrency = n.max(1) * 4;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_bound_the_registry_client_and_limits_scale() {
        let c = Config {
            root: "/r".into(),
            fetch_timeout: Some(Duration::from_secs(3)),
            max_concurrency: Some(2),
            retries: Some(7),
            ..Config::default()
        };
        let l = c.layer();
        assert_eq!(l.fetch_timeout_sec, 3);
        assert_eq!(l.max_concurrency, 2);
        assert_eq!(
            l.cache_dir.as_deref(),
            Some(std::path::Path::new("/r/cache"))
        );
        let r = c.client();
        assert!(r.request_timeout <= Duration::from_secs(3));
        assert!(r.stall_timeout <= Duration::from_secs(3));
        assert_eq!((r.max_concurrency, r.retries), (8, 7));
    }
}
