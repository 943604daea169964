//! Credentials for one registry as a CRI `AuthConfig` carries them, with a
//! `Debug` that never shows a secret. Used by the keychain, its store and
//! the proxy.

use base64::Engine;
use std::fmt;

/// Credentials for one registry, as the kubelet sends them in a CRI
/// `AuthConfig`.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Basic credentials (`username`/`password`, or `auth` = base64 of
    /// `user:password`).
    Basic { username: String, password: String },
    /// An identity (refresh) token to exchange for registry tokens.
    IdentityToken(String),
    /// A bearer token to present to the registry as is.
    RegistryToken(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Basic { username, .. } => {
                write!(
                    f,
                    "Basic {{ username: {username:?}, password: <redacted> }}"
                )
            }
            Credentials::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
            Credentials::RegistryToken(_) => f.write_str("RegistryToken(<redacted>)"),
        }
    }
}

impl Credentials {
    /// The credentials an `AuthConfig` carries, preferring a registry token,
    /// then an identity token, then username/password, then `auth`; `None`
    /// for an empty or undecodable one.
    pub fn from_auth_config(a: &k8s_cri::v1::AuthConfig) -> Option<Credentials> {
        if !a.registry_token.is_empty() {
            return Some(Credentials::RegistryToken(a.registry_token.clone()));
        }
        if !a.identity_token.is_empty() {
            return Some(Credentials::IdentityToken(a.identity_token.clone()));
        }
        if !a.username.is_empty() {
            return Some(Credentials::Basic {
                username: a.username.clone(),
                password: a.password.clone(),
            });
        }
        if !a.auth.is_empty() {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.auth.trim())
                .ok()?;
            let text = String::from_utf8(raw).ok()?;
            let (user, pass) = text.split_once(':')?;
            return Some(Credentials::Basic {
                username: user.to_string(),
                password: pass.to_string(),
            });
        }
        None
    }
}
