//! `rsnap mount`: mount one eStargz layer, or all layers of an image merged
//! read-only, lazily through FUSE, in the foreground until Ctrl-C/SIGTERM.
//!
//! - `rsnap mount REF DIR`: every layer at `DIR/.layers/N` (N = 0 bottom),
//!   merged by overlayfs at `DIR` (one layer: mounted at `DIR` directly);
//! - `rsnap mount --layer DIGEST REF DIR`: that layer of `REF` at `DIR`;
//! - `rsnap mount --blob FILE DIR`: an eStargz blob in a local file.

use anyhow::{bail, Context, Result};
use lazyfs::{ChunkCache, Config, FileSource, LazyLayer, MountHandle, RangeSource, Scheduler};
use sha2::{Digest as _, Sha256};
use snapshotter::OverlayMount;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Annotation with the TOC digest that makes a layer verifiable.
use estargz::toc::TOC_DIGEST_ANNOTATION;

#[derive(clap::Args)]
pub struct Args {
    /// `[REF] MOUNTPOINT` (REF is not given with --blob).
    #[arg(required = true, num_args = 1..=2, value_name = "REF MOUNTPOINT")]
    targets: Vec<String>,
    /// Mount only this layer (a digest from the image's manifest).
    #[arg(long, value_name = "DIGEST")]
    layer: Option<String>,
    /// Mount a local eStargz blob instead of an image from a registry.
    #[arg(long, value_name = "FILE", conflicts_with = "layer")]
    blob: Option<PathBuf>,
    /// Config file (TOML; the lazy-pull keys of the daemon's config:
    /// noprefetch, no_background_fetch, prefetch_timeout_sec, max_concurrency, ...).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Chunk cache directory (default: memory only).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    #[command(flatten)]
    net: crate::net::NetFlags,
    /// From an index, mount this platform (os/arch[/variant]).
    #[arg(long)]
    platform: Option<String>,
    #[arg(long)]
    noprefetch: bool,
    #[arg(long)]
    no_background_fetch: bool,
    /// Mount layers that cannot be verified: legacy stargz (no chunk
    /// digests), or a layer without a TOC digest annotation (the daemon's
    /// `allow_no_verification`). Their chunks are served unchecked; once
    /// all were fetched the whole blob is checked against the layer digest
    /// and a mismatch stops the layer. Without it such a layer is refused.
    #[arg(long)]
    allow_no_verification: bool,
}

/// One layer to mount: its digest, where its bytes are, its TOC digest,
/// and its TOC when that is not in the blob (external TOC).
struct Source {
    digest: String,
    source: Arc<dyn RangeSource>,
    toc_digest: Option<String>,
    external_toc: Option<lazyfs::TocBytes>,
}

