//! `rsnap index REF`: a seekable index (`gzindex`) for each plain gzip
//! layer of an image, so the daemon can serve the image lazily without
//! converting it. Pushed as an OCI artifact whose `subject` is the image
//! manifest (found through the referrers API, or the `sha256-<hex>` tag on
//! registries without it), or written to a directory the daemon reads.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use registry::{Client, Platform, Reference, Referrer};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The empty JSON config of an artifact manifest (OCI 1.1).
const EMPTY_CONFIG: &[u8] = b"{}";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

#[derive(clap::Args)]
pub struct Args {
    /// Image: HOST/REPO[:TAG|@DIGEST] (a manifest or an index).
    pub image: String,
    /// Write `<layer hex>.gzindex` files here (the daemon's
    /// `[gzindex] dir`) instead of pushing them to the registry.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Uncompressed bytes between checkpoints.
    #[arg(long, default_value_t = gzindex::DEFAULT_SPAN_SIZE)]
    pub span_size: u64,
    /// From an index, this platform (os/arch[/variant]) instead of the host's.
    #[arg(long)]
    pub platform: Option<String>,
    /// From an index, every platform.
    #[arg(long, conflicts_with = "platform")]
    pub all_platforms: bool,
    /// Scratch directory for the layer and its tar while indexing.
    #[arg(long, value_name = "DIR")]
    pub scratch: Option<PathBuf>,
    #[command(flatten)]
    pub net: crate::net::NetFlags,
}

pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

/// The image manifests `r` names (one, or those of the platforms asked for).
async fn manifests(client: &Client, r: &Reference, args: &Args) -> Result<Vec<registry::Resolved>> {
    let first = client.resolve(r).await?;
    if !first.is_index() {
        return Ok(vec![first]);
    }
    let idx: Value = serde_json::from_slice(&first.bytes).context("image index")?;
    let want = match &args.platform {
        Some(p) => Some(Platform::parse(p)?),
        None if args.all_platforms => None,
        None => Some(Platform::host()),
    };
    let mut out = Vec::new();
    for m in idx["manifests"].as_array().into_iter().flatten() {
        let p = &m["platform"];
        let (os, arch) = (
            p["os"].as_str().unwrap_or(""),
            p["architecture"].as_str().unwrap_or(""),
        );
        if os == "unknown" || arch == "unknown" {
            continue; // attestations
        }
        if want
            .as_ref()
            .is_some_and(|w| !w.matches(os, arch, p["variant"].as_str()))
        {
            continue;
        }
        let Some(d) = m["digest"].as_str() else {
            continue;
        };
        out.push(client.resolve(&r.with_digest(d)).await?);
    }
    if out.is_empty() {
        bail!("{r}: no manifest for the platform asked for");
    }
    Ok(out)
}

/// One indexed layer.
struct Built {
    layer: String,
    blob: Bytes,
    digest: String,
}

async fn run_async(args: Args) -> Result<()> {
    let image = Reference::parse(&args.image)?;
    let client = Client::new(args.net.client_config([image.registry()]))?;
    let scratch = args.scratch.clone().unwrap_or_else(std::env::temp_dir);
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
    }
    let repo = image.repo_only();
    // Layers shared by platforms are indexed once.
    let mut done: HashMap<String, (Bytes, String)> = HashMap::new();
    let (mut total_layers, mut total_index) = (0u64, 0u64);
    for m in manifests(&client, &image, &args).await? {
        let v: Value = serde_json::from_slice(&m.bytes).context("image manifest")?;
        let mut built: Vec<Built> = Vec::new();
        for l in v["layers"].as_array().into_iter().flatten() {
            let (Some(mt), Some(digest), Some(size)) = (
                l["mediaType"].as_str(),
                l["digest"].as_str(),
                l["size"].as_u64(),
            ) else {
                continue;
            };
            let has_toc = l["annotations"]
                .get(estargz::toc::TOC_DIGEST_ANNOTATION)
                .is_some();
            if !mt.ends_with("gzip") || has_toc {
                println!(
                    "{} {size:>12} skipped ({mt}{})",
                    short(digest),
                    if has_toc { ", eStargz" } else { "" }
                );
                continue;
            }
            if let Some((blob, d)) = done.get(digest) {
                built.push(Built {
                    layer: digest.to_string(),
                    blob: blob.clone(),
                    digest: d.clone(),
                });
                continue;
            }
            let started = Instant::now();
            let (idx, report) = index_layer(&client, &repo, digest, size, &scratch, args.span_size)
                .await
                .with_context(|| format!("index layer {digest}"))?;
            let bytes = Bytes::from(idx.to_bytes());
            println!(
                "{} {size:>12} -> index {:>9} bytes ({:.2}% of the layer), {} checkpoints, {} entries, {:.2}s",
                short(digest),
                bytes.len(),
                bytes.len() as f64 * 100.0 / size.max(1) as f64,
                report.checkpoints,
                report.entries,
                started.elapsed().as_secs_f64()
            );
            total_layers += size;
            total_index += bytes.len() as u64;
            let d = sha256(&bytes);
            if let Some(out) = &args.out {
                let path = index_path(out, digest)?;
                std::fs::write(&path, &bytes)
                    .with_context(|| format!("write {}", path.display()))?;
            }
            done.insert(digest.to_string(), (bytes.clone(), d.clone()));
            built.push(Built {
                layer: digest.to_string(),
                blob: bytes,
                digest: d,
            });
        }
        if args.out.is_none() && !built.is_empty() {
            let artifact = push_artifact(&client, &repo, &m, &built).await?;
            println!("{} <- referrer {artifact}", m.digest);
        }
    }
    if total_layers > 0 {
        println!(
            "{}: {total_index} bytes of index for {total_layers} bytes of layers ({:.2}%)",
            args.image,
            total_index as f64 * 100.0 / total_layers as f64
        );
    }
    Ok(())
}

