//! Parsing what a layout holds (index, manifest, config, `oci:DIR:TAG`),
//! each validated so that nothing malformed reaches a path or a panic.

use crate::error::{Error, Result};
use crate::{media_types as mt, REF_NAME};
use oci_spec::image::{Descriptor, Digest};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::path::PathBuf;

/// `sha256:` and 64 lowercase hex digits; anything else is refused.
pub fn check_digest(d: &str) -> Result<&str> {
    let hex = d
        .strip_prefix("sha256:")
        .ok_or_else(|| Error::UnsupportedDigest(d.to_string()))?;
    let ok = hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !ok {
        return Err(Error::MalformedDigest(d.to_string()));
    }
    Ok(hex)
}

/// A checked digest as oci-spec's type.
pub fn parse_digest(d: &str) -> Result<Digest> {
    check_digest(d)?;
    d.parse().map_err(|_| Error::MalformedDigest(d.to_string()))
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// What the layout code asks of a descriptor beyond oci-spec's getters.
pub trait DescriptorExt {
    fn is_index(&self) -> bool;
    fn annotation(&self, key: &str) -> Option<&str>;
    fn insert_annotation(&mut self, key: &str, value: String);
}

impl DescriptorExt for Descriptor {
    fn is_index(&self) -> bool {
        matches!(self.media_type().as_ref(), mt::OCI_INDEX | mt::DOCKER_LIST)
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations().as_ref()?.get(key).map(String::as_str)
    }

    fn insert_annotation(&mut self, key: &str, value: String) {
        let mut a = self.annotations().clone().unwrap_or_default();
        a.insert(key.to_string(), value);
        self.set_annotations(Some(a));
    }
}

fn descriptors(v: &Value, what: &'static str) -> Result<Vec<Descriptor>> {
    let ds: Vec<Descriptor> =
        serde_json::from_value(v.clone()).map_err(|source| Error::Malformed { what, source })?;
    for d in &ds {
        check_digest(d.digest().as_ref())?;
    }
    Ok(ds)
}

fn descriptor(v: &Value, what: &'static str) -> Result<Descriptor> {
    let d: Descriptor =
        serde_json::from_value(v.clone()).map_err(|source| Error::Malformed { what, source })?;
    check_digest(d.digest().as_ref())?;
    Ok(d)
}

/// The manifests an index lists (index.json or an image index blob).
pub fn parse_index(idx: &Value) -> Result<Vec<Descriptor>> {
    if !idx.is_object() {
        return Err(Error::NotAnObject("index"));
    }
    descriptors(&idx["manifests"], "index manifests")
}

/// The manifest tagged `tag` (`org.opencontainers.image.ref.name`), or the
/// only one when `tag` is `None`.
pub fn select_tag(ms: Vec<Descriptor>, tag: Option<&str>) -> Result<Descriptor> {
    match tag {
        Some(t) => {
            let mut hits = ms.into_iter().filter(|m| m.annotation(REF_NAME) == Some(t));
            let d = hits.next().ok_or_else(|| Error::NoSuchTag(t.to_string()))?;
            if hits.next().is_some() {
                return Err(Error::AmbiguousTag(t.to_string()));
            }
            Ok(d)
        }
        None => {
            let n = ms.len();
            let mut it = ms.into_iter();
            match (it.next(), n) {
                (Some(d), 1) => Ok(d),
                (None, _) => Err(Error::NoImage),
                (Some(_), n) => Err(Error::ManyImages(n)),
            }
        }
    }
}

/// What a conversion needs from an image manifest; digests are validated.
#[derive(Debug)]
pub struct ManifestParts {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

pub fn parse_manifest(m: &Value) -> Result<ManifestParts> {
    if !m.is_object() {
        return Err(Error::NotAnObject("manifest"));
    }
    Ok(ManifestParts {
        config: descriptor(&m["config"], "manifest config descriptor")?,
        layers: descriptors(&m["layers"], "manifest layers")?,
    })
}

/// `rootfs.diff_ids` of an image config, one valid digest per layer.
pub fn parse_diff_ids(config: &Value, layers: usize) -> Result<Vec<String>> {
    if !config.is_object() || !config["rootfs"].is_object() {
        return Err(Error::NotAnObject("config rootfs"));
    }
    let ids: Vec<String> =
        serde_json::from_value(config["rootfs"]["diff_ids"].clone()).map_err(|source| {
            Error::Malformed {
                what: "config rootfs.diff_ids",
                source,
            }
        })?;
    if ids.len() != layers {
        return Err(Error::DiffIdCount {
            layers,
            diff_ids: ids.len(),
        });
    }
    for d in &ids {
        check_digest(d)?;
    }
    Ok(ids)
}

/// `oci:DIR[:TAG]`.
#[derive(Debug, PartialEq)]
pub struct OciRef {
    pub dir: PathBuf,
    pub tag: Option<String>,
}

impl OciRef {
    pub fn parse(s: &str) -> Result<OciRef> {
        let rest = s
            .strip_prefix("oci:")
            .filter(|r| !r.is_empty())
            .ok_or_else(|| Error::NotOciRef(s.to_string()))?;
        // A tag never contains '/', so "oci:a:b/c" is the directory "a:b/c".
        match rest.rsplit_once(':') {
            Some((dir, tag)) if !tag.contains('/') && !dir.is_empty() => {
                if !valid_tag(tag) {
                    return Err(Error::BadTag {
                        reference: s.to_string(),
                        tag: tag.to_string(),
                    });
                }
                Ok(OciRef {
                    dir: dir.into(),
                    tag: Some(tag.to_string()),
                })
            }
            _ => Ok(OciRef {
                dir: rest.into(),
                tag: None,
            }),
        }
    }
}

/// The OCI distribution spec's tag grammar: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !t.starts_with(['.', '-'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_validated_before_becoming_paths() {
        let h = "a".repeat(64);
        assert!(check_digest(&format!("sha256:{h}")).is_ok());
        assert!(parse_digest(&format!("sha256:{h}")).is_ok());
        for bad in [
            "sha256:../../etc/passwd".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha512:{h}"),
            format!("sha256:{}", "a".repeat(63)),
            h.clone(),
        ] {
            assert!(check_digest(&bad).is_err(), "{bad}");
            assert!(parse_digest(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_oci_refs() {
        let r = OciRef::parse("oci:/tmp/x:v1").unwrap();
        assert_eq!(
            r,
            OciRef {
                dir: "/tmp/x".into(),
                tag: Some("v1".into())
            }
        );
        let r = OciRef::parse("oci:/tmp/x").unwrap();
        assert_eq!(
            r,
            OciRef {
                dir: "/tmp/x".into(),
                tag: None
            }
        );
        let r = OciRef::parse("oci:rel/a:b/c").unwrap();
        assert_eq!(
            r,
            OciRef {
                dir: "rel/a:b/c".into(),
                tag: None
            }
        );
        assert!(OciRef::parse("docker.io/library/busybox").is_err());
        assert!(OciRef::parse("oci:").is_err());
        assert!(OciRef::parse("oci:/x:bad tag").is_err());
    }

    #[test]
    fn bad_documents_are_errors() {
        let h = format!("sha256:{}", "a".repeat(64));
        assert!(parse_index(&serde_json::json!([])).is_err());
        assert!(parse_index(&serde_json::json!({"manifests": 3})).is_err());
        let bad = serde_json::json!({"manifests": [
            {"mediaType": mt::OCI_MANIFEST, "digest": "sha256:../x", "size": 1}]});
        assert!(parse_index(&bad).is_err());
        let m = serde_json::json!({
            "config": {"mediaType": mt::OCI_CONFIG, "digest": h, "size": 2},
            "layers": [{"mediaType": mt::OCI_LAYER_GZIP, "digest": h, "size": 3}]});
        let p = parse_manifest(&m).unwrap();
        assert_eq!(p.layers.len(), 1);
        let cfg = serde_json::json!({"rootfs": {"diff_ids": [h]}});
        assert_eq!(parse_diff_ids(&cfg, 1).unwrap(), std::slice::from_ref(&h));
        assert!(matches!(
            parse_diff_ids(&cfg, 2),
            Err(Error::DiffIdCount {
                layers: 2,
                diff_ids: 1
            })
        ));
        assert!(matches!(select_tag(vec![], None), Err(Error::NoImage)));
    }
}
