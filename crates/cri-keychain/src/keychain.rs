//! What the proxy learnt from `PullImage` requests: credentials per
//! registry host and repository, in memory. Secrets never appear in `Debug`
//! output (and so in no log line that prints them).

use base64::Engine;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

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

/// Credentials by (host, repository); cheap to clone and share between the
/// proxy and the snapshotter's registry client.
#[derive(Clone, Default)]
pub struct Keychain {
    entries: Arc<RwLock<HashMap<(String, String), Credentials>>>,
}

impl fmt::Debug for Keychain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keychain")
            .field("entries", &self.entries.read().len())
            .finish()
    }
}

impl Keychain {
    pub fn new() -> Keychain {
        Keychain::default()
    }

    /// Remember `creds` for `host`/`repository` (replacing older ones: the
    /// kubelet sends the current secret with every pull); returns the
    /// replaced ones.
    pub fn insert(&self, host: &str, repository: &str, creds: Credentials) -> Option<Credentials> {
        self.entries
            .write()
            .insert((host.to_string(), repository.to_string()), creds)
    }

    /// Put back what [`Keychain::insert`] replaced (`None`: forget the entry).
    pub fn restore(&self, host: &str, repository: &str, previous: Option<Credentials>) {
        let key = (host.to_string(), repository.to_string());
        let mut e = self.entries.write();
        match previous {
            Some(c) => e.insert(key, c),
            None => e.remove(&key),
        };
    }

    /// The credentials last seen for `host`/`repository`.
    pub fn credentials(&self, host: &str, repository: &str) -> Option<Credentials> {
        self.entries
            .read()
            .get(&(host.to_string(), repository.to_string()))
            .cloned()
    }

    pub fn len(&self) -> usize {
        self.entries.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_cri::v1::AuthConfig;

    #[test]
    fn auth_config_forms() {
        let basic = Credentials::Basic {
            username: "u".into(),
            password: "p:w".into(),
        };
        let a = AuthConfig {
            username: "u".into(),
            password: "p:w".into(),
            ..Default::default()
        };
        assert_eq!(Credentials::from_auth_config(&a), Some(basic.clone()));
        let a = AuthConfig {
            auth: base64::engine::general_purpose::STANDARD.encode("u:p:w"),
            ..Default::default()
        };
        assert_eq!(Credentials::from_auth_config(&a), Some(basic));
        let a = AuthConfig {
            username: "u".into(),
            identity_token: "idt".into(),
            ..Default::default()
        };
        assert_eq!(
            Credentials::from_auth_config(&a),
            Some(Credentials::IdentityToken("idt".into()))
        );
        let a = AuthConfig {
            registry_token: "rt".into(),
            identity_token: "idt".into(),
            ..Default::default()
        };
        assert_eq!(
            Credentials::from_auth_config(&a),
            Some(Credentials::RegistryToken("rt".into()))
        );
        assert_eq!(Credentials::from_auth_config(&AuthConfig::default()), None);
        let bad = AuthConfig {
            auth: "not base64!".into(),
            ..Default::default()
        };
        assert_eq!(Credentials::from_auth_config(&bad), None);
    }

    #[test]
    fn debug_output_has_no_secret() {
        let c = Credentials::Basic {
            username: "user".into(),
            password: "hunter2".into(),
        };
        let k = Keychain::new();
        k.insert("h", "r", c.clone());
        k.insert("h", "t", Credentials::RegistryToken("tok-secret".into()));
        let text = format!("{c:?} {k:?} {:?}", k.credentials("h", "t"));
        assert!(
            !text.contains("hunter2") && !text.contains("tok-secret"),
            "{text}"
        );
        assert!(text.contains("user"));
    }

    #[test]
    fn lookup_is_per_host_and_repository() {
        let k = Keychain::new();
        let c = Credentials::RegistryToken("t".into());
        k.insert("reg.io", "a/b", c.clone());
        assert_eq!(k.credentials("reg.io", "a/b"), Some(c));
        assert_eq!(k.credentials("reg.io", "a/c"), None);
        assert_eq!(k.credentials("other.io", "a/b"), None);
        k.insert("reg.io", "a/b", Credentials::IdentityToken("i".into()));
        assert_eq!(
            k.credentials("reg.io", "a/b"),
            Some(Credentials::IdentityToken("i".into()))
        );
        assert_eq!(k.len(), 1);
    }
}
