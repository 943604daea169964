//! Resolving references to manifests, choosing a platform from an index, and
//! fetching image configs. Everything returned here matched its digest.

use crate::digest::{verify, Digest};
use crate::error::{Error, Result};
use crate::transport::{execute_any, read_limited, unexpected, Request};
use crate::{pull_scope, Client, Reference};
use bytes::Bytes;
use http::{header, Method};
use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest};
use std::fmt;

pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// distribution refuses manifests over 4 MiB; so do we.
pub const MAX_MANIFEST: u64 = 4 << 20;
pub const MAX_CONFIG: u64 = 64 << 20;

/// A manifest or index as served, verified against `digest`.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub digest: String,
    pub media_type: String,
    pub bytes: Bytes,
}

impl Resolved {
    pub fn is_index(&self) -> bool {
        self.media_type == MEDIA_OCI_INDEX || self.media_type == MEDIA_DOCKER_LIST
    }
}

/// An image manifest for one platform, and the index it was chosen from.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub resolved: Resolved,
    pub manifest: ImageManifest,
    pub index: Option<Resolved>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// The platform this process runs on, in OCI terms.
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "x86" => ("386", None),
            "powerpc64" => ("ppc64le", None),
            "s390x" => ("s390x", None),
            "riscv64" => ("riscv64", None),
            other => (other, None),
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        }
    }

    /// `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Platform> {
        let mut it = s.split('/');
        let (os, arch) = match (it.next(), it.next()) {
            (Some(o), Some(a)) if !o.is_empty() && !a.is_empty() => (o, a),
            _ => {
                return Err(Error::Config(format!(
                    "bad platform {s:?}: want os/arch[/variant]"
                )))
            }
        };
        let variant = it.next().filter(|v| !v.is_empty()).map(str::to_string);
        if it.next().is_some() {
            return Err(Error::Config(format!("bad platform {s:?}")));
        }
        Ok(Platform {
            os: os.into(),
            architecture: arch.into(),
            variant,
        })
    }

    /// Whether an image for `os/arch[/variant]` runs here (no variant
    /// wanted: any variant does).
    pub fn matches(&self, os: &str, arch: &str, variant: Option<&str>) -> bool {
        if self.os != os || self.architecture != arch {
            return false;
        }
        // arm64 images usually omit the (only) variant v8.
        let norm = |v: Option<&str>| match (arch, v) {
            ("arm64", Some("v8")) => None,
            (_, v) => v.map(str::to_string),
        };
        match &self.variant {
            None => true,
            Some(v) => norm(Some(v)) == norm(variant),
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

fn media_type_of(content_type: Option<&str>, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    // The body's own mediaType wins; registries sometimes send a generic Content-Type.
    if let Ok(p) = serde_json::from_slice::<Probe>(body) {
        if let Some(m) = p.media_type.filter(|m| !m.is_empty()) {
            return m;
        }
        if p.manifests.is_some() {
            return MEDIA_OCI_INDEX.into();
        }
    }
    match content_type.map(|c| c.split(';').next().unwrap_or("").trim()) {
        Some(c) if !c.is_empty() && c != "application/json" && c != "text/plain" => c.to_string(),
        _ => MEDIA_OCI_MANIFEST.into(),
    }
}

/// Pick the manifest for `platform` from an index.
pub fn select_platform(index: &ImageIndex, platform: &Platform) -> Option<(String, String)> {
    index.manifests().iter().find_map(|d| {
        let p = d.platform().as_ref()?;
        platform
            .matches(
                &p.os().to_string(),
                &p.architecture().to_string(),
                p.variant().as_deref(),
            )
            .then(|| (d.digest().to_string(), d.media_type().to_string()))
    })
}

impl Client {
    /// Fetch the manifest or index `r` names; verified against the digest in
    /// `r` if it has one, else its digest is computed from the bytes.
    pub async fn resolve(&self, r: &Reference) -> Result<Resolved> {
        let eps = self.endpoints(r.registry())?;
        let _permit = self
            .inner
            .sem
            .acquire()
            .await
            .map_err(|_| Error::Config("client closed".into()))?;
        let path = format!("/v2/{}/manifests/{}", r.repository(), r.manifest_ref());
        let (resp, _) = execute_any(&self.inner, &eps, |ep| {
            Request::new(Method::GET, ep.url(&path), pull_scope(r))
                .header(header::ACCEPT, MANIFEST_ACCEPT)
        })
        .await?;
        if !resp.status().is_success() {
            return Err(unexpected(resp).await);
        }
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let server_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes =
            read_limited(resp, MAX_MANIFEST, self.inner.cfg.stall_timeout, "manifest").await?;
        let digest = match r.digest() {
            Some(d) => {
                verify(d, &bytes)?;
                d.to_string()
            }
            None => {
                // The registry's Docker-Content-Digest names what the tag
                // points at (containerd fetches by it and checks the bytes):
                // bytes that do not hash to it are corrupt or forged.
                if let Some(sd) = server_digest.filter(|s| s.starts_with("sha256:")) {
                    verify(&sd, &bytes)?;
                }
                Digest::sha256_of(&bytes)
            }
        };
        let media_type = media_type_of(ct.as_deref(), &bytes);
        Ok(Resolved {
            digest,
            media_type,
            bytes,
        })
    }

    /// The image manifest of `r` for the host platform.
    pub async fn fetch_manifest(&self, r: &Reference) -> Result<Manifest> {
        self.fetch_manifest_for(r, &Platform::host()).await
    }

    /// The image manifest of `r` for `platform` (when `r` names an index).
    pub async fn fetch_manifest_for(&self, r: &Reference, platform: &Platform) -> Result<Manifest> {
        let first = self.resolve(r).await?;
        let (resolved, index) = if first.is_index() {
            let idx: ImageIndex = serde_json::from_slice(&first.bytes)
                .map_err(|e| Error::invalid(r, format!("image index: {e}")))?;
            let (digest, _) = select_platform(&idx, platform)
                .ok_or_else(|| Error::NoPlatform(platform.to_string()))?;
            let m = self.resolve(&r.with_digest(&digest)).await?;
            if m.is_index() {
                return Err(Error::invalid(r, "index points at another index"));
            }
            (m, Some(first))
        } else {
            (first, None)
        };
        let manifest: ImageManifest = serde_json::from_slice(&resolved.bytes)
            .map_err(|e| Error::invalid(r, format!("image manifest: {e}")))?;
        Ok(Manifest {
            resolved,
            manifest,
            index,
        })
    }

    /// The image config blob `digest` of `repo`, verified and parsed.
    pub async fn fetch_config(
        &self,
        repo: &Reference,
        digest: &str,
    ) -> Result<(Bytes, ImageConfiguration)> {
        let bytes = self.fetch_blob_bytes(repo, digest, MAX_CONFIG).await?;
        let cfg = serde_json::from_slice(&bytes)
            .map_err(|e| Error::invalid(repo, format!("image config: {e}")))?;
        Ok((bytes, cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_selection() {
        let idx: ImageIndex = serde_json::from_str(
            r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
             "digest":"sha256:1111111111111111111111111111111111111111111111111111111111111111",
             "platform":{"os":"linux","architecture":"arm","variant":"v6"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
             "digest":"sha256:2222222222222222222222222222222222222222222222222222222222222222",
             "platform":{"os":"linux","architecture":"arm","variant":"v7"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
             "digest":"sha256:3333333333333333333333333333333333333333333333333333333333333333",
             "platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","size":1,
             "digest":"sha256:4444444444444444444444444444444444444444444444444444444444444444",
             "platform":{"os":"linux","architecture":"amd64"}}]}"#,
        )
        .unwrap();
        let pick = |p: &str| {
            select_platform(&idx, &Platform::parse(p).unwrap()).map(|(d, _)| d[7..8].to_string())
        };
        assert_eq!(pick("linux/arm/v7").as_deref(), Some("2"));
        assert_eq!(pick("linux/arm64").as_deref(), Some("3"));
        assert_eq!(pick("linux/arm64/v8").as_deref(), Some("3"));
        assert_eq!(pick("linux/amd64").as_deref(), Some("4"));
        assert_eq!(pick("windows/amd64"), None);
        assert!(Platform::parse("linux").is_err());
        assert_eq!(
            Platform::parse("linux/arm/v7").unwrap().to_string(),
            "linux/arm/v7"
        );
    }

    #[test]
    fn media_type_from_body_or_header() {
        assert_eq!(
            media_type_of(Some("application/json"), br#"{"manifests":[]}"#),
            MEDIA_OCI_INDEX
        );
        assert_eq!(
            media_type_of(
                None,
                format!(r#"{{"mediaType":"{MEDIA_DOCKER_LIST}"}}"#).as_bytes()
            ),
            MEDIA_DOCKER_LIST
        );
        assert_eq!(
            media_type_of(Some(MEDIA_DOCKER_MANIFEST), b"{}"),
            MEDIA_DOCKER_MANIFEST
        );
    }
}
