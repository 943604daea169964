//! `rsnap pull`: lazy pull into containerd, as ctr-remote's `rpull` does.
//!
//! Manifest and config go into containerd's content store (with the gc labels
//! that keep them and the snapshots alive), each layer is `Prepare`d with the
//! remote-snapshot labels; the snapshotter answers AlreadyExists for a layer it
//! mounted lazily, and an active snapshot for one it cannot, which we then fill
//! through containerd's content and diff services like an ordinary pull.

use crate::ctrd::{Containerd, Prepared};
use crate::image::{chain_ids, fetch_image, ImageParts};
use anyhow::{bail, Result};
use containerd_client::types::Descriptor;
use std::collections::HashMap;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Image reference, e.g. 127.0.0.1:5000/app:v1-esgz
    pub reference: String,
    /// containerd's socket
    #[arg(
        long,
        short = 'a',
        default_value = "/run/containerd/containerd.sock",
        env = "CONTAINERD_ADDRESS"
    )]
    pub address: String,
    /// containerd namespace
    #[arg(
        long,
        short = 'n',
        default_value = "default",
        env = "CONTAINERD_NAMESPACE"
    )]
    pub namespace: String,
    /// Snapshotter to unpack into (the proxy plugin name in containerd's config)
    #[arg(long, default_value = "remote")]
    pub snapshotter: String,
    #[command(flatten)]
    pub net: crate::net::NetFlags,
    /// Platform for multi-platform images (os/arch[/variant]); default: this host
    #[arg(long)]
    pub platform: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(pull(args))
}

use snapshotter::remote::labels::{
    CRI_DIGEST, CRI_LAYERS, CRI_REF, STARGZ_DIGEST, STARGZ_LAYERS, STARGZ_REF,
};
use snapshotter::remote::LABEL_TARGET_REF as REF_LABEL;
/// containerd caps a label at 4096 bytes (key + value); the layer list is only a hint.
const MAX_LAYERS_LABEL: usize = 4000;

async fn pull(args: Args) -> Result<()> {
    let started = Instant::now();
    let img = fetch_image(&args.reference, &args.net, args.platform.as_deref()).await?;
    let mut ctr = Containerd::connect(&args.address, &args.namespace).await?;
    ctr.begin_lease().await?;
    let result = unpack(&ctr, &args, &img).await;
    // Release the lease even when unpacking failed: the gc labels keep what we want.
    let ended = ctr.end_lease().await;
    let (remote, fetched) = result?;
    ended?;
    println!(
        "pulled {} ({} layers: {} lazy, {} fetched) in {:.3}s",
        img.name,
        img.layers.len(),
        remote,
        fetched,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn unpack(ctr: &Containerd, args: &Args, img: &ImageParts) -> Result<(usize, usize)> {
    let chains = chain_ids(&img.diff_ids);
    if chains.len() != img.layers.len() {
        bail!(
            "the config lists {} diff IDs for {} layers",
            chains.len(),
            img.layers.len()
        );
    }
    let top = chains.last().cloned().unwrap_or_default();

    // Config first, labelled so that gc keeps the snapshot chain of this snapshotter.
    let config_labels = HashMap::from([(
        format!("containerd.io/gc.ref.snapshot.{}", args.snapshotter),
        top,
    )]);
    ctr.write_content(&img.config.digest, &img.config_bytes, config_labels)
        .await?;

    let layer_list = layers_label(&img.layers);
    let (mut remote, mut fetched) = (0, 0);
    for (i, layer) in img.layers.iter().enumerate() {
        let chain = &chains[i];
        if ctr.snapshot_exists(&args.snapshotter, chain).await? {
            continue;
        }
        let parent = if i == 0 {
            String::new()
        } else {
            chains[i - 1].clone()
        };
        let mut labels = HashMap::from([
            (REF_LABEL.to_string(), chain.clone()),
            (STARGZ_REF.to_string(), img.name.clone()),
            (STARGZ_DIGEST.to_string(), layer.digest.clone()),
            (STARGZ_LAYERS.to_string(), layer_list.clone()),
            (CRI_REF.to_string(), img.name.clone()),
            (CRI_DIGEST.to_string(), layer.digest.clone()),
            (CRI_LAYERS.to_string(), layer_list.clone()),
        ]);
        // Layer annotations under the snapshot prefix (the TOC digest) travel as
        // labels, as containerd's own unpacker does.
        for (k, v) in &layer.annotations {
            if k.starts_with("containerd.io/snapshot/") {
                labels.insert(k.clone(), v.clone());
            }
        }
        let key = format!("extract-{}-{}", std::process::id(), chain);
        match ctr
            .prepare(&args.snapshotter, &key, &parent, labels)
            .await?
        {
            Prepared::Remote => remote += 1,
            Prepared::Active(mounts) => {
                let applied = apply_layer(ctr, img, i, mounts).await;
                if let Err(e) = applied {
                    ctr.remove_snapshot(&args.snapshotter, &key).await;
                    return Err(e);
                }
                ctr.commit(&args.snapshotter, chain, &key).await?;
                fetched += 1;
            }
        }
    }

    // Manifest last, with references to config and layers for gc, then the image.
    let mut manifest_labels = HashMap::from([(
        "containerd.io/gc.ref.content.config".to_string(),
        img.config.digest.clone(),
    )]);
    for (i, l) in img.layers.iter().enumerate() {
        // Only layers we actually stored are referenced; missing refs are fine for gc.
        manifest_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    ctr.write_content(&img.manifest.digest, &img.manifest_bytes, manifest_labels)
        .await?;
    let target = Descriptor {
        media_type: img.manifest.media_type.clone(),
        digest: img.manifest.digest.clone(),
        size: img.manifest.size,
        annotations: HashMap::new(),
    };
    ctr.put_image(&img.name, target).await?;
    Ok((remote, fetched))
}

async fn apply_layer(
    ctr: &Containerd,
    img: &ImageParts,
    i: usize,
    mounts: Vec<containerd_client::types::Mount>,
) -> Result<()> {
    let layer = &img.layers[i];
    if !ctr.has_content(&layer.digest).await? {
        let bytes = img.fetch_layer(i).await?;
        ctr.write_content(&layer.digest, &bytes, HashMap::new())
            .await?;
    }
    let desc = Descriptor {
        media_type: layer.media_type.clone(),
        digest: layer.digest.clone(),
        size: layer.size,
        annotations: HashMap::new(),
    };
    let diff_id = ctr.apply(desc, mounts).await?;
    if diff_id != img.diff_ids[i] {
        bail!(
            "layer {} unpacked to {diff_id}, but the config says {}",
            layer.digest,
            img.diff_ids[i]
        );
    }
    Ok(())
}

fn layers_label(layers: &[crate::image::LayerDesc]) -> String {
    let mut out = String::new();
    for l in layers {
        if out.len() + l.digest.len() + 1 > MAX_LAYERS_LABEL {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&l.digest);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_label_stays_under_containerds_cap() {
        let layers: Vec<_> = (0..100)
            .map(|i| crate::image::LayerDesc {
                digest: format!("sha256:{i:064x}"),
                media_type: String::new(),
                size: 0,
                annotations: HashMap::new(),
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
