//! The daemon's TOML config. Accepts the keys containerd-stargz-grpc users
//! already have (so a deployment can switch by changing a socket path);
//! [`keys::KEYS`] says for each whether it works here or has no effect, and
//! [`Config::warnings`] names at start every key given that does nothing.
//! Unknown keys are logged, never rejected; values of the wrong type are.

use serde::Deserialize;
use std::path::{Path, PathBuf};

mod keys;
use keys::Support;

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub noprefetch: bool,
    pub no_background_fetch: bool,
    /// Mount layers nothing vouches for (legacy stargz, no TOC digest).
    pub allow_no_verification: bool,
    /// Here the same as `allow_no_verification` (digests a layer has are still checked).
    pub disable_verification: bool,
    pub prefetch_timeout_sec: Option<u64>,
    pub max_concurrency: Option<u64>,
    /// stargz's top-level metrics address; `--metrics-address` wins.
    pub metrics_address: Option<String>,
    pub blob: BlobConfig,
    pub directory_cache: DirectoryCacheConfig,
    pub fuse: FuseConfig,
    pub cache: CacheConfig,
    pub cri_keychain: CriKeychainConfig,
    pub fallback_pull: FallbackPullConfig,
    pub gzindex: GzIndexConfig,
    pub profile: ProfileConfig,
    /// `[[resolver.host."HOST".mirrors]]` etc., passed through untouched:
    /// the registry crate owns its typed form.
    pub resolver: Option<toml::Value>,
    /// Dotted names of the keys the file set (see [`present_keys`]).
    #[serde(skip)]
    present: Vec<String>,
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
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct DirectoryCacheConfig {
    pub max_lru_cache_entry: Option<u64>,
    pub max_cache_fds: Option<u64>,
    pub sync_add: Option<bool>,
    pub direct: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct FuseConfig {
    pub attr_timeout: Option<i64>,
    pub entry_timeout: Option<i64>,
    pub negative_timeout: Option<i64>,
    pub passthrough: Option<bool>,
    /// Seconds the fd holder keeps mounts for a daemon that does not come
    /// back; 0: forever.
    pub handover_timeout_sec: Option<u64>,
}

/// `[profile]`: this daemon's own section (profiles of real runs).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ProfileConfig {
    pub record: bool,
    pub window_sec: Option<u64>,
    pub max_files: Option<usize>,
}

/// This daemon's own `[gzindex]`: seekable indexes of plain gzip layers
/// (`rsnap index`), which make images nobody converted lazy.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct GzIndexConfig {
    /// Directory of `<layer hex>.gzindex` files (default `ROOT/gzindex`).
    pub dir: Option<PathBuf>,
    /// Look for an index among the image's OCI referrers (default true).
    pub registry_lookup: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct CacheConfig {
    /// Upper bound of the chunk cache on disk, in bytes.
    pub max_size: Option<u64>,
}

/// This daemon's own `[fallback_pull]`: a layer that cannot be lazy is
/// pulled and unpacked by the daemon rather than by containerd.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct FallbackPullConfig {
    pub enable: Option<bool>,
    pub concurrency: Option<usize>,
    pub request_size_mib: Option<u64>,
    pub parallel_layers: Option<usize>,
}

impl FallbackPullConfig {
    pub fn settings(&self) -> fullpull::Config {
        let d = fullpull::Config::default();
        fullpull::Config {
            enable: self.enable.unwrap_or(d.enable),
            concurrency: self.concurrency.unwrap_or(d.concurrency).max(1),
            request_bytes: self
                .request_size_mib
                .map_or(d.request_bytes, |m| m.clamp(1, 256) << 20),
            parallel_layers: self.parallel_layers.unwrap_or(d.parallel_layers),
        }
    }
}

/// stargz's `[cri_keychain]`: serve the CRI image service, forward it to
/// containerd and use the credentials of its pulls.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct CriKeychainConfig {
    pub enable_keychain: bool,
    /// containerd's socket, where the image service calls are forwarded.
    pub image_service_path: Option<PathBuf>,
    /// A socket of its own for the image service; unset: the daemon's
    /// `--address`, beside the snapshots service.
    pub listen_path: Option<PathBuf>,
    /// Keep what was learnt under the daemon's root (default true).
    pub persist: Option<bool>,
    /// Forget a secret unused for this long (default 7 days; 0: never).
    pub credential_ttl_sec: Option<u64>,
}

impl CriKeychainConfig {
    /// containerd's default socket, as in containerd-stargz-grpc.
    pub const DEFAULT_IMAGE_SERVICE_PATH: &'static str = "/run/containerd/containerd.sock";

    pub fn image_service_path(&self) -> PathBuf {
        self.image_service_path
            .clone()
            .unwrap_or_else(|| PathBuf::from(Self::DEFAULT_IMAGE_SERVICE_PATH))
    }

