//! Per-host authorization: remembers which scheme each host asked for
//! (Basic or Bearer with its realm), fetches bearer tokens (anonymous or with
//! the host's own credentials) and caches them per (host, scope) until they
//! expire. A token or password is only ever attached to requests for the host
//! it belongs to; the transport drops it across redirects.

use crate::credentials::{Credential, CredentialStore};
use crate::error::{Error, Result};
use crate::headers::Challenge;
use base64::Engine as _;
use parking_lot::Mutex;
use serde::Deserialize;
use std::collections::HashMap;
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
    pub fn new(creds: CredentialStore) -> Auth {
        Auth {
            creds,
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
            Some(Scheme::Basic) => Ok(self.basic(authority)?),
            Some(Scheme::Bearer { realm, service }) => {
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
                self.creds.get(authority)?,
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

    fn basic(&self, authority: &str) -> Result<Option<String>> {
        Ok(match self.creds.get(authority)? {
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
        let cred = self.creds.get(authority)?;
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

/// `h:5000` → `h`; `[::1]:80` → `[::1]`.
fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        authority.split_inclusive(']').next().unwrap_or(authority)
    } else {
        authority.split(':').next().unwrap_or(authority)
    }
}
