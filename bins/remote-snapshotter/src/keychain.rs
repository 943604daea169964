//! The CRI keychain as the registry client's credential source: what the
//! kubelet's `PullImage` requests carried, per host and repository.

use cri_keychain::{Credentials, Keychain};
use stargzfs::{Credential, CredentialSource};

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
