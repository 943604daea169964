//! The daemon's TOML config. Accepts the keys containerd-stargz-grpc users
//! already have (so a deployment can switch by changing a socket path) and
//! keeps them even where nothing reads them yet; unknown keys are kept and
//! logged, never rejected.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub noprefetch: bool,
    pub no_background_fetch: bool,
    pub prefetch_timeout_sec: Option<u64>,
    pub max_concurrency: Option<u64>,
    /// stargz's top-level metrics address; `--metrics-address` wins.
    pub metrics_address: Option<String>,
    pub blob: BlobConfig,
    pub directory_cache: DirectoryCacheConfig,
    pub fuse: FuseConfig,
    pub cache: CacheConfig,
    /// `[[resolver.host."HOST".mirrors]]` etc., passed through untouched:
    /// the registry crate owns its typed form.
    pub resolver: Option<toml::Value>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct BlobConfig {
    pub max_retries: Option<u32>,
    pub min_wait_msec: Option<u64>,
    pub max_wait_msec: Option<u64>,
    pub chunk_size: Option<u64>,
    pub valid_interval: Option<u64>,
    pub check_always: Option<bool>,
    pub fetching_timeout_sec: Option<u64>,
    pub force_single_range_mode: Option<bool>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct DirectoryCacheConfig {
    pub max_lru_cache_entry: Option<u64>,
    pub max_cache_fds: Option<u64>,
    pub sync_add: Option<bool>,
    pub direct: Option<bool>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct FuseConfig {
    pub attr_timeout: Option<i64>,
    pub entry_timeout: Option<i64>,
    pub negative_timeout: Option<i64>,
    pub passthrough: Option<bool>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    /// Upper bound of the chunk cache on disk, in bytes.
    pub max_size: Option<u64>,
    #[serde(flatten)]
    pub unknown: BTreeMap<String, toml::Value>,
}

impl Config {
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Reads `path`; a missing file is the defaults only when `path` is the
    /// default location (an explicit path that does not exist is an error).
    pub fn load(path: &Path, is_default: bool) -> anyhow::Result<Config> {
        match std::fs::read_to_string(path) {
            Ok(t) => Config::parse(&t).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && is_default => {
                Ok(Config::default())
            }
            Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
        }
    }

    /// Dotted names of keys nothing here knows, for a warning at start.
    pub fn unknown_keys(&self) -> Vec<String> {
        let mut out: Vec<String> = self.unknown.keys().cloned().collect();
        for (sect, m) in [
            ("blob", &self.blob.unknown),
            ("directory_cache", &self.directory_cache.unknown),
            ("fuse", &self.fuse.unknown),
            ("cache", &self.cache.unknown),
        ] {
            out.extend(m.keys().map(|k| format!("{sect}.{k}")));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stargz_config_parses_and_keeps_keys() {
        let c = Config::parse(
            r#"
noprefetch = true
no_background_fetch = true
prefetch_timeout_sec = 20
max_concurrency = 4
debug_address = "127.0.0.1:8001"
[blob]
max_retries = 7
check_always = true
[directory_cache]
max_lru_cache_entry = 5000
direct = true
[fuse]
attr_timeout = 3600
[cache]
max_size = 10737418240
[[resolver.host."registry.example".mirrors]]
host = "mirror.example"
insecure = true
"#,
        )
        .unwrap();
        assert!(c.noprefetch && c.no_background_fetch);
        assert_eq!(
            (c.prefetch_timeout_sec, c.max_concurrency),
            (Some(20), Some(4))
        );
        assert_eq!(c.blob.max_retries, Some(7));
        assert_eq!(c.directory_cache.max_lru_cache_entry, Some(5000));
        assert_eq!(c.fuse.attr_timeout, Some(3600));
        assert_eq!(c.cache.max_size, Some(10 << 30));
        let mirrors = &c.resolver.as_ref().unwrap()["host"]["registry.example"]["mirrors"];
        assert_eq!(mirrors[0]["host"].as_str(), Some("mirror.example"));
        assert_eq!(c.unknown_keys(), ["debug_address"]);
    }

    #[test]
    fn missing_default_file_is_defaults_but_explicit_is_an_error() {
        let p = Path::new("/nonexistent/remote-snapshotter/config.toml");
        assert!(Config::load(p, true).is_ok());
        assert!(Config::load(p, false).is_err());
        assert!(
            Config::parse("noprefetch = 3").is_err(),
            "wrong types are errors"
        );
    }
}
