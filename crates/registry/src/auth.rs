//! Per-host authorization: remembers which scheme each host asked for
//! (Basic or Bearer with its realm), fetches bearer tokens (anonymous or with
//! the host's own credentials) and caches them per (host, scope) until they
//! expire. Credentials come from the [`CredentialSource`] (per host and
//! repository, the repository taken from the scope) before the docker
//! config (per host). A token or password is only ever attached to requests for the host
//! it belongs to; the transport drops it across redirects.

use crate::credentials::{normalize_host, Credential, CredentialSource, CredentialStore};
use crate::error::{Error, Result};
use crate::headers::Challenge;
use base64::Engine as _;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
const EXPIRY_MARGIN: Duration = Duration::from_secs(5);
const MAX_TOKEN_RESPONSE: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Scheme {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Clone)]
struct Token {
    value: String,
    /// A little before the real expiry, so a request does not race it.
    refresh_at: Instant,
}

pub(crate) struct Auth {
    creds: CredentialStore,
    source: Option<Arc<dyn CredentialSource>>,
    schemes: Mutex<HashMap<String, Scheme>>,
    tokens: Mutex<HashMap<(String, String), Token>>,
    /// One token fetch at a time, so a burst of reads makes one request.
    fetch_lock: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
struct TokenReply {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl Auth {
    pub fn new(creds: CredentialStore, source: Option<Arc<dyn CredentialSource>>) -> Auth {
        Auth {
            creds,
            source,
            schemes: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            fetch_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The Authorization value to send to `authority` for `scope`, if we know
    /// the host wants one. May fetch a token (scheme already learned).
    pub async fn header(
        &self,
        http: &reqwest::Client,
        authority: &str,
        scope: &str,
    ) -> Result<Option<String>> {
        let scheme = self.schemes.lock().get(authority).cloned();
        match scheme {
            None => Ok(None),
            Some(Scheme::Basic) => Ok(self.basic(authority, scope)?),
            Some(Scheme::Bearer { realm, service }) => {
                if let Some(Credential::RegistryToken(t)) = self.source_credential(authority, scope)
                {
                    return Ok(Some(format!("Bearer {t}")));
                }
                if let Some(t) = self.cached(authority, scope) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let _g = self.fetch_lock.lock().await;
                if let Some(t) = self.cached(authority, scope) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let tok = self
                    .fetch_token(http, authority, &realm, service.as_deref(), scope)
                    .await?;
                let v = format!("Bearer {}", tok.value);
                self.tokens
                    .lock()
                    .insert((authority.to_string(), scope.to_string()), tok);
                Ok(Some(v))
            }
        }
    }

    /// Learn from a 401. Returns false when retrying cannot help (Basic
    /// wanted and we have no credentials for this host; unknown scheme).
    pub fn challenged(
        &self,
        authority: &str,
        scope: &str,
        challenges: &[Challenge],
    ) -> Result<bool> {
        // Any token we sent is stale or too narrow now.
        self.tokens
            .lock()
            .remove(&(authority.to_string(), scope.to_string()));
        if let Some(c) = challenges.iter().find(|c| c.scheme == "bearer") {
            let realm = c
                .param("realm")
                .filter(|r| r.starts_with("https://") || r.starts_with("http://"))
                .ok_or_else(|| {
                    Error::invalid(authority, "Bearer challenge without an http(s) realm")
                })?;
            self.schemes.lock().insert(
                authority.to_string(),
                Scheme::Bearer {
                    realm: realm.to_string(),
                    service: c.param("service").map(str::to_string),
                },
            );
            return Ok(true);
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            self.schemes
                .lock()
                .insert(authority.to_string(), Scheme::Basic);
            return Ok(matches!(
                self.credential(authority, scope)?,
                Some(Credential::Basic { .. })
            ));
        }
        Ok(false)
    }

    fn cached(&self, authority: &str, scope: &str) -> Option<String> {
        let map = self.tokens.lock();
        let t = map.get(&(authority.to_string(), scope.to_string()))?;
        (Instant::now() < t.refresh_at).then(|| t.value.clone())
    }

    /// What the [`CredentialSource`] knows for the repository of `scope`
    /// (its first `repository:NAME:ACTIONS` item) at `authority`.
    fn source_credential(&self, authority: &str, scope: &str) -> Option<Credential> {
        let repo = scope_repository(scope)?;
        self.source
            .as_ref()?
            .credential(&normalize_host(authority), repo)
    }

    /// The credentials to use for `scope` at `authority`.
    fn credential(&self, authority: &str, scope: &str) -> Result<Option<Credential>> {
        match self.source_credential(authority, scope) {
            Some(c) => Ok(Some(c)),
            None => self.creds.get(authority),
        }
    }

    fn basic(&self, authority: &str, scope: &str) -> Result<Option<String>> {
        Ok(match self.credential(authority, scope)? {
            Some(Credential::Basic { username, password }) => {
                Some(basic_value(&username, &password))
            }
            _ => None,
        })
    }

    async fn fetch_token(
        &self,
        http: &reqwest::Client,
        authority: &str,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<Token> {
        let mut url =
            url::Url::parse(realm).map_err(|e| Error::invalid(realm, format!("bad realm: {e}")))?;
        let cred = self.credential(authority, scope)?;
        // The registry's password goes to its realm (as docker does), but
        // in clear text only to the registry's own host (any port): that
        // host already receives it in clear text.
        let own_host = url.host_str().is_some_and(|h| host_of(authority) == h);
        let cred = cred.filter(|_| url.scheme() == "https" || own_host);
        let req = match &cred {
            Some(Credential::IdentityToken { token, .. }) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                form.append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", token)
                    .append_pair("client_id", "remote-snapshotter");
                for sc in scope.split(' ') {
                    form.append_pair("scope", sc);
                }
                if let Some(s) = service {
                    form.append_pair("service", s);
                }
                http.post(url.clone())
                    .header(
                        http::header::CONTENT_TYPE,
                        "application/x-www-form-urlencoded",
                    )
                    .body(form.finish())
            }
            other => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for sc in scope.split(' ') {
                        q.append_pair("scope", sc);
                    }
                    if let Some(Credential::Basic { username, .. }) = other {
                        q.append_pair("account", username);
                    }
                }
                let mut r = http.get(url.clone());
                if let Some(Credential::Basic { username, password }) = other {
                    r = r.header(http::header::AUTHORIZATION, basic_value(username, password));
                }
                r
            }
        };
        let resp = tokio::time::timeout(Duration::from_secs(30), req.send())
            .await
            .map_err(|_| Error::unreachable(realm, "token request timed out"))?
            .map_err(|e| Error::unreachable(realm, e))?;
        let status = resp.status();
        if status == 401 || status == 403 {
            return Err(Error::Unauthorized {
                url: realm.into(),
                detail: format!("token server said {status}"),
            });
        }
        if !status.is_success() {
            let kind = if status.is_server_error() {
                "server"
            } else {
                "status"
            };
            let detail = format!("token server said {status} ({kind})");
            return Err(if status.is_server_error() {
                Error::Server {
                    url: realm.into(),
                    status: status.as_u16(),
                    detail,
                }
            } else {
                Error::Status {
                    url: realm.into(),
                    status: status.as_u16(),
                    detail,
                }
            });
        }
        let body = crate::transport::read_limited(
            resp,
            MAX_TOKEN_RESPONSE,
            Duration::from_secs(30),
            "token",
        )
        .await?;
        let reply: TokenReply = serde_json::from_slice(&body)
            .map_err(|e| Error::invalid(realm, format!("token reply: {e}")))?;
        let value = reply
            .token
            .or(reply.access_token)
            .filter(|t| !t.is_empty() && t.bytes().all(|c| c.is_ascii_graphic()))
            .ok_or_else(|| Error::invalid(realm, "token reply without a usable token"))?;
        let ttl = reply
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_TTL);
        let ttl = ttl.clamp(Duration::from_secs(1), Duration::from_secs(24 * 3600));
        Ok(Token {
            value,
            refresh_at: Instant::now() + ttl - EXPIRY_MARGIN.min(ttl / 2),
        })
    }
}

fn basic_value(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// `a/b` of `repository:a/b:pull` (the first item of a scope).
fn scope_repository(scope: &str) -> Option<&str> {
    let item = scope.split(' ').next()?;
    let rest = item.strip_prefix("repository:")?;
    let (name, _actions) = rest.rsplit_once(':')?;
    (!name.is_empty()).then_some(name)
}

/// `h:5000` → `h`; `[::1]:80` → `[::1]`.
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or(authority)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct One;

    impl CredentialSource for One {
        fn credential(&self, host: &str, repository: &str) -> Option<Credential> {
            (host == "docker.io" && repository == "me/app").then(|| Credential::Basic {
                username: "u".into(),
                password: "p".into(),
            })
        }
    }

    #[test]
    fn scope_names_the_repository() {
        assert_eq!(scope_repository("repository:a/b:pull"), Some("a/b"));
        assert_eq!(
            scope_repository("repository:a/b:pull,push repository:c:pull"),
            Some("a/b")
        );
        assert_eq!(scope_repository("registry:catalog:*"), None);
        assert_eq!(scope_repository("repository::pull"), None);
        assert_eq!(scope_repository(""), None);
    }

    #[test]
    fn the_source_is_asked_per_host_and_repository_before_the_docker_config() {
        let mut statics = HashMap::new();
        statics.insert(
            "docker.io".to_string(),
            Credential::Basic {
                username: "file".into(),
                password: "f".into(),
            },
        );
        let store =
            CredentialStore::load(Some(std::path::Path::new("/nonexistent")), statics).unwrap();
        let auth = Auth::new(store, Some(Arc::new(One)));
        let user = |authority: &str, scope: &str| match auth.credential(authority, scope).unwrap() {
            Some(Credential::Basic { username, .. }) => username,
            other => panic!("{other:?}"),
        };
        assert_eq!(user("registry-1.docker.io", "repository:me/app:pull"), "u");
        assert_eq!(user("docker.io", "repository:me/other:pull"), "file");
        assert_eq!(
            auth.basic("docker.io", "repository:me/app:pull").unwrap(),
            Some(basic_value("u", "p"))
        );
        assert_eq!(
            auth.credential("other.io", "repository:me/app:pull")
                .unwrap(),
            None
        );
    }
}
