//! What the proxy learnt from `PullImage` requests: credentials per
//! registry host and repository, in memory and optionally in a [`Store`]
//! (so they survive a restart), with their expiry. Only secrets are kept,
//! never the short-lived registry tokens obtained with them: after a
//! restart those are fetched again with the stored secret. Secrets never
//! appear in `Debug` output (and so in no log line that prints them).

use crate::credentials::Credentials;
use crate::store::{Store, StoreError, StoredEntry};
use base64::Engine;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// When a remembered secret is dropped: `ttl` after it was last used
/// (`None`: never for its age), and a token whose own expiry has passed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expiry {
    pub ttl: Option<Duration>,
}

/// A last-used time is written to disk at most this often per entry, so
/// that a registry request stays a map lookup.
const TOUCH_SECS: u64 = 60;

struct Entry {
    creds: Credentials,
    /// Unix seconds; advanced in steps of [`TOUCH_SECS`].
    last_used: AtomicU64,
}

#[derive(Default)]
struct Inner {
    entries: RwLock<HashMap<(String, String), Entry>>,
    store: Option<Store>,
    expiry: Expiry,
    /// A last-used time moved since the file was written.
    dirty: AtomicBool,
    /// One writer of the file at a time, in the order of the changes.
    writing: Mutex<()>,
}

/// Credentials by (host, repository); cheap to clone and share between the
/// proxy and the snapshotter's registry client. In memory only
/// ([`Keychain::new`]) or kept in a [`Store`] ([`Keychain::persistent`]).
#[derive(Clone, Default)]
pub struct Keychain {
    inner: Arc<Inner>,
}