pub fn run(args: Args) -> Result<()> {
    let mut cfg = match &args.config {
        Some(p) => Config::from_toml_str(
            &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
        )?,
        None => Config::default(),
    };
    if args.cache_dir.is_some() {
        cfg.cache_dir = args.cache_dir.clone();
    }
    cfg.noprefetch |= args.noprefetch;
    cfg.no_background_fetch |= args.no_background_fetch;
    cfg.allow_no_verification |= args.allow_no_verification;

    let (reference, mountpoint) = match (&args.blob, args.targets.as_slice()) {
        (Some(_), [mp]) => (None, PathBuf::from(mp)),
        (None, [r, mp]) => (Some(r.clone()), PathBuf::from(mp)),
        (Some(_), _) => bail!("with --blob give only MOUNTPOINT"),
        (None, _) => bail!("give REF and MOUNTPOINT (or --blob FILE MOUNTPOINT)"),
    };
    if !mountpoint.is_dir() {
        bail!("{} is not a directory", mountpoint.display());
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let sources = match (&args.blob, reference) {
        (Some(file), _) => vec![blob_source(file)?],
        (None, Some(r)) => rt.block_on(registry_sources(&args, &r))?,
        (None, None) => unreachable!("checked above"),
    };
    let cache = Arc::new(ChunkCache::new(&cfg.cache_config()).context("open the chunk cache")?);
    // Shared by the layers, as in the daemon.
    let sched = Scheduler::new(cache, &cfg);

    let mut layers = Vec::new();
    for s in sources {
        let layer = match &s.external_toc {
            Some(toc) => rt.block_on(LazyLayer::open_with_toc(
                s.source,
                &s.digest,
                toc,
                s.toc_digest.as_deref(),
                &cfg,
                sched.clone(),
                rt.handle().clone(),
            )),
            None => rt.block_on(LazyLayer::open(
                s.source,
                &s.digest,
                s.toc_digest.as_deref(),
                &cfg,
                sched.clone(),
                rt.handle().clone(),
            )),
        }
        .with_context(|| format!("open layer {}", s.digest))?;
        if s.toc_digest.is_none() && cfg.allow_no_verification {
            layer.mark_unverified();
        }
        if layer.blob_check() != lazyfs::BlobCheck::NotNeeded {
            eprintln!(
                "warning: layer {} is mounted WITHOUT verification; its whole blob is \
                 checked against the digest once every chunk was fetched",
                s.digest
            );
        }
        if let Err(e) = rt.block_on(layer.prefetch()) {
            tracing::warn!(layer = %s.digest, error = %e, "prefetch failed; mounting anyway");
        }
        layers.push(layer);
    }

    // Dropped in reverse order of creation: overlay first, then the layers.
    let mut handles: Vec<MountHandle> = Vec::new();
    let mut overlay: Option<OverlayMount> = None;
    if layers.len() == 1 {
        handles.push(lazyfs::mount(layers[0].clone(), &mountpoint)?);
    } else {
        let base = mountpoint.join(".layers");
        for (i, l) in layers.iter().enumerate() {
            let dir = base.join(i.to_string());
            std::fs::create_dir_all(&dir)?;
            handles.push(lazyfs::mount(l.clone(), &dir)?);
        }
        let lowers: Vec<&Path> = handles.iter().rev().map(|h| h.mountpoint()).collect();
        overlay = Some(OverlayMount::mount(&lowers, &mountpoint).context("overlay the layers")?);
    }
    for l in &layers {
        l.start_background_fetch();
    }
    eprintln!(
        "mounted {} layer(s) at {}; Ctrl-C to unmount",
        layers.len(),
        mountpoint.display()
    );

    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;

    drop(overlay);
    while let Some(h) = handles.pop() {
        h.unmount()?;
    }
    if layers.len() > 1 {
        let _ = std::fs::remove_dir_all(mountpoint.join(".layers"));
    }
    for l in &layers {
        let s = l.stats().snapshot();
        eprintln!(
            "{}: {} of {} bytes cached; fetched on demand {}, prefetch {}, background {}",
            l.digest(),
            l.fetched_bytes(),
            l.blob_size(),
            s.on_demand_bytes,
            s.prefetch_bytes,
            s.background_bytes
        );
        match l.blob_check() {
            lazyfs::BlobCheck::NotNeeded => {}
            lazyfs::BlobCheck::Pending => {
                eprintln!("{}: unverified, not every chunk was fetched", l.digest())
            }
            lazyfs::BlobCheck::Passed => {
                eprintln!("{}: unverified layer; its whole blob matched", l.digest())
            }
            lazyfs::BlobCheck::Failed => {
                eprintln!("{}: the blob DID NOT match its digest", l.digest())
            }
        }
    }
    Ok(())
}

fn blob_source(file: &Path) -> Result<Source> {
    let mut f = std::fs::File::open(file).with_context(|| format!("open {}", file.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Source {
        digest: format!("sha256:{}", hex::encode(h.finalize())),
        source: Arc::new(FileSource::open(file)?),
        toc_digest: None,
        external_toc: None,
    })
}

async fn registry_sources(args: &Args, reference: &str) -> Result<Vec<Source>> {
    let r: registry::Reference = reference.parse().context("image reference")?;
    let ccfg = args.net.client_config([r.registry()]);
    let client = registry::Client::new(ccfg)?;
    let manifest = match &args.platform {
        Some(p) => {
            client
                .fetch_manifest_for(&r, &registry::Platform::parse(p)?)
                .await?
        }
        None => client.fetch_manifest(&r).await?,
    };
    let mut out = Vec::new();
    for desc in manifest.manifest.layers() {
        let digest = desc.digest().to_string();
        if args.layer.as_ref().is_some_and(|want| *want != digest) {
            continue;
        }
        let toc_digest = desc
            .annotations()
            .as_ref()
            .and_then(|a| a.get(TOC_DIGEST_ANNOTATION))
            .cloned();
        let reader = client.blob_reader(&r, &digest, Some(desc.size())).await?;
        let external_toc = external_toc(&client, &r, &digest, &reader).await?;
        out.push(Source {
            digest,
            source: Arc::new(reader),
            toc_digest,
            external_toc,
        });
    }
    if out.is_empty() {
        bail!(
            "no layer {} in {reference}",
            args.layer.as_deref().unwrap_or("at all")
        );
    }
    Ok(out)
}

/// The TOC of a layer whose blob ends with an external-TOC footer: from
/// the TOC image `<tag>-esgztoc` next to the image (the reference's
/// layout); `None` for a blob with its TOC inside.
async fn external_toc(
    client: &registry::Client,
    image: &registry::Reference,
    digest: &str,
    reader: &registry::BlobReader,
) -> Result<Option<lazyfs::TocBytes>> {
    use estargz::external;
    let size = reader.size();
    let n = size.min(external::FOOTER_SIZE as u64);
    let tail = RangeSource::read(reader, size - n, n)
        .await
        .with_context(|| format!("read the footer of {digest}"))?;
    if !external::is_footer(&tail) {
        return Ok(None);
    }
    let Some(tag) = image.tag() else {
        bail!("layer {digest} has an external TOC; give the image by tag to find its TOC image");
    };
    let toc_ref = image.repo_only().with_tag(&external::toc_image_tag(tag));
    let m = client
        .fetch_manifest(&toc_ref)
        .await
        .with_context(|| format!("TOC image {toc_ref} of layer {digest}"))?;
    let found = external::find_toc_layer(&m.resolved.bytes, digest)
        .with_context(|| format!("TOC image {toc_ref}"))?;
    let member = client
        .fetch_blob_bytes(&toc_ref, &found.digest, found.size)
        .await
        .with_context(|| format!("TOC {} from {toc_ref}", found.digest))?;
    Ok(lazyfs::external_toc_bytes(member, size))
}