    /// A week: a node's images are pulled again (with their secret) far
    /// more often than that, and a layer is usually complete in the cache
    /// long before.
    pub const DEFAULT_CREDENTIAL_TTL_SEC: u64 = 7 * 24 * 3600;

    pub fn persist(&self) -> bool {
        self.persist.unwrap_or(true)
    }

    /// How long an unused secret is kept; `None`: for ever.
    pub fn credential_ttl(&self) -> Option<std::time::Duration> {
        match self
            .credential_ttl_sec
            .unwrap_or(Self::DEFAULT_CREDENTIAL_TTL_SEC)
        {
            0 => None,
            s => Some(std::time::Duration::from_secs(s)),
        }
    }
}

impl Config {
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let mut c: Config = toml::from_str(text)?;
        // Parsed a second time untyped: a bool that is set to its default
        // and an absent one look the same in `Config`.
        c.present = present_keys(&toml::from_str(text)?);
        Ok(c)
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

    /// Dotted names of keys the file set that are in no [`keys::KEYS`] entry
    /// (neither containerd-stargz-grpc's nor this daemon's own).
    pub fn unknown_keys(&self) -> Vec<String> {
        self.present
            .iter()
            .filter(|k| keys::lookup(k).is_none())
            .cloned()
            .collect()
    }

    /// One line per key the file set that does nothing here, naming it,
    /// and one for all unknown keys; the daemon logs them at start.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .present
            .iter()
            .filter_map(|k| match keys::lookup(k)?.support {
                Support::Works(_) => None,
                Support::NoEffect(why) => Some(format!(
                    "config key {k} is accepted for compatibility with \
                     containerd-stargz-grpc but has no effect here: {why}"
                )),
            })
            .collect();
        let unknown = self.unknown_keys();
        if !unknown.is_empty() {
            out.push(format!(
                "config keys not understood, ignored: {}",
                unknown.join(", ")
            ));
        }
        out
    }
}

