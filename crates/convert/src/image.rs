//! The images of a conversion: which manifests of the source to convert
//! (platform selection from an index), and writing the converted config,
//! manifest and index.

use crate::endpoint::Source;
use crate::error::{Error, Result};
use crate::layer::Converted;
use crate::Platforms;
use oci_layout::{media_types as mt, Descriptor, DescriptorExt, Layout};
use serde_json::Value;
use std::collections::HashMap;

/// One image manifest as read from the source.
#[derive(Clone)]
pub(crate) struct Image {
    /// The descriptor that pointed at it (platform kept for indexes).
    pub desc: Descriptor,
    manifest: Value,
    config_desc: Descriptor,
    pub config: Value,
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<String>,
}

/// Whether an index entry is for `want` (any variant when `want` names none).
fn platform_matches(d: &Descriptor, want: &registry::Platform) -> bool {
    d.platform().as_ref().is_some_and(|p| {
        want.matches(
            &p.os().to_string(),
            &p.architecture().to_string(),
            p.variant().as_deref(),
        )
    })
}

pub(crate) fn collect_images(
    src: &Source,
    root: &Descriptor,
    platforms: &Platforms,
) -> Result<Vec<Image>> {
    if !root.is_index() {
        return Ok(vec![read_image(src, root)?]);
    }
    let (_, idx) = src.read_json_blob(root)?;
    let ms = oci_layout::parse_index(&idx)?;
    let mut manifests = ms.iter().filter(|m| !m.is_index());
    let chosen: Vec<&Descriptor> = match platforms {
        Platforms::All => manifests.collect(),
        Platforms::Host | Platforms::Only(_) => {
            let want = match platforms {
                Platforms::Only(p) => p.clone(),
                _ => registry::Platform::host(),
            };
            // The first match wins (as containerd does).
            let first = manifests.find(|m| platform_matches(m, &want));
            vec![first.ok_or_else(|| Error::NoPlatform(want.to_string()))?]
        }
    };
    if chosen.is_empty() {
        return Err(Error::NoPlatform("any platform".into()));
    }
    chosen.into_iter().map(|d| read_image(src, d)).collect()
}

fn read_image(src: &Source, desc: &Descriptor) -> Result<Image> {
    let media_type = desc.media_type().as_ref();
    if media_type != mt::OCI_MANIFEST && media_type != mt::DOCKER_MANIFEST {
        return Err(Error::UnsupportedManifest(media_type.to_string()));
    }
    let (_, manifest) = src.read_json_blob(desc)?;
    let oci_layout::ManifestParts {
        config: config_desc,
        layers,
    } = oci_layout::parse_manifest(&manifest)?;
    let (_, config) = src.read_json_blob(&config_desc)?;
    let diff_ids = oci_layout::parse_diff_ids(&config, layers.len())?;
    Ok(Image {
        desc: desc.clone(),
        manifest,
        config_desc,
        config,
        layers,
        diff_ids,
    })
}

fn to_value<T: serde::Serialize>(v: T) -> Value {
    serde_json::to_value(v).expect("descriptors serialize")
}

/// Write the converted config and manifest; returns both descriptors.
pub(crate) fn write_image(
    dst: &Layout,
    img: &Image,
    done: &HashMap<String, Converted>,
) -> Result<(Descriptor, Descriptor)> {
    let conv: Vec<&Converted> = img
        .layers
        .iter()
        .map(|l| &done[l.digest().as_ref()])
        .collect();
    // Both documents were checked to be objects with an object `rootfs`
    // by `parse_manifest` / `parse_diff_ids`, so indexing cannot panic.
    let mut config = img.config.clone();
    config["rootfs"]["diff_ids"] = conv
        .iter()
        .map(|c| Value::from(c.diff_id.clone()))
        .collect();
    let config_mt = match img.config_desc.media_type().as_ref() {
        mt::DOCKER_CONFIG => mt::OCI_CONFIG,
        other => other,
    };
    let mut config_desc = dst.put_blob(config_mt, config.to_string().as_bytes())?;
    config_desc.set_annotations(img.config_desc.annotations().clone());

    let mut manifest = img.manifest.clone();
    manifest["mediaType"] = mt::OCI_MANIFEST.into();
    manifest["config"] = to_value(&config_desc);
    manifest["layers"] = to_value(conv.iter().map(|c| &c.desc).collect::<Vec<_>>());
    let mut desc = dst.put_blob(mt::OCI_MANIFEST, manifest.to_string().as_bytes())?;
    desc.set_platform(img.desc.platform().clone());
    Ok((config_desc, desc))
}

pub(crate) fn write_index(
    src: &Source,
    dst: &Layout,
    root: &Descriptor,
    manifests: Vec<Descriptor>,
) -> Result<Descriptor> {
    // `collect_images` parsed this index, so it is an object.
    let (_, mut idx) = src.read_json_blob(root)?;
    idx["mediaType"] = mt::OCI_INDEX.into();
    idx["manifests"] = to_value(manifests);
    Ok(dst.put_blob(mt::OCI_INDEX, idx.to_string().as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_platforms() {
        let d: Descriptor = serde_json::from_value(serde_json::json!({
            "mediaType": mt::OCI_MANIFEST,
            "digest": format!("sha256:{}", "a".repeat(64)),
            "size": 1,
            "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}
        }))
        .unwrap();
        let p = |s| registry::Platform::parse(s).unwrap();
        assert!(platform_matches(&d, &p("linux/arm")));
        assert!(platform_matches(&d, &p("linux/arm/v7")));
        assert!(!platform_matches(&d, &p("linux/arm/v6")));
        assert!(!platform_matches(&d, &p("linux/amd64")));
    }
}