impl fmt::Debug for Keychain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keychain")
            .field("entries", &self.len())
            .field("store", &self.inner.store.as_ref().map(Store::path))
            .finish()
    }
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Keychain {
    /// In memory only.
    pub fn new() -> Keychain {
        Keychain::default()
    }

    /// Kept in `store`: what it holds is loaded now, less what has expired,
    /// and every change is written back. A file that cannot be read is an
    /// error (the caller decides whether to start without it).
    pub fn persistent(store: Store, expiry: Expiry) -> Result<Keychain, StoreError> {
        Keychain::load_at(store, expiry, now_secs())
    }

    fn load_at(store: Store, expiry: Expiry, now: u64) -> Result<Keychain, StoreError> {
        let loaded = store.load()?;
        let total = loaded.len();
        let entries: HashMap<_, _> = loaded
            .into_iter()
            .filter(|e| !expired(&e.credentials, e.last_used, expiry, now))
            .map(|e| {
                let entry = Entry {
                    creds: e.credentials,
                    last_used: AtomicU64::new(e.last_used),
                };
                ((e.host, e.repository), entry)
            })
            .collect();
        let dropped = total - entries.len();
        tracing::info!(path = %store.path().display(), entries = entries.len(), expired = dropped, "CRI keychain loaded");
        let k = Keychain {
            inner: Arc::new(Inner {
                entries: RwLock::new(entries),
                store: Some(store),
                expiry,
                ..Default::default()
            }),
        };
        if dropped > 0 {
            k.save();
        }
        Ok(k)
    }

    /// Remember `creds` for `host`/`repository` (replacing older ones: the
    /// kubelet sends the current secret with every pull), on disk too before
    /// it returns; returns the replaced ones.
    pub fn insert(&self, host: &str, repository: &str, creds: Credentials) -> Option<Credentials> {
        let entry = Entry {
            creds,
            last_used: AtomicU64::new(now_secs()),
        };
        let old = self
            .inner
            .entries
            .write()
            .insert((host.to_string(), repository.to_string()), entry);
        self.save();
        old.map(|e| e.creds)
    }

    /// Put back what [`Keychain::insert`] replaced (`None`: forget the entry).
    pub fn restore(&self, host: &str, repository: &str, previous: Option<Credentials>) {
        let key = (host.to_string(), repository.to_string());
        {
            let mut e = self.inner.entries.write();
            match previous {
                Some(creds) => e.insert(
                    key,
                    Entry {
                        creds,
                        last_used: AtomicU64::new(now_secs()),
                    },
                ),
                None => e.remove(&key),
            };
        }
        self.save();
    }

    /// The credentials last seen for `host`/`repository`, unless expired
    /// (then the registry gets no secret of ours, refuses, and the layer is
    /// reported unavailable). Marks them used.
    pub fn credentials(&self, host: &str, repository: &str) -> Option<Credentials> {
        self.credentials_at(host, repository, now_secs())
    }

    fn credentials_at(&self, host: &str, repository: &str, now: u64) -> Option<Credentials> {
        let map = self.inner.entries.read();
        let e = map.get(&(host.to_string(), repository.to_string()))?;
        let last = e.last_used.load(Ordering::Relaxed);
        if expired(&e.creds, last, self.inner.expiry, now) {
            return None;
        }
        if now >= last + TOUCH_SECS
            && e.last_used
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.inner.dirty.store(true, Ordering::Relaxed);
        }
        Some(e.creds.clone())
    }

    /// Write the last-used times if any moved, and forget expired entries
    /// (the daemon calls this now and then, off the async runtime).
    pub fn flush(&self) {
        let now = now_secs();
        let before = self.len();
        self.inner.entries.write().retain(|_, e| {
            !expired(
                &e.creds,
                e.last_used.load(Ordering::Relaxed),
                self.inner.expiry,
                now,
            )
        });
        let dropped = before != self.len();
        if self.inner.dirty.swap(false, Ordering::Relaxed) || dropped {
            self.save();
        }
    }

    /// Write every entry to the store, if there is one; a failure is
    /// logged (the secret still works until the daemon stops).
    fn save(&self) {
        let Some(store) = &self.inner.store else {
            return;
        };
        let _w = self.inner.writing.lock();
        let entries: Vec<StoredEntry> = self
            .inner
            .entries
            .read()
            .iter()
            .map(|((host, repository), e)| StoredEntry {
                host: host.clone(),
                repository: repository.clone(),
                credentials: e.creds.clone(),
                last_used: e.last_used.load(Ordering::Relaxed),
            })
            .collect();
        if let Err(e) = store.save(&entries) {
            tracing::warn!(error = %e, "CRI keychain not saved; it will not survive a restart");
        }
    }

    pub fn len(&self) -> usize {
        self.inner.entries.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a secret last used at `last_used` is no longer to be used at
/// `now`: unused for longer than the TTL, or a token past its own expiry.
fn expired(c: &Credentials, last_used: u64, x: Expiry, now: u64) -> bool {
    if x.ttl
        .is_some_and(|ttl| now.saturating_sub(last_used) > ttl.as_secs())
    {
        return true;
    }
    match c {
        Credentials::Basic { .. } => false,
        Credentials::IdentityToken(t) | Credentials::RegistryToken(t) => {
            jwt_expiry(t).is_some_and(|exp| now >= exp)
        }
    }
}

/// The `exp` claim of a JWT (unverified: we only decide when to stop
/// sending it; the registry decides whether it is good), if it is one.
fn jwt_expiry(token: &str) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct Claims {
        exp: Option<f64>,
    }
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<Claims>(&raw).ok()?.exp?;
    (exp.is_finite() && exp >= 0.0).then_some(exp as u64)
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

    fn jwt(claims: &str) -> String {
        let b = |t: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(t);
        format!("{}.{}.sig", b(r#"{"alg":"ES256"}"#), b(claims))
    }

    #[test]
    fn token_expiry_is_read_from_a_jwt_only() {
        assert_eq!(
            jwt_expiry(&jwt(r#"{"exp":1700000000,"sub":"x"}"#)),
            Some(1700000000)
        );
        assert_eq!(jwt_expiry(&jwt(r#"{"exp":1.5e9}"#)), Some(1500000000));
        assert_eq!(jwt_expiry(&jwt(r#"{"sub":"x"}"#)), None);
        assert_eq!(jwt_expiry(&jwt(r#"{"exp":-1}"#)), None);
        assert_eq!(jwt_expiry("opaque-token"), None);
        assert_eq!(jwt_expiry("a.!!!.c"), None);
    }

    #[test]
    fn expired_secrets_are_not_handed_out() {
        let day = Duration::from_secs(86_400);
        let ttl = Expiry { ttl: Some(day) };
        let basic = Credentials::Basic {
            username: "u".into(),
            password: "p".into(),
        };
        assert!(!expired(&basic, 1000, ttl, 1000 + 86_400));
        assert!(expired(&basic, 1000, ttl, 1000 + 86_401));
        assert!(!expired(&basic, 0, Expiry::default(), u64::MAX));
        let tok = Credentials::RegistryToken(jwt(r#"{"exp":5000}"#));
        assert!(!expired(&tok, 4000, Expiry::default(), 4999));
        assert!(expired(&tok, 4000, Expiry::default(), 5000));
        let idt = Credentials::IdentityToken(jwt(r#"{"exp":5000}"#));
        assert!(expired(&idt, 4000, ttl, 6000));
        let opaque = Credentials::RegistryToken("opaque".into());
        assert!(!expired(&opaque, 4000, Expiry::default(), 1 << 40));

        // Through the keychain: unused for longer than the TTL, no answer.
        let k = Keychain {
            inner: Arc::new(Inner {
                expiry: ttl,
                ..Default::default()
            }),
        };
        k.insert("h", "r", basic.clone());
        let t0 = k.inner.entries.read()[&("h".to_string(), "r".to_string())]
            .last_used
            .load(Ordering::Relaxed);
        assert_eq!(k.credentials_at("h", "r", t0 + 86_000), Some(basic.clone()));
        // That use moved the last-used time: a day after it, still good.
        assert_eq!(k.credentials_at("h", "r", t0 + 2 * 86_000), Some(basic));
        assert_eq!(k.credentials_at("h", "r", t0 + 4 * 86_000), None);
    }

    #[test]
    fn a_persistent_keychain_survives_a_restart_less_what_expired() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(&d.path().join("kc"));
        let day = Expiry {
            ttl: Some(Duration::from_secs(86_400)),
        };
        let basic = Credentials::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        let k = Keychain::persistent(store.clone(), day).unwrap();
        k.insert("reg.io", "a/b", basic.clone());
        k.insert("reg.io", "old", Credentials::IdentityToken("i".into()));
        k.insert(
            "reg.io",
            "tok",
            Credentials::RegistryToken(jwt(r#"{"exp":1}"#)),
        );
        // A refused secret put back: the file follows.
        let prev = k.insert("reg.io", "a/b", Credentials::RegistryToken("bad".into()));
        k.restore("reg.io", "a/b", prev);
        drop(k);

        let now = now_secs();
        let k = Keychain::load_at(store.clone(), day, now).unwrap();
        assert_eq!(k.credentials("reg.io", "a/b"), Some(basic.clone()));
        assert_eq!(k.credentials("reg.io", "tok"), None, "past its exp");
        assert_eq!(k.len(), 2, "the expired token is dropped at load");
        // Two days later the unused ones are gone, from the file too.
        let k = Keychain::load_at(store.clone(), day, now + 2 * 86_400).unwrap();
        assert!(k.is_empty());
        assert_eq!(store.load().unwrap(), Vec::new());
    }

    #[test]
    fn last_use_reaches_the_file_on_flush() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::new(d.path());
        let k = Keychain::persistent(store.clone(), Expiry::default()).unwrap();
        k.insert("h", "r", Credentials::RegistryToken("t".into()));
        let t0 = store.load().unwrap()[0].last_used;
        k.credentials_at("h", "r", t0 + 1);
        k.flush();
        assert_eq!(
            store.load().unwrap()[0].last_used,
            t0,
            "within a minute: not moved"
        );
        k.credentials_at("h", "r", t0 + 3600);
        assert_eq!(
            store.load().unwrap()[0].last_used,
            t0,
            "not written on lookup"
        );
        k.flush();
        assert_eq!(store.load().unwrap()[0].last_used, t0 + 3600);
    }
}
