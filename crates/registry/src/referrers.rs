//! OCI 1.1 referrers: artifacts whose manifest names another manifest as
//! its `subject` (a signature, an SBOM, a seekable gzip index). Listed by
//! the referrers API, or, for registries without it (distribution 2.8), by
//! the tag schema: an image index tagged `sha256-<hex>` that the pusher
//! keeps up to date.

use crate::error::{Error, Result};
use crate::manifest::{MAX_MANIFEST, MEDIA_OCI_INDEX};
use crate::transport::{execute_any, read_limited, Request};
use crate::{pull_scope, Client, Reference};
use bytes::Bytes;
use http::{header, Method, StatusCode};
use serde_json::{json, Value};

/// One entry of a referrers list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referrer {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
}

/// The fallback tag listing the referrers of `digest` (`sha256:<hex>` ->
/// `sha256-<hex>`).
pub fn fallback_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

fn entries(index: &Value) -> Vec<Referrer> {
    let Some(list) = index.get("manifests").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .filter_map(|m| {
            Some(Referrer {
                digest: m.get("digest")?.as_str()?.to_string(),
                media_type: m.get("mediaType")?.as_str()?.to_string(),
                size: m.get("size")?.as_u64()?,
                artifact_type: m
                    .get("artifactType")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            })
        })
        .collect()
}

impl Client {
    /// The referrers of manifest `digest` in `repo` with `artifact_type`:
    /// from the referrers API, else from the fallback tag; empty if neither
    /// lists any.
    pub async fn referrers(
        &self,
        repo: &Reference,
        digest: &str,
        artifact_type: &str,
    ) -> Result<Vec<Referrer>> {
        let eps = self.endpoints(repo.registry())?;
        let path = format!(
            "/v2/{}/referrers/{}?artifactType={}",
            repo.repository(),
            digest,
            url::form_urlencoded::byte_serialize(artifact_type.as_bytes()).collect::<String>()
        );
        let api = {
            let _permit = self.permit().await?;
            let res = execute_any(&self.inner, &eps, |ep| {
                Request::new(Method::GET, ep.url(&path), pull_scope(repo))
                    .header(header::ACCEPT, MEDIA_OCI_INDEX)
            })
            .await;
            match res {
                Ok((resp, _)) if resp.status() == StatusCode::OK => {
                    let b = read_limited(
                        resp,
                        MAX_MANIFEST,
                        self.inner.cfg.stall_timeout,
                        "referrers",
                    )
                    .await?;
                    serde_json::from_slice::<Value>(&b).ok()
                }
                // No referrers API here (404, 405, ...): the tag schema.
                Ok(_) | Err(Error::NotFound { .. }) => None,
                Err(e) => return Err(e),
            }
        };
        let index = match api {
            Some(v) => v,
            None => match self.resolve(&repo.with_tag(&fallback_tag(digest))).await {
                Ok(r) => serde_json::from_slice(&r.bytes)
                    .map_err(|e| Error::invalid(repo, format!("referrers index: {e}")))?,
                Err(Error::NotFound { .. }) => return Ok(Vec::new()),
                Err(e) => return Err(e),
            },
        };
        Ok(entries(&index)
            .into_iter()
            .filter(|r| r.artifact_type.as_deref() == Some(artifact_type))
            .collect())
    }

    /// Add `referrer` to the fallback tag's index of `subject` (created if
    /// missing; an entry with the same digest is not added twice). For
    /// registries without the referrers API; harmless with it.
    pub async fn add_fallback_referrer(
        &self,
        repo: &Reference,
        subject: &str,
        referrer: &Referrer,
    ) -> Result<()> {
        let tag = repo.with_tag(&fallback_tag(subject));
        let mut index = match self.resolve(&tag).await {
            Ok(r) => serde_json::from_slice::<Value>(&r.bytes)
                .map_err(|e| Error::invalid(repo, format!("referrers index: {e}")))?,
            Err(Error::NotFound { .. }) => {
                json!({"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": []})
            }
            Err(e) => return Err(e),
        };
        if !index.is_object() {
            return Err(Error::invalid(repo, "referrers index is not a JSON object"));
        }
        if entries(&index).iter().any(|r| r.digest == referrer.digest) {
            return Ok(());
        }
        let mut d = json!({
            "mediaType": referrer.media_type,
            "digest": referrer.digest,
            "size": referrer.size,
        });
        if let Some(a) = &referrer.artifact_type {
            d["artifactType"] = json!(a);
        }
        match index.get_mut("manifests").and_then(Value::as_array_mut) {
            Some(list) => list.push(d),
            None => index["manifests"] = json!([d]),
        }
        let bytes = serde_json::to_vec(&index).map_err(|e| Error::invalid(repo, e.to_string()))?;
        self.push_manifest(&tag, MEDIA_OCI_INDEX, Bytes::from(bytes))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_tag_and_entries() {
        assert_eq!(fallback_tag("sha256:abc"), "sha256-abc");
        let v = json!({"manifests": [
            {"mediaType": "m", "digest": "sha256:1", "size": 3, "artifactType": "a"},
            {"mediaType": "m", "digest": "sha256:2"},
        ]});
        let e = entries(&v);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].artifact_type.as_deref(), Some("a"));
        assert!(entries(&json!({})).is_empty());
    }
}
