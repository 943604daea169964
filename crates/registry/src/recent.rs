//! Answers the registry gave moments ago, for callers that ask the same
//! question once per layer: the snapshotter prepares an image's layers one
//! after another and each Prepare needs the image manifest (TOC digests,
//! diff IDs) and, for a layer without a TOC, the manifest's referrers
//! (a seekable index). On a distant registry each repeat is a round trip.
//!
//! Only callers that can tell a stale answer from a fresh one use this: a
//! tag moved since is noticed because the layer asked about is not in the
//! remembered manifest ([`Client::forget_manifest`] then refetches). One
//! in-flight request serves every caller that asks meanwhile. Failures are
//! not remembered.

use crate::error::Result;
use crate::referrers::Referrer;
use crate::{Client, Manifest, Reference};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::OnceCell;

/// At most this many answers are kept (they are small; a node pulls a
/// handful of images at once).
const MAX_ENTRIES: usize = 256;

type Cell<T> = Arc<OnceCell<(Instant, T)>>;

/// Remembered answers by key, each filled once; also for callers that
/// remember what they made of several answers.
pub struct Recent<T> {
    cells: Mutex<HashMap<String, Cell<T>>>,
}

impl<T> Default for Recent<T> {
    fn default() -> Self {
        Recent {
            cells: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> Recent<T> {
    /// The answer for `key` if it is younger than `max_age`, else `fetch`'s
    /// (shared with concurrent callers; an error leaves nothing behind).
    pub async fn get<F, Fut, E>(&self, key: &str, max_age: Duration, fetch: F) -> Result<T, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let cell = {
            let mut cells = self.cells.lock();
            // In flight (empty) or young enough.
            let fresh = |c: &Cell<T>| c.get().is_none_or(|(t, _)| t.elapsed() < max_age);
            if cells.get(key).is_some_and(|c| !fresh(c)) {
                cells.remove(key);
            }
            if cells.len() >= MAX_ENTRIES {
                cells.retain(|_, c| fresh(c));
                if cells.len() >= MAX_ENTRIES {
                    cells.clear();
                }
            }
            cells.entry(key.to_string()).or_default().clone()
        };
        let (_, v) = cell
            .get_or_try_init(|| async { Ok((Instant::now(), fetch().await?)) })
            .await?;
        Ok(v.clone())
    }

    pub fn forget(&self, key: &str) {
        self.cells.lock().remove(key);
    }
}

impl Client {
    /// [`Client::fetch_manifest`], answered from memory when the same
    /// reference was fetched less than `max_age` ago.
    pub async fn fetch_manifest_recent(
        &self,
        r: &Reference,
        max_age: Duration,
    ) -> Result<Manifest> {
        self.inner
            .recent_manifests
            .get(&r.to_string(), max_age, || self.fetch_manifest(r))
            .await
    }

    /// Drop the remembered manifest of `r` (its tag may have moved).
    pub fn forget_manifest(&self, r: &Reference) {
        self.inner.recent_manifests.forget(&r.to_string());
    }

    /// [`Client::referrers`], answered from memory when asked less than
    /// `max_age` ago.
    pub async fn referrers_recent(
        &self,
        repo: &Reference,
        digest: &str,
        artifact_type: &str,
        max_age: Duration,
    ) -> Result<Vec<Referrer>> {
        let key = format!("{repo}@{digest} {artifact_type}");
        self.inner
            .recent_referrers
            .get(&key, max_age, || {
                self.referrers(repo, digest, artifact_type)
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn one_fetch_serves_callers_until_it_is_old() {
        let r: Recent<u32> = Recent::default();
        let calls = AtomicUsize::new(0);
        let fetch = || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, crate::Error>(7)
        };
        let long = Duration::from_secs(60);
        let (a, b) = tokio::join!(r.get("k", long, fetch), r.get("k", long, fetch));
        assert_eq!((a.unwrap(), b.unwrap()), (7, 7));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(r.get("k", Duration::ZERO, fetch).await.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 2, "too old: fetched again");
        r.forget("k");
        r.get("k", long, fetch).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "forgotten: fetched again");
    }

    #[tokio::test]
    async fn failures_are_not_remembered() {
        let r: Recent<u32> = Recent::default();
        let long = Duration::from_secs(60);
        let err = r
            .get("k", long, || async {
                Err::<u32, _>(crate::Error::NoPlatform("x".into()))
            })
            .await;
        assert!(err.is_err());
        assert_eq!(
            r.get("k", long, || async { Ok::<_, crate::Error>(1) })
                .await
                .unwrap(),
            1
        );
    }

    #[tokio::test]
    async fn the_number_of_answers_is_bounded() {
        let r: Recent<u32> = Recent::default();
        for i in 0..(MAX_ENTRIES * 2) {
            r.get(&i.to_string(), Duration::from_secs(60), || async {
                Ok::<_, crate::Error>(1)
            })
            .await
            .unwrap();
        }
        assert!(r.cells.lock().len() <= MAX_ENTRIES);
    }
}
