//! The daemon's TOML config, as far as the eStargz filesystem reads it,
//! turned into a [`stargzfs::Config`]: names and units only; what the
//! values mean for layers and the registry client is `stargzfs`'s business.

use crate::config::Config;
use std::path::Path;
use std::time::Duration;

/// `root` is the daemon's state directory (the chunk cache lives under it).
pub fn stargz_config(cfg: &Config, root: &Path) -> anyhow::Result<stargzfs::Config> {
    let hosts = match &cfg.resolver {
        Some(r) => r
            .clone()
            .try_into()
            .map_err(|e| anyhow::anyhow!("[resolver]: {e}"))?,
        None => stargzfs::HostsConfig::default(),
    };
    Ok(stargzfs::Config {
        root: root.to_path_buf(),
        noprefetch: cfg.noprefetch,
        no_background_fetch: cfg.no_background_fetch,
        allow_no_verification: cfg.allow_no_verification,
        disable_verification: cfg.disable_verification,
        prefetch_timeout: cfg.prefetch_timeout_sec.map(Duration::from_secs),
        max_concurrency: cfg.max_concurrency.map(|n| n as usize),
        fetch_timeout: cfg.blob.fetching_timeout_sec.map(Duration::from_secs),
        cache_max_bytes: cfg.cache.max_size,
        passthrough: cfg.fuse.passthrough.unwrap_or(false),
        retries: cfg.blob.max_retries,
        // stargz's first backoff; the registry client doubles it per retry.
        retry_base: cfg.blob.min_wait_msec.map(Duration::from_millis),
        hosts,
        // The CRI keychain, when enabled, is set by `main`: it is state, not config.
        credentials: None,
        // Set by `main` (it knows its own executable).
        fd_holder: None,
        gzindex_dir: Some(
            cfg.gzindex
                .dir
                .clone()
                .unwrap_or_else(|| root.join("gzindex")),
        ),
        gzindex_registry: cfg.gzindex.registry_lookup.unwrap_or(true),
        profile: cfg.profile.record.then(|| {
            let d = stargzfs::ProfileConfig::default();
            stargzfs::ProfileConfig {
                window: cfg.profile.window_sec.map_or(d.window, Duration::from_secs),
                max_files: cfg.profile.max_files.unwrap_or(d.max_files),
                ..d
            }
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stargz_keys_reach_the_filesystem_config() {
        let c = Config::parse(
            r#"
noprefetch = true
prefetch_timeout_sec = 20
max_concurrency = 4
[blob]
max_retries = 7
min_wait_msec = 30
fetching_timeout_sec = 5
[cache]
max_size = 1024
[fuse]
passthrough = true
[profile]
record = true
window_sec = 3
[[resolver.host."registry.example".mirrors]]
host = "mirror.example"
"#,
        )
        .unwrap();
        let s = stargz_config(&c, Path::new("/state")).unwrap();
        assert!(s.noprefetch && !s.no_background_fetch);
        assert_eq!(s.root, Path::new("/state"));
        assert_eq!(s.prefetch_timeout, Some(Duration::from_secs(20)));
        assert_eq!(s.max_concurrency, Some(4));
        assert_eq!(s.fetch_timeout, Some(Duration::from_secs(5)));
        assert_eq!(s.cache_max_bytes, Some(1024));
        assert!(s.passthrough);
        let p = s.profile.as_ref().expect("recording on");
        assert_eq!(p.window, Duration::from_secs(3));
        assert_eq!(p.max_files, 10_000);
        let off = stargz_config(&Config::parse("").unwrap(), Path::new("/s")).unwrap();
        assert!(!off.passthrough, "passthrough is off unless asked for");
        assert!(off.profile.is_none(), "recording is off unless asked for");
        assert_eq!(s.retries, Some(7));
        assert_eq!(s.retry_base, Some(Duration::from_millis(30)));
        assert_eq!(
            s.hosts.host["registry.example"].mirrors[0].host,
            "mirror.example"
        );
        let bad = Config::parse("[resolver]\nnonsense = 1\n").unwrap();
        assert!(stargz_config(&bad, Path::new("/s")).is_err());
    }
}
