//! An image as a lazy pull needs it: the verified manifest and config bytes,
//! the layer descriptors, and the diff IDs from which containerd's chain IDs
//! (the snapshot names) are computed.

use crate::error::{Error, Result};
use oci_spec::image::Descriptor;
use sha2::{Digest, Sha256};

pub struct ImageParts {
    /// The reference as the user named it, normalised (the image record's name).
    pub name: String,
    /// The platform's manifest, as served (chosen from an index if need be).
    pub manifest: registry::Resolved,
    pub config: Descriptor,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<Descriptor>,
    /// One per layer.
    pub diff_ids: Vec<String>,
    client: registry::Client,
    reference: registry::Reference,
}

impl ImageParts {
    /// The whole blob of layer `i`, verified against its digest (fallback path).
    pub async fn fetch_layer(&self, i: usize) -> Result<Vec<u8>> {
        let digest = self.layers[i].digest().as_ref();
        let bytes = self
            .client
            .fetch_blob_bytes(&self.reference, digest, u64::MAX)
            .await
            .map_err(Error::registry(format!("fetching layer {digest}")))?;
        Ok(bytes.to_vec())
    }
}

/// containerd's chain IDs: chain[0] = diff[0]; chain[i] = sha256("chain[i-1] diff[i]").
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => format!(
                "sha256:{}",
                hex::encode(Sha256::digest(format!("{prev} {d}")))
            ),
        };
        out.push(next);
    }
    out
}

/// Resolve `reference` for `platform` and fetch its manifest and config.
pub async fn fetch_image(
    client: registry::Client,
    reference: registry::Reference,
    platform: &registry::Platform,
) -> Result<ImageParts> {
    let m = client
        .fetch_manifest_for(&reference, platform)
        .await
        .map_err(Error::registry(format!("resolving {reference}")))?;
    let config = m.manifest.config().clone();
    let (config_bytes, config_json) = client
        .fetch_config(&reference, config.digest().as_ref())
        .await
        .map_err(Error::registry("fetching the image config"))?;
    let layers = m.manifest.layers().clone();
    let diff_ids = config_json.rootfs().diff_ids().clone();
    if diff_ids.len() != layers.len() {
        return Err(Error::DiffIdCount {
            diff_ids: diff_ids.len(),
            layers: layers.len(),
        });
    }
    Ok(ImageParts {
        name: reference.to_string(),
        manifest: m.resolved,
        config,
        config_bytes: config_bytes.to_vec(),
        layers,
        diff_ids,
        client,
        reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAIN_AB: &str =
        "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c";

    #[test]
    fn chain_ids_follow_the_image_spec() {
        // The first chain ID is the first diff ID; each next one hashes
        // "<previous chain ID> <diff ID>" with a single space (image-spec config.md).
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let chains = chain_ids(&[a.clone(), b]);
        assert_eq!(chains[0], a);
        // Independently computed: printf 'sha256:aaa…a sha256:bbb…b' | sha256sum
        assert_eq!(chains[1], CHAIN_AB);
        assert!(chain_ids(&[]).is_empty());
    }
}
