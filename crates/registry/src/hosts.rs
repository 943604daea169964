//! Registry host configuration, with the keys containerd-stargz-grpc users
//! already have:
//!
//! ```toml
//! [resolver.host."docker.io"]
//! ca = ["/etc/ssl/my-ca.pem"]        # extra CA certificates (PEM) for this host
//! [[resolver.host."docker.io".mirrors]]
//! host = "mirror.local:5000"         # or "http://mirror.local:5000"
//! insecure = true                    # plain HTTP
//! request_timeout_sec = 10           # time to response headers
//! header = { "X-Team" = "a" }        # extra request headers
//! ca = "/etc/ssl/mirror-ca.pem"      # string or list
//! ```
//!
//! Mirrors are tried in order for pulls, then the origin; pushes go to the
//! origin only. `HostsConfig` is the table under `[resolver]`. The origin
//! itself takes `insecure`, `header`, `request_timeout_sec` and `ca` on its
//! host table. Plain HTTP is automatic for `localhost`, `127.0.0.1` and `[::1]`
//! unless the host has a `ca` (or, for a mirror, an explicit `https://`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsConfig {
    #[serde(default)]
    pub host: BTreeMap<String, HostConfig>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    #[serde(default)]
    pub mirrors: Vec<MirrorConfig>,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub request_timeout_sec: Option<u64>,
    #[serde(default)]
    pub header: BTreeMap<String, String>,
    #[serde(default)]
    pub ca: OneOrMany,
    /// HTTPS without verifying the certificate (containerd's hosts.toml
    /// name). Unlike `insecure`, traffic stays encrypted.
    #[serde(default)]
    pub skip_verify: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorConfig {
    pub host: String,
    #[serde(default)]
    pub insecure: bool,
    #[serde(default)]
    pub request_timeout_sec: Option<u64>,
    #[serde(default)]
    pub header: BTreeMap<String, String>,
    #[serde(default)]
    pub ca: OneOrMany,
    #[serde(default)]
    pub skip_verify: bool,
}

/// `ca = "a.pem"` or `ca = ["a.pem", "b.pem"]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl OneOrMany {
    pub fn paths(&self) -> Vec<PathBuf> {
        match self {
            OneOrMany::None => vec![],
            OneOrMany::One(p) => vec![p.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// One place to send requests for a registry: a mirror or the origin.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSpec {
    /// `host[:port]`, the key for credentials, tokens and capabilities.
    pub authority: String,
    pub plain_http: bool,
    pub request_timeout: Option<Duration>,
    pub headers: Vec<(String, String)>,
    pub ca: Vec<PathBuf>,
    /// Accept any server certificate (configured per host, never by default).
    pub skip_verify: bool,
    pub is_mirror: bool,
}

impl EndpointSpec {
    pub fn base_url(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.authority)
    }
}

/// The origin host that serves a registry name (docker.io is special).
pub fn origin_authority(registry: &str) -> &str {
    if registry == crate::reference::DOCKER_HUB {
        "registry-1.docker.io"
    } else {
        registry
    }
}

/// Loopback hosts get plain HTTP without being asked.
pub fn is_loopback(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']')
            .next()
            .map(|h| format!("[{h}]"))
            .unwrap_or_default()
    } else {
        authority.split(':').next().unwrap_or("").to_string()
    };
    matches!(host.as_str(), "localhost" | "127.0.0.1" | "[::1]")
}

