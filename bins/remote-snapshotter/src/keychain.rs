//! The CRI keychain as the registry client's credential source: what the
//! kubelet's `PullImage` requests carried, per host and repository; kept
//! under the daemon's root unless `[cri_keychain] persist = false`.

use crate::config::CriKeychainConfig;
use cri_keychain::{Credentials, Expiry, Keychain, Store};
use stargzfs::{Credential, CredentialSource};
use std::path::Path;
use std::time::Duration;

/// The directory of the keychain file under the daemon's root.
pub const DIR: &str = "cri-keychain";

/// The keychain `cfg` asks for: loaded from `root` (before any layer is
/// restored, so that private layers mount again), or in memory only. A file
/// that cannot be read does not stop the daemon: it starts empty, and the
/// next pull's secret replaces the file.
pub fn open(cfg: &CriKeychainConfig, root: &Path) -> Keychain {
    if !cfg.persist() {
        return Keychain::new();
    }
    let expiry = Expiry {
        ttl: cfg.credential_ttl(),
    };
    match Keychain::persistent(Store::new(&root.join(DIR)), expiry) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!(error = %e, "CRI keychain file unreadable; starting with an empty keychain");
            let _ = std::fs::rename(
                root.join(DIR).join("credentials.json"),
                root.join(DIR).join("credentials.json.unreadable"),
            );
            Keychain::persistent(Store::new(&root.join(DIR)), expiry).unwrap_or_default()
        }
    }
}

/// Writes last-used times and forgets expired secrets every `period`.
pub async fn flush_every(k: Keychain, period: Duration) {
    let mut t = tokio::time::interval(period);
    t.tick().await;
    loop {
        t.tick().await;
        let k = k.clone();
        let _ = tokio::task::spawn_blocking(move || k.flush()).await;
    }
}

/// [`Keychain`] seen by `stargzfs`'s registry client.
#[derive(Debug, Clone)]
pub struct KeychainSource(pub Keychain);

impl CredentialSource for KeychainSource {
    fn credential(&self, host: &str, repository: &str) -> Option<Credential> {
        Some(match self.0.credentials(host, repository)? {
            Credentials::Basic { username, password } => Credential::Basic { username, password },
            Credentials::IdentityToken(token) => Credential::IdentityToken {
                username: String::new(),
                token,
            },
            Credentials::RegistryToken(t) => Credential::RegistryToken(t),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_secret_reaches_the_registry_client() {
        let k = Keychain::new();
        let src = KeychainSource(k.clone());
        assert_eq!(src.credential("reg.io", "a/b"), None);
        k.insert(
            "reg.io",
            "a/b",
            Credentials::Basic {
                username: "u".into(),
                password: "p".into(),
            },
        );
        assert_eq!(
            src.credential("reg.io", "a/b"),
            Some(Credential::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        k.insert("reg.io", "a/b", Credentials::IdentityToken("i".into()));
        assert_eq!(
            src.credential("reg.io", "a/b"),
            Some(Credential::IdentityToken {
                username: String::new(),
                token: "i".into()
            })
        );
        k.insert("reg.io", "a/b", Credentials::RegistryToken("t".into()));
        assert_eq!(
            src.credential("reg.io", "a/b"),
            Some(Credential::RegistryToken("t".into()))
        );
        assert_eq!(src.credential("reg.io", "a/c"), None);
    }
}
