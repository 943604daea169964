//! The unpack of a lazy pull. Manifest and config go into containerd's
//! content store (with the gc labels that keep them and the snapshots
//! alive), each layer is `Prepare`d with the remote-snapshot labels; the
//! snapshotter answers AlreadyExists for a layer it mounted lazily, and an
//! active snapshot for one it cannot, which we then fill through containerd's
//! content and diff services like an ordinary pull.

use crate::client::{Containerd, Prepared};
use crate::error::{Error, Result};
use crate::image::{chain_ids, ImageParts};
use containerd_client::types::{Descriptor, Mount};
use snapshot_labels::labels::{
    CRI_DIGEST, CRI_LAYERS, CRI_REF, STARGZ_DIGEST, STARGZ_LAYERS, STARGZ_REF,
};
use snapshot_labels::LABEL_TARGET_REF as REF_LABEL;
use std::collections::HashMap;
use std::time::Instant;
use tracing::debug;

/// containerd caps a label at 4096 bytes (key + value); the layer list is only a hint.
const MAX_LAYERS_LABEL: usize = 4000;

/// What a pull did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub name: String,
    pub layers: usize,
    /// Layers the snapshotter mounted lazily.
    pub remote: usize,
    /// Layers fetched and applied (the snapshotter could not mount them).
    pub fetched: usize,
    /// Layers the snapshotter could not mount but pulled and unpacked
    /// itself (its fallback pull): committed, not lazy.
    pub unpacked: usize,
}

/// Pull `img` into `snapshotter` under a lease, then record the image.
pub async fn pull(ctr: &mut Containerd, img: &ImageParts, snapshotter: &str) -> Result<Pulled> {
    ctr.begin_lease().await?;
    let result = unpack(ctr, img, snapshotter).await;
    // Release the lease even when unpacking failed: the gc labels keep what we want.
    let ended = ctr.end_lease().await;
    let (remote, fetched, unpacked) = result?;
    ended?;
    Ok(Pulled {
        name: img.name.clone(),
        layers: img.layers.len(),
        remote,
        fetched,
        unpacked,
    })
}

async fn unpack(
    ctr: &Containerd,
    img: &ImageParts,
    snapshotter: &str,
) -> Result<(usize, usize, usize)> {
    let started = Instant::now();
    let chains = chain_ids(&img.diff_ids);
    let top = chains.last().cloned().unwrap_or_default();

    // The config, labelled so that gc keeps the snapshot chain of this
    // snapshotter, is stored while the layers are prepared: the lease keeps
    // both until the image record exists, and containerd's content commit
    // (an fsync) need not delay the first Prepare.
    let config_labels =
        HashMap::from([(format!("containerd.io/gc.ref.snapshot.{snapshotter}"), top)]);
    let config = ctr.write_content(
        img.config.digest().as_ref(),
        &img.config_bytes,
        config_labels,
    );
    let (config, layers) = futures::join!(config, prepare_layers(ctr, img, snapshotter, &chains));
    config?;
    let (remote, fetched, unpacked) = layers?;
    debug!(
        ms = started.elapsed().as_millis() as u64,
        "config stored, layers prepared"
    );

    // Manifest last, with references to config and layers for gc, then the image.
    let mut manifest_labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        img.config.digest().to_string(),
    )]);
    for (i, l) in img.layers.iter().enumerate() {
        // Only layers we actually stored are referenced; missing refs are fine for gc.
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest().to_string(),
        );
    }
    let m = &img.manifest;
    ctr.write_content(&m.digest, &m.bytes, manifest_labels)
        .await?;
    let target = Descriptor {
        media_type: m.media_type.clone(),
        digest: m.digest.clone(),
        size: m.bytes.len() as i64,
        annotations: HashMap::new(),
    };
    ctr.put_image(&img.name, target).await?;
    debug!(ms = started.elapsed().as_millis() as u64, "image recorded");
    Ok((remote, fetched, unpacked))
}

