//! Token auth for a real docker-registry: a [`TokenServer`] that signs
//! JWTs with a key the registry trusts, for one user's password (Basic on a
//! GET, or OAuth2 `grant_type=password` on a POST, as containerd sends it)
//! or one identity (refresh) token (`grant_type=refresh_token`). Anything
//! else gets 401.

use crate::authfront::{TokenKey, TokenRequest, TokenServer};
use crate::registry::RegistryOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const SERVICE: &str = "e2e-registry";
pub const ISSUER: &str = "e2e-issuer";

/// Who may have a token.
#[derive(Clone, Debug)]
pub struct Accept {
    pub username: String,
    pub password: String,
    /// An identity token the server accepts as `refresh_token`.
    pub identity_token: String,
}

pub struct TokenAuth {
    pub server: TokenServer,
    pub bundle: PathBuf,
}

impl TokenAuth {
    /// Key and bundle in `dir`; tokens valid for 10 minutes.
    pub fn start(dir: &Path, accept: Accept) -> TokenAuth {
        let key = TokenKey::create(dir);
        let bundle = key.bundle.clone();
        let issuer = move |req: &TokenRequest| -> Result<(String, u64), u16> {
            let form_password = req.param("grant_type") == Some("password")
                && req.param("username") == Some(accept.username.as_str())
                && req.param("password") == Some(accept.password.as_str());
            let basic = req.basic == Some((accept.username.clone(), accept.password.clone()));
            let refresh = req.param("grant_type") == Some("refresh_token")
                && req.param("refresh_token") == Some(accept.identity_token.as_str());
            if !(form_password || basic || refresh) {
                return Err(401);
            }
            Ok((key.sign(&claims(req, &accept.username))?, 600))
        };
        TokenAuth {
            server: TokenServer::start(Arc::new(issuer)),
            bundle,
        }
    }

    /// Registry options for a registry that wants this server's tokens.
    pub fn registry_options(&self) -> RegistryOptions {
        RegistryOptions {
            token: Some((
                self.server.realm(),
                SERVICE.into(),
                ISSUER.into(),
                self.bundle.clone(),
            )),
            ..Default::default()
        }
    }

    /// Every token request the server saw, granted or refused.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.server.seen()
    }
}

/// The claims docker-registry checks: issuer, audience, times, and the
/// access asked for in the request's scopes.
fn claims(req: &TokenRequest, subject: &str) -> serde_json::Value {
    let access: Vec<_> = req
        .scopes()
        .iter()
        .flat_map(|s| s.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter_map(|s| {
            let mut it = s.splitn(3, ':');
            let (t, name, actions) = (it.next()?, it.next()?, it.next()?);
            let actions: Vec<&str> = actions.split(',').collect();
            Some(serde_json::json!({"type": t, "name": name, "actions": actions}))
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    serde_json::json!({
        "iss": ISSUER, "sub": subject, "aud": SERVICE,
        "exp": now + 600, "nbf": now - 10, "iat": now - 10,
        "jti": format!("{now}-{}", rand_suffix()), "access": access,
    })
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