/// Dotted names of the keys set in `doc`: `name` at the top level and
/// `section.name` inside the sections [`keys::KEYS`] knows. `[resolver]` is one
/// key: the registry crate parses it and refuses what it does not know.
fn present_keys(doc: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in doc {
        match v {
            toml::Value::Table(t) if k != "resolver" && keys::is_section(k) => {
                out.extend(t.keys().map(|sub| format!("{k}.{sub}")));
            }
            _ => out.push(k.clone()),
        }
    }
    out
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
        // debug_address is containerd-stargz-grpc's: known, but does nothing.
        assert_eq!(c.unknown_keys(), Vec::<String>::new());
        let w = c.warnings();
        for k in [
            "debug_address",
            "blob.check_always",
            "directory_cache.max_lru_cache_entry",
            "directory_cache.direct",
            "fuse.attr_timeout",
        ] {
            assert_eq!(
                w.iter()
                    .filter(|l| l.contains(&format!("key {k} ")))
                    .count(),
                1,
                "{k} in {w:#?}"
            );
        }
        assert_eq!(w.len(), 5, "{w:#?}");
    }

    /// `name = value` for a dotted key, in its section.
    fn set(key: &str, value: &str) -> String {
        match key.split_once('.') {
            Some((sect, k)) => format!("[{sect}]\n{k} = {value}\n"),
            None => format!("{key} = {value}\n"),
        }
    }

    /// The config setting only `key`, with the first value of a type the
    /// typed fields accept.
    fn only(key: &str) -> Config {
        ["1", "true", "\"x\""]
            .iter()
            .find_map(|v| Config::parse(&set(key, v)).ok())
            .unwrap_or_else(|| panic!("no value parses for {key}"))
    }

    #[test]
    fn every_key_without_effect_is_warned_about_by_name() {
        let mut n = 0;
        for k in keys::KEYS {
            let Support::NoEffect(why) = k.support else {
                continue;
            };
            n += 1;
            let w = only(k.name).warnings();
            assert_eq!(
                w,
                [format!(
                    "config key {} is accepted for compatibility with \
                     containerd-stargz-grpc but has no effect here: {why}",
                    k.name
                )],
                "{}",
                k.name
            );
        }
        // The keys the issue names, among others.
        assert!(n >= 30, "{n}");
        for k in [
            "fuse.merge_buffer_size",
            "directory_cache.sync_add",
            "blob.check_always",
            "blob.valid_interval",
            "blob.force_single_range_mode",
            "blob.max_wait_msec",
            "blob.chunk_size",
        ] {
            assert!(
                matches!(
                    keys::lookup(k),
                    Some(keys::Key {
                        support: Support::NoEffect(_),
                        ..
                    })
                ),
                "{k}"
            );
        }
    }

    #[test]
    fn keys_that_work_are_not_warned_about() {
        for k in keys::KEYS {
            if matches!(k.support, Support::Works(_)) && !k.name.starts_with("resolver") {
                assert_eq!(only(k.name).warnings(), Vec::<String>::new(), "{}", k.name);
            }
        }
    }

    /// Every `resolver.*` row is a key the registry client takes (it refuses
    /// unknown ones), so the table cannot list one that does nothing.
    #[test]
    fn resolver_rows_are_keys_the_registry_client_takes() {
        let value = |k: &str| match k {
            "host" => "\"mirror.example\"",
            "insecure" | "skip_verify" => "true",
            "request_timeout_sec" => "5",
            "header" => "{ X-Team = \"a\" }",
            "ca" => "\"/etc/ssl/ca.pem\"",
            other => panic!("no sample value for resolver key {other}"),
        };
        let (mut origin, mut mirror) = (String::new(), String::new());
        for k in keys::KEYS {
            if let Some(m) = k.name.strip_prefix("resolver.host.HOST.mirrors.") {
                mirror += &format!("{m} = {}\n", value(m));
            } else if let Some(o) = k.name.strip_prefix("resolver.host.HOST.") {
                origin += &format!("{o} = {}\n", value(o));
            }
        }
        let text = format!(
            "[resolver.host.\"r.example\"]\n{origin}[[resolver.host.\"r.example\".mirrors]]\n{mirror}"
        );
        let c = Config::parse(&text).unwrap();
        assert_eq!(c.warnings(), Vec::<String>::new());
        let hosts: stargzfs::HostsConfig = c.resolver.clone().unwrap().try_into().unwrap();
        let h = &hosts.host["r.example"];
        assert!(h.insecure && h.skip_verify && h.mirrors[0].insecure && h.mirrors[0].skip_verify);
        assert_eq!(h.mirrors[0].request_timeout_sec, Some(5));

        let bogus = Config::parse("[[resolver.host.\"r\".mirrors]]\nhost = \"m\"\nbogus = 1\n")
            .unwrap()
            .resolver
            .unwrap()
            .try_into::<stargzfs::HostsConfig>();
        assert!(bogus.unwrap_err().to_string().contains("bogus"));
    }

    #[test]
    fn unknown_keys_are_warned_about_together() {
        let c = Config::parse(
            "not_a_stargz_key = 1\nnoprefetch = true\n[blob]\nbogus = 2\nmax_retries = 3\n\
             [kubeconfig_keychain]\nbogus = 4\n[new_section]\nx = 5\n",
        )
        .unwrap();
        let mut unknown = c.unknown_keys();
        unknown.sort();
        assert_eq!(
            unknown,
            [
                "blob.bogus",
                "kubeconfig_keychain.bogus",
                "new_section",
                "not_a_stargz_key"
            ]
        );
        let w = c.warnings();
        assert_eq!(w.len(), 1, "{w:#?}");
        assert!(w[0].starts_with("config keys not understood, ignored: "));
        assert!(unknown.iter().all(|k| w[0].contains(k.as_str())), "{w:#?}");
    }

    /// The README's table of config keys is the one [`keys::KEYS`] makes.
    #[test]
    fn readme_lists_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let table = keys::markdown_table();
        assert!(
            readme.contains(&table),
            "README.md's table of config keys differs from the code's; it should be:\n\n{table}"
        );
    }

    #[test]
    fn cri_keychain_keys_parse_with_the_reference_default_socket() {
        let c = Config::default();
        assert!(!c.cri_keychain.enable_keychain);
        assert_eq!(
            c.cri_keychain.image_service_path(),
            Path::new("/run/containerd/containerd.sock")
        );
        let c = Config::parse(
            "[cri_keychain]\nenable_keychain = true\nimage_service_path = \"/c.sock\"\n\
             listen_path = \"/l.sock\"\n",
        )
        .unwrap();
        assert!(c.cri_keychain.enable_keychain);
        assert!(c.cri_keychain.persist(), "kept on disk unless opted out");
        assert_eq!(
            c.cri_keychain.credential_ttl(),
            Some(std::time::Duration::from_secs(7 * 24 * 3600))
        );
        assert_eq!(c.cri_keychain.image_service_path(), Path::new("/c.sock"));
        assert_eq!(
            c.cri_keychain.listen_path.as_deref(),
            Some(Path::new("/l.sock"))
        );
        assert_eq!(c.warnings(), Vec::<String>::new());
        let c = Config::parse("[cri_keychain]\npersist = false\ncredential_ttl_sec = 0\n").unwrap();
        assert!(!c.cri_keychain.persist());
        assert_eq!(c.cri_keychain.credential_ttl(), None, "0: kept for ever");
        assert_eq!(c.warnings(), Vec::<String>::new());
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