/// `Prepare` each layer in order (each names its parent); returns how many
/// were mounted remotely, how many fetched and applied here, and how many
/// the snapshotter pulled and unpacked itself.
async fn prepare_layers(
    ctr: &Containerd,
    img: &ImageParts,
    snapshotter: &str,
    chains: &[String],
) -> Result<(usize, usize, usize)> {
    let started = Instant::now();
    let layer_list = layers_label(&img.layers);
    let (mut remote, mut fetched, mut unpacked) = (0, 0, 0);
    for (i, layer) in img.layers.iter().enumerate() {
        let chain = &chains[i];
        if ctr.snapshot_exists(snapshotter, chain).await? {
            continue;
        }
        let parent = if i == 0 {
            String::new()
        } else {
            chains[i - 1].clone()
        };
        let digest = layer.digest().to_string();
        let mut labels = HashMap::from([
            (REF_LABEL.to_string(), chain.clone()),
            (STARGZ_REF.to_string(), img.name.clone()),
            (STARGZ_DIGEST.to_string(), digest.clone()),
            (STARGZ_LAYERS.to_string(), layer_list.clone()),
            (CRI_REF.to_string(), img.name.clone()),
            (CRI_DIGEST.to_string(), digest),
            (CRI_LAYERS.to_string(), layer_list.clone()),
        ]);
        // Layer annotations under the snapshot prefix (the TOC digest) travel as
        // labels, as containerd's own unpacker does.
        for (k, v) in layer.annotations().iter().flatten() {
            if k.starts_with("containerd.io/snapshot/") {
                labels.insert(k.clone(), v.clone());
            }
        }
        let key = format!("extract-{}-{}", std::process::id(), chain);
        match ctr.prepare(snapshotter, &key, &parent, labels).await? {
            Prepared::Remote => {
                if ctr.snapshot_is_remote(snapshotter, chain).await? {
                    remote += 1
                } else {
                    unpacked += 1
                }
            }
            Prepared::Active(mounts) => {
                let applied = apply_layer(ctr, img, i, mounts).await;
                if let Err(e) = applied {
                    ctr.remove_snapshot(snapshotter, &key).await;
                    return Err(e);
                }
                ctr.commit(snapshotter, chain, &key).await?;
                fetched += 1;
            }
        }
        debug!(
            layer = i,
            ms = started.elapsed().as_millis() as u64,
            "layer prepared"
        );
    }
    Ok((remote, fetched, unpacked))
}

async fn apply_layer(
    ctr: &Containerd,
    img: &ImageParts,
    i: usize,
    mounts: Vec<Mount>,
) -> Result<()> {
    let layer = &img.layers[i];
    let digest = layer.digest().to_string();
    if !ctr.has_content(&digest).await? {
        let bytes = img.fetch_layer(i).await?;
        ctr.write_content(&digest, &bytes, HashMap::new()).await?;
    }
    let desc = Descriptor {
        media_type: layer.media_type().to_string(),
        digest: digest.clone(),
        size: layer.size() as i64,
        annotations: HashMap::new(),
    };
    let got = ctr.apply(desc, mounts).await?;
    if got != img.diff_ids[i] {
        return Err(Error::Unpacked {
            digest,
            got,
            want: img.diff_ids[i].clone(),
        });
    }
    Ok(())
}

/// The comma-separated layer digests, cut (between digests) under containerd's cap.
fn layers_label(layers: &[oci_spec::image::Descriptor]) -> String {
    let mut out = String::new();
    for l in layers {
        let d = l.digest().as_ref();
        if out.len() + d.len() + 1 > MAX_LAYERS_LABEL {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_label_stays_under_containerds_cap() {
        let layers: Vec<_> = (0..100)
            .map(|i| {
                let digest: oci_spec::image::Digest = format!("sha256:{i:064x}").parse().unwrap();
                oci_spec::image::Descriptor::new(
                    oci_spec::image::MediaType::ImageLayerGzip,
                    0,
                    digest,
                )
            })
            .collect();
        let label = layers_label(&layers);
        assert!(label.len() <= MAX_LAYERS_LABEL);
        assert!(label.split(',').count() > 10);
        assert!(
            label.split(',').all(|d| d.len() == 71),
            "no digest cut in half"
        );
    }
}
