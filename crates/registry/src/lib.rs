//! OCI distribution client for remote-snapshotter.
//!
//! Layers, bottom up:
//! - pure parsers of untrusted input: [`reference`], [`digest`], [`headers`]
//!   (WWW-Authenticate, Content-Range, Retry-After), [`multipart`]
//!   (multipart/byteranges); fuzzed by `fuzz/fuzz_targets/registry_headers.rs`
//! - configuration: [`hosts`] (mirrors, plain HTTP, CA, headers — the
//!   containerd-stargz-grpc `[resolver]` keys) and [`credentials`]
//!   (docker config.json, credential helpers)
//! - `auth` (per-host scheme, bearer tokens cached per host and scope) and
//!   `transport` (one request: auth, retries, redirects without credentials)
//! - the API: [`Client`] (`resolve`, manifests, configs, blobs, push) and
//!   [`BlobReader`] (ranged and multi-range reads of one blob).
//!
//! Every byte handed out by `fetch_*` is checked against its digest first;
//! `BlobReader` returns raw ranges (callers verify chunks against the TOC).

mod auth;
mod blob;
pub mod credentials;
pub mod digest;
mod error;
pub mod headers;
pub mod hosts;
pub mod manifest;
pub mod multipart;
mod push;
pub mod recent;
pub mod reference;
pub mod referrers;
mod transport;

pub use blob::{BlobReader, BlobStream};
pub use credentials::{Credential, CredentialSource};
pub use digest::Digest;
pub use error::{Error, ErrorKind, Result};
pub use hosts::{HostConfig, HostsConfig, MirrorConfig};
pub use manifest::{Manifest, Platform, Resolved, MANIFEST_ACCEPT};
pub use push::{BlobPush, PushOptions};
pub use recent::Recent;
pub use reference::Reference;
pub use referrers::{fallback_tag, Referrer};

use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use transport::Endpoint;

/// How a client talks to registries. `Default` is right for most uses.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub hosts: HostsConfig,
    /// Plain HTTP for every host (tests, air-gapped setups).
    pub plain_http: bool,
    /// Plain HTTP for these registry names only.
    pub plain_http_hosts: Vec<String>,
    /// HTTPS without certificate verification for these registry names
    /// (`rsnap convert --insecure`); hosts config `skip_verify` does the
    /// same per host. TLS is verified everywhere else.
    pub skip_verify_hosts: Vec<String>,
    /// Where `config.json` is; default `$DOCKER_CONFIG` or `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// Credentials by host, taking precedence over config.json.
    pub credentials: HashMap<String, Credential>,
    /// Credentials per host and repository, asked before `credentials`
    /// and config.json (the daemon's CRI keychain).
    pub credential_source: Option<Arc<dyn CredentialSource>>,
    pub connect_timeout: Duration,
    /// Time to response headers (a host's `request_timeout_sec` overrides it).
    pub request_timeout: Duration,
    /// A body that makes no progress this long is abandoned.
    pub stall_timeout: Duration,
    /// Requests in flight at once, over all hosts.
    pub max_concurrency: usize,
    /// Retries after the first attempt (connection errors, 5xx, 429).
    pub retries: u32,
    /// First backoff; doubles each retry, capped at 5 s.
    pub retry_base: Duration,
    pub user_agent: String,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            hosts: HostsConfig::default(),
            plain_http: false,
            plain_http_hosts: Vec::new(),
            skip_verify_hosts: Vec::new(),
            docker_config_dir: None,
            credentials: HashMap::new(),
            credential_source: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(30),
            max_concurrency: 32,
            retries: 3,
            retry_base: Duration::from_millis(200),
            user_agent: concat!("remote-snapshotter/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// What we learned about a host's Range support.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HostCaps {
    /// It refused or mangled a multi-range request: ask single ranges only.
    pub no_multi_range: bool,
    /// It answered a Range with the whole blob.
    pub ignores_range: bool,
}

pub(crate) struct Inner {
    pub cfg: ClientConfig,
    pub auth: auth::Auth,
    pub sem: Arc<tokio::sync::Semaphore>,
    http_default: reqwest::Client,
    /// Clients with non-default TLS settings, by (extra CAs, skip_verify).
    http_by_tls: Mutex<HashMap<(Vec<PathBuf>, bool), reqwest::Client>>,
    endpoints: Mutex<HashMap<String, Arc<Vec<Endpoint>>>>,
    pub caps: Mutex<HashMap<String, HostCaps>>,
    /// Manifests and referrer lists asked for moments ago (`recent`).
    pub(crate) recent_manifests: recent::Recent<Manifest>,
    pub(crate) recent_referrers: recent::Recent<Vec<Referrer>>,
}

