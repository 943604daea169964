//! Indexing an image in a registry (`rsnap index`; the index format is the `gzindex` crate's): each plain gzip layer
//! of its manifests (eStargz and other layers are skipped) is downloaded
//! once to a scratch file and indexed; the indexes of a manifest are pushed
//! as an OCI artifact whose `subject` is that manifest (found through the
//! referrers API, or the `sha256-<hex>` tag on registries without it), or
//! written to a directory the daemon reads ([`index_path`]).
//!
//! What happens is told, layer by layer, through [`Event`]s, so a command
//! line can print progress without this module printing anything.

use bytes::Bytes;
use estargz::reader::sha256_digest;
use gzindex::{index_path, BuildOptions, BuildReport, GzIndex};
use registry::{Client, Platform, Reference, Referrer, Resolved};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What indexing and publishing an image's layers can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Index(#[from] gzindex::Error),
    #[error(transparent)]
    Registry(#[from] registry::Error),
    #[error("{what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}: no manifest for the platform asked for")]
    NoPlatform(String),
    #[error("index layer {layer}")]
    Layer {
        layer: String,
        #[source]
        source: Box<Error>,
    },
    #[error("scratch file")]
    Scratch(#[source] std::io::Error),
    #[error("layer ends at {at} of {size} bytes")]
    ShortLayer { at: u64, size: u64 },
    /// A layer digest that names no index file (not `sha256:` and 64 hex digits).
    #[error("layer digest {0}")]
    LayerName(String),
    #[error("create {}", .0.display())]
    CreateDir(PathBuf, #[source] std::io::Error),
    #[error("write {}", .0.display())]
    WriteIndex(PathBuf, #[source] std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The empty JSON config of an artifact manifest (OCI 1.1).
const EMPTY_CONFIG: &[u8] = b"{}";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Which manifests of an image index are indexed (an image manifest is
/// indexed whatever this says).
#[derive(Debug, Clone)]
pub enum Platforms {
    /// The host's platform.
    Host,
    /// This platform, `os/arch[/variant]`; parsed only when the image turns
    /// out to be an index, so it is never asked of a single manifest.
    Only(String),
    /// Every platform (attestation manifests aside).
    All,
}

#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// Uncompressed bytes between checkpoints.
    pub span_size: u64,
    pub platforms: Platforms,
    /// Scratch directory for the layer and its tar while indexing.
    pub scratch: PathBuf,
    /// Write `<layer hex>.gzindex` files here instead of pushing referrers.
    pub out: Option<PathBuf>,
}

/// What [`publish`] did, in the order it did it.
#[derive(Debug)]
pub enum Event<'a> {
    /// A layer that gets no index: not gzip, or eStargz (it has a TOC).
    Skipped {
        layer: &'a str,
        size: u64,
        media_type: &'a str,
        estargz: bool,
    },
    /// A layer indexed (a layer shared by platforms is told once).
    Indexed {
        layer: &'a str,
        size: u64,
        index_size: usize,
        report: &'a BuildReport,
        took: Duration,
    },
    /// The indexes of image manifest `manifest` pushed as the artifact `artifact`.
    Pushed {
        manifest: &'a str,
        artifact: &'a str,
    },
}

/// Bytes of layers indexed and of their indexes, over the whole image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub layers: u64,
    pub indexes: u64,
}

/// One indexed layer.
struct Built {
    layer: String,
    blob: Bytes,
    digest: String,
}

/// Index every plain gzip layer of `image` and publish the indexes as
/// `opts` says, telling `on` what happens.
pub async fn publish(
    client: &Client,
    image: &Reference,
    opts: &PublishOptions,
    mut on: impl FnMut(Event<'_>),
) -> Result<Totals> {
    if let Some(out) = &opts.out {
        std::fs::create_dir_all(out).map_err(|e| Error::CreateDir(out.clone(), e))?;
    }
    let repo = image.repo_only();
    // Layers shared by platforms are indexed once.
    let mut done: HashMap<String, (Bytes, String)> = HashMap::new();
    let mut totals = Totals::default();
    for m in manifests(client, image, &opts.platforms).await? {
        let v: Value = serde_json::from_slice(&m.bytes).map_err(|e| Error::Json {
            what: "image manifest",
            source: e,
        })?;
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
                on(Event::Skipped {
                    layer: digest,
                    size,
                    media_type: mt,
                    estargz: has_toc,
                });
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
            let (idx, report) = index_layer(client, &repo, digest, size, opts)
                .await
                .map_err(|e| Error::Layer {
                    layer: digest.to_string(),
                    source: Box::new(e),
                })?;
            let bytes = Bytes::from(idx.to_bytes());
            on(Event::Indexed {
                layer: digest,
                size,
                index_size: bytes.len(),
                report: &report,
                took: started.elapsed(),
            });
            totals.layers += size;
            totals.indexes += bytes.len() as u64;
            let d = sha256_digest(&bytes);
            if let Some(out) = &opts.out {
                let path =
                    index_path(out, digest).ok_or_else(|| Error::LayerName(digest.to_string()))?;
                std::fs::write(&path, &bytes).map_err(|e| Error::WriteIndex(path, e))?;
            }
            done.insert(digest.to_string(), (bytes.clone(), d.clone()));
            built.push(Built {
                layer: digest.to_string(),
                blob: bytes,
                digest: d,
            });
        }
        if opts.out.is_none() && !built.is_empty() {
            let artifact = push_artifact(client, &repo, &m, &built).await?;
            on(Event::Pushed {
                manifest: &m.digest,
                artifact: &artifact,
            });
        }
    }
    Ok(totals)
}

/// The image manifests `r` names (one, or those of the platforms asked for).
async fn manifests(client: &Client, r: &Reference, platforms: &Platforms) -> Result<Vec<Resolved>> {
    let first = client.resolve(r).await?;
    if !first.is_index() {
        return Ok(vec![first]);
    }
    let idx: Value = serde_json::from_slice(&first.bytes).map_err(|e| Error::Json {
        what: "image index",
        source: e,
    })?;
    let want = match platforms {
        Platforms::Only(p) => Some(Platform::parse(p)?),
        Platforms::All => None,
        Platforms::Host => Some(Platform::host()),
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
        return Err(Error::NoPlatform(r.to_string()));
    }
    Ok(out)
}

/// Download the layer once (to a scratch file) and index it; the build
/// checks the bytes against the digest.
async fn index_layer(
    client: &Client,
    repo: &Reference,
    digest: &str,
    size: u64,
    opts: &PublishOptions,
) -> Result<(GzIndex, BuildReport)> {
    use std::io::Write;
    let reader = client.blob_reader(repo, digest, Some(size)).await?;
    let mut file = tempfile::tempfile_in(&opts.scratch).map_err(Error::Scratch)?;
    let mut off = 0u64;
    const STEP: u64 = 16 << 20;
    while off < size {
        let n = STEP.min(size - off);
        let b = reader.read_at(off, n).await?;
        if b.is_empty() {
            return Err(Error::ShortLayer { at: off, size });
        }
        file.write_all(&b)?;
        off += b.len() as u64;
    }
    let (digest, scratch) = (digest.to_string(), opts.scratch.clone());
    let build = BuildOptions {
        span_size: opts.span_size,
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || {
        use std::io::{Seek, SeekFrom};
        file.seek(SeekFrom::Start(0))?;
        let r = std::io::BufReader::with_capacity(1 << 20, file);
        Ok(gzindex::build(r, &digest, &build, &scratch)?)
    })
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?
}

/// Push the index blobs and an artifact manifest whose subject is `m`,
/// then list it under the fallback tag for registries without the
/// referrers API. Returns the artifact's digest.
async fn push_artifact(
    client: &Client,
    repo: &Reference,
    m: &Resolved,
    built: &[Built],
) -> Result<String> {
    let empty = sha256_digest(EMPTY_CONFIG);
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
    let bytes = Bytes::from(serde_json::to_vec(&manifest).expect("plain JSON"));
    let d = sha256_digest(&bytes);
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