impl HostsConfig {
    /// Mirrors in order, then the origin. `plain_http` forces HTTP everywhere.
    pub fn endpoints(&self, registry: &str, plain_http: bool) -> Vec<EndpointSpec> {
        let hc = self.host.get(registry).cloned().unwrap_or_default();
        let mut out = Vec::new();
        for m in &hc.mirrors {
            let (authority, scheme) = split_scheme(&m.host);
            if authority.is_empty() {
                continue;
            }
            // A loopback host with TLS settings wants HTTPS, not the automatic HTTP.
            let auto = is_loopback(&authority)
                && scheme.is_none()
                && m.ca.paths().is_empty()
                && !m.skip_verify;
            out.push(EndpointSpec {
                plain_http: plain_http || m.insecure || scheme == Some(Scheme::Http) || auto,
                request_timeout: m.request_timeout_sec.map(Duration::from_secs),
                headers: m.header.clone().into_iter().collect(),
                ca: m.ca.paths(),
                skip_verify: m.skip_verify,
                is_mirror: true,
                authority,
            });
        }
        let authority = origin_authority(registry).to_string();
        out.push(EndpointSpec {
            plain_http: plain_http
                || hc.insecure
                || (is_loopback(&authority) && hc.ca.paths().is_empty() && !hc.skip_verify),
            request_timeout: hc.request_timeout_sec.map(Duration::from_secs),
            headers: hc.header.into_iter().collect(),
            ca: hc.ca.paths(),
            skip_verify: hc.skip_verify,
            is_mirror: false,
            authority,
        });
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

/// `http://h:1/` → (`h:1`, Some(Http)); `h:1` → (`h:1`, None).
fn split_scheme(host: &str) -> (String, Option<Scheme>) {
    let (rest, scheme) = if let Some(r) = host.strip_prefix("http://") {
        (r, Some(Scheme::Http))
    } else if let Some(r) = host.strip_prefix("https://") {
        (r, Some(Scheme::Https))
    } else {
        (host, None)
    };
    (rest.split('/').next().unwrap_or("").to_string(), scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stargz_style_toml() {
        #[derive(Deserialize)]
        struct Cfg {
            resolver: HostsConfig,
        }
        let cfg: Cfg = toml::from_str(
            r#"
[[resolver.host."docker.io".mirrors]]
host = "mirror.example:5000"
insecure = true
request_timeout_sec = 7
header = { "X-A" = "b" }
[[resolver.host."docker.io".mirrors]]
host = "https://m2.example/v2"
ca = "/tmp/ca.pem"
[resolver.host."reg.example"]
ca = ["/a.pem", "/b.pem"]
"#,
        )
        .unwrap();
        let eps = cfg.resolver.endpoints("docker.io", false);
        assert_eq!(eps.len(), 3);
        assert_eq!(eps[0].base_url(), "http://mirror.example:5000");
        assert_eq!(eps[0].request_timeout, Some(Duration::from_secs(7)));
        assert_eq!(eps[0].headers, vec![("X-A".to_string(), "b".to_string())]);
        assert_eq!(eps[1].base_url(), "https://m2.example");
        assert_eq!(eps[1].ca, vec![PathBuf::from("/tmp/ca.pem")]);
        assert_eq!(eps[2].base_url(), "https://registry-1.docker.io");
        assert!(!eps[2].is_mirror);
        let eps = cfg.resolver.endpoints("reg.example", false);
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].ca.len(), 2);
    }

    #[test]
    fn skip_verify_is_per_host_and_means_https() {
        let h: HostsConfig = toml::from_str(
            "[host.\"127.0.0.1:5000\"]\nskip_verify = true\n[[host.\"127.0.0.1:5000\".mirrors]]\nhost = \"127.0.0.1:6000\"\nskip_verify = true\n",
        )
        .unwrap();
        let eps = h.endpoints("127.0.0.1:5000", false);
        assert!(eps.iter().all(|e| e.skip_verify && !e.plain_http));
        assert!(!h.endpoints("127.0.0.1:7000", false)[0].skip_verify);
    }

    #[test]
    fn loopback_is_plain_http_only_for_loopback() {
        let h = HostsConfig::default();
        assert!(h.endpoints("127.0.0.1:5000", false)[0].plain_http);
        assert!(h.endpoints("localhost", false)[0].plain_http);
        assert!(h.endpoints("[::1]:80", false)[0].plain_http);
        assert!(!h.endpoints("127.0.0.1.evil.com", false)[0].plain_http);
        assert!(!h.endpoints("localhost.evil.com:5000", false)[0].plain_http);
        assert!(h.endpoints("reg.example", true)[0].plain_http);
        // A CA (or an explicit https:// mirror) means TLS, even on loopback.
        let h: HostsConfig = toml::from_str(
            "[host.\"127.0.0.1:5000\"]\nca = \"/ca.pem\"\n[[host.\"127.0.0.1:5000\".mirrors]]\nhost = \"https://127.0.0.1:6000\"\n",
        )
        .unwrap();
        let eps = h.endpoints("127.0.0.1:5000", false);
        assert_eq!(eps[0].base_url(), "https://127.0.0.1:6000");
        assert_eq!(eps[1].base_url(), "https://127.0.0.1:5000");
    }
}