/// A registry client. Cloning is cheap: clones share connections, tokens
/// and the concurrency limit.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

fn build_http(cfg: &ClientConfig, ca: &[PathBuf], skip_verify: bool) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(cfg.connect_timeout)
        .read_timeout(cfg.stall_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .http2_adaptive_window(true)
        .user_agent(cfg.user_agent.clone());
    let mut certs = Vec::new();
    for p in ca {
        let pem = std::fs::read(p).map_err(|e| Error::Io {
            path: p.display().to_string(),
            source: e,
        })?;
        let mut found = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| Error::Config(format!("CA file {}: {e}", p.display())))?;
        if found.is_empty() {
            return Err(Error::Config(format!(
                "CA file {}: no certificate",
                p.display()
            )));
        }
        certs.append(&mut found);
    }
    if !certs.is_empty() {
        b = b.tls_certs_merge(certs);
    }
    if skip_verify {
        b = b.tls_danger_accept_invalid_certs(true);
    }
    b.build()
        .map_err(|e| Error::Config(format!("HTTP client: {e}")))
}

impl Client {
    pub fn new(cfg: ClientConfig) -> Result<Client> {
        let creds = credentials::CredentialStore::load(
            cfg.docker_config_dir.as_deref(),
            cfg.credentials.clone(),
        )?;
        let http_default = build_http(&cfg, &[], false)?;
        let sem = Arc::new(tokio::sync::Semaphore::new(cfg.max_concurrency.max(1)));
        Ok(Client {
            inner: Arc::new(Inner {
                auth: auth::Auth::new(creds, cfg.credential_source.clone()),
                sem,
                http_default,
                http_by_tls: Mutex::new(HashMap::new()),
                endpoints: Mutex::new(HashMap::new()),
                caps: Mutex::new(HashMap::new()),
                recent_manifests: Default::default(),
                recent_referrers: Default::default(),
                cfg,
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    /// Mirrors then origin for `registry`, each with its HTTP client.
    pub(crate) fn endpoints(&self, registry: &str) -> Result<Arc<Vec<Endpoint>>> {
        if let Some(e) = self.inner.endpoints.lock().get(registry) {
            return Ok(e.clone());
        }
        let cfg = &self.inner.cfg;
        let plain = cfg.plain_http || cfg.plain_http_hosts.iter().any(|h| h == registry);
        let mut out = Vec::new();
        let skip = cfg.skip_verify_hosts.iter().any(|h| h == registry);
        for mut spec in cfg.hosts.endpoints(registry, plain) {
            if skip && !spec.is_mirror {
                spec.skip_verify = true;
                // Asked for TLS without verification: HTTPS, even on loopback.
                spec.plain_http = plain;
            }
            let http = if spec.ca.is_empty() && !spec.skip_verify {
                self.inner.http_default.clone()
            } else {
                let key = (spec.ca.clone(), spec.skip_verify);
                let mut map = self.inner.http_by_tls.lock();
                match map.get(&key) {
                    Some(c) => c.clone(),
                    None => {
                        let c = build_http(cfg, &spec.ca, spec.skip_verify)?;
                        map.insert(key, c.clone());
                        c
                    }
                }
            };
            out.push(Endpoint { spec, http });
        }
        let out = Arc::new(out);
        self.inner
            .endpoints
            .lock()
            .insert(registry.to_string(), out.clone());
        Ok(out)
    }

    pub(crate) fn caps(&self, authority: &str) -> HostCaps {
        self.inner
            .caps
            .lock()
            .get(authority)
            .copied()
            .unwrap_or_default()
    }

    pub(crate) fn set_caps(&self, authority: &str, f: impl FnOnce(&mut HostCaps)) {
        f(self
            .inner
            .caps
            .lock()
            .entry(authority.to_string())
            .or_default());
    }
}

pub(crate) fn pull_scope(repo: &Reference) -> String {
    format!("repository:{}:pull", repo.repository())
}

pub(crate) fn push_scope(repo: &Reference) -> String {
    format!("repository:{}:pull,push", repo.repository())
}