fn index_path(dir: &Path, layer: &str) -> Result<PathBuf> {
    let hex = layer
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .with_context(|| format!("layer digest {layer}"))?;
    Ok(dir.join(format!("{hex}.gzindex")))
}

/// Download the layer once (to a scratch file) and index it; the build
/// checks the bytes against the digest.
async fn index_layer(
    client: &Client,
    repo: &Reference,
    digest: &str,
    size: u64,
    scratch: &Path,
    span_size: u64,
) -> Result<(gzindex::GzIndex, gzindex::BuildReport)> {
    use std::io::Write;
    let reader = client.blob_reader(repo, digest, Some(size)).await?;
    let mut file = tempfile::tempfile_in(scratch).context("scratch file")?;
    let mut off = 0u64;
    const STEP: u64 = 16 << 20;
    while off < size {
        let n = STEP.min(size - off);
        let b = reader.read_at(off, n).await?;
        if b.is_empty() {
            bail!("layer ends at {off} of {size} bytes");
        }
        file.write_all(&b)?;
        off += b.len() as u64;
    }
    let (digest, scratch) = (digest.to_string(), scratch.to_path_buf());
    let opts = gzindex::BuildOptions {
        span_size,
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0))?;
        let r = std::io::BufReader::with_capacity(1 << 20, file);
        Ok::<_, anyhow::Error>(gzindex::build(r, &digest, &opts, &scratch)?)
    })
    .await?
}

/// Push the index blobs and an artifact manifest whose subject is `m`,
/// then list it under the fallback tag for registries without the
/// referrers API. Returns the artifact's digest.
async fn push_artifact(
    client: &Client,
    repo: &Reference,
    m: &registry::Resolved,
    built: &[Built],
) -> Result<String> {
    let empty = sha256(EMPTY_CONFIG);
    client
        .push_blob(repo, &empty, Bytes::from_static(EMPTY_CONFIG))
        .await?;
    let mut layers = Vec::new();
    for b in built {
        client.push_blob(repo, &b.digest, b.blob.clone()).await?;
        let mut annotations = serde_json::Map::new();
        annotations.insert(gzindex::LAYER_ANNOTATION.to_string(), json!(b.layer));
        layers.push(json!({
            "mediaType": gzindex::MEDIA_TYPE,
            "digest": b.digest,
            "size": b.blob.len(),
            "annotations": annotations,
        }));
    }
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": gzindex::ARTIFACT_TYPE,
        "config": { "mediaType": EMPTY_MEDIA_TYPE, "digest": empty, "size": EMPTY_CONFIG.len() },
        "layers": layers,
        "subject": { "mediaType": m.media_type, "digest": m.digest, "size": m.bytes.len() },
    });
    let bytes = Bytes::from(serde_json::to_vec(&manifest)?);
    let d = sha256(&bytes);
    let size = bytes.len() as u64;
    client
        .push_manifest(&repo.with_digest(&d), OCI_MANIFEST, bytes)
        .await?;
    client
        .add_fallback_referrer(
            repo,
            &m.digest,
            &Referrer {
                digest: d.clone(),
                media_type: OCI_MANIFEST.to_string(),
                size,
                artifact_type: Some(gzindex::ARTIFACT_TYPE.to_string()),
            },
        )
        .await?;
    Ok(d)
}

fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}
