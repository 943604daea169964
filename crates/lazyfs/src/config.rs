//! Settings of lazy layers, with the key names containerd-stargz-grpc users
//! already have in their config files (`noprefetch`, `no_background_fetch`,
//! `prefetch_timeout_sec`, `max_concurrency`).

use crate::cache::CacheConfig;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Do not fetch the prioritized files before the mount is handed out.
    pub noprefetch: bool,
    /// Do not fetch the rest of the layer in the background after mounting.
    pub no_background_fetch: bool,
    /// Longest wait for the prefetch range; the mount goes on without it.
    pub prefetch_timeout_sec: u64,
    /// Foreground requests (reads, readahead, prefetch) in flight at once,
    /// for all the layers of one `Scheduler`.
    pub max_concurrency: usize,
    /// Background-fetch requests in flight at once, for all the layers of
    /// one `Scheduler` (they also wait for foreground requests to finish).
    pub background_concurrency: usize,
    /// Bound on a read that needs the network, retries included: after it the
    /// reader gets EIO instead of hanging.
    pub fetch_timeout_sec: u64,
    /// Largest single request made for on-demand reads.
    pub max_request_bytes: u64,
    /// Largest single request made by background fetch: what it holds in
    /// memory at once per request, and how soon it makes way for a reader.
    pub background_request_bytes: u64,
    /// Chunks with less than this between them are fetched in one request.
    pub coalesce_gap_bytes: u64,
    /// Largest window fetched ahead of a sequential reader, within a file:
    /// the window starts at 256 KiB and doubles while reads stay sequential.
    pub readahead_bytes: u64,
    /// Largest window fetched ahead in the blob when reads walk the blob in
    /// order across files (say, `cat dir/*` over files stored one after
    /// another); grows like `readahead_bytes`.
    pub blob_readahead_bytes: u64,
    /// A read that must go to the network also fetches the members stored
    /// within this many bytes before and after its own, in the same request:
    /// small files read one after another (an interpreter importing its
    /// modules) often lie close together in the blob, and a few KiB more per
    /// request cost far less than the round trips they save.
    pub neighbour_bytes: u64,
    /// Background fetch waits until no layer of its `Scheduler` has had a
    /// foreground request for this long (also right after mounting), so a
    /// pull and a starting container get the link to themselves.
    pub background_quiet_ms: u64,
    /// Stop background fetch when the disk cache is this full (0..1), so it
    /// never evicts what readers use.
    pub background_max_cache_fill: f64,
    /// FUSE worker threads per mount.
    pub fuse_threads: usize,
    /// Kernel readahead for the mount (`/sys/class/bdi/*/read_ahead_kb`).
    pub read_ahead_kb: u32,
    /// Mount the FUSE filesystem `nosuid,nodev`. Containers are unaffected:
    /// the overlayfs mount above decides setuid and device access for them.
    pub nosuid_nodev: bool,
    /// Answer opens of fully cached files with FUSE passthrough (kernel
    /// 6.9 or later, and a disk cache): the kernel reads a copy of the file
    /// under `cache_dir/files` directly. Off by default: it makes the mount
    /// a stacked filesystem, so an overlay on an overlay on it (overlayfs
    /// inside a container) passes the kernel's stacking limit.
    pub passthrough: bool,
    /// Chunk cache directory (chunks in `<dir>/chunks`); none: memory only.
    pub cache_dir: Option<PathBuf>,
    pub cache_max_bytes: u64,
    pub memory_cache_bytes: u64,
    /// Open layers whose chunks carry no `chunkDigest` (legacy CRFS
    /// stargz), the reference's key name. Their chunks are served
    /// unchecked, kept in memory only, and once all were fetched the whole
    /// blob is checked against the layer digest (a mismatch stops the
    /// layer). Off: such a layer fails to open (`Invalid`).
    pub allow_no_verification: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            noprefetch: false,
            no_background_fetch: false,
            prefetch_timeout_sec: 10,
            max_concurrency: 8,
            background_concurrency: 2,
            fetch_timeout_sec: 10,
            max_request_bytes: 4 << 20,
            background_request_bytes: 1 << 20,
            coalesce_gap_bytes: 64 << 10,
            readahead_bytes: 8 << 20,
            blob_readahead_bytes: 8 << 20,
            neighbour_bytes: 32 << 10,
            background_quiet_ms: 5000,
            background_max_cache_fill: 0.8,
            fuse_threads: 4,
            read_ahead_kb: 4096,
            nosuid_nodev: true,
            passthrough: false,
            cache_dir: None,
            cache_max_bytes: 10 << 30,
            memory_cache_bytes: 128 << 20,
            allow_no_verification: false,
        }
    }
}

/// A config file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("config: {0}")]
pub struct ConfigError(String);

impl Config {
    /// The lazyfs keys of a TOML file (a daemon config file works: other
    /// sections and keys are ignored).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError(e.to_string()))
    }

    pub(crate) fn fetch_timeout(&self) -> Duration {
        Duration::from_secs(self.fetch_timeout_sec.max(1))
    }

    pub(crate) fn prefetch_timeout(&self) -> Duration {
        Duration::from_secs(self.prefetch_timeout_sec)
    }

    pub fn cache_config(&self) -> CacheConfig {
        CacheConfig {
            dir: self.cache_dir.clone(),
            disk_cap_bytes: self.cache_max_bytes,
            memory_cap_bytes: self.memory_cache_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_stargz_keys_and_ignores_the_rest() {
        let c = Config::from_toml_str(
            "noprefetch = true\nmax_concurrency = 3\nprefetch_timeout_sec = 7\n\
             [[resolver.host.\"docker.io\".mirrors]]\nhost = \"m.example\"\n",
        )
        .unwrap();
        assert!(c.noprefetch && !c.no_background_fetch);
        assert_eq!((c.max_concurrency, c.prefetch_timeout_sec), (3, 7));
        assert_eq!(c.fetch_timeout_sec, Config::default().fetch_timeout_sec);
        assert!(Config::from_toml_str("noprefetch = 3").is_err());
    }
}
