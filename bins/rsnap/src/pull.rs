//! `rsnap pull`: lazy pull into containerd, as ctr-remote's `rpull` does
//! (the `ctrd` crate does the work).

use anyhow::{Context, Result};
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

async fn pull(args: Args) -> Result<()> {
    let started = Instant::now();
    let reference =
        registry::Reference::parse(&args.reference).context("parsing the image reference")?;
    let client = registry::Client::new(args.net.client_config([reference.registry()]))
        .context("creating the registry client")?;
    let platform = match &args.platform {
        Some(p) => registry::Platform::parse(p).context("parsing --platform")?,
        None => registry::Platform::host(),
    };
    // containerd is dialled while the registry answers.
    let (img, ctr) = tokio::join!(
        ctrd::fetch_image(client, reference, &platform),
        ctrd::Containerd::connect(&args.address, &args.namespace)
    );
    let (img, mut ctr) = (img?, ctr?);
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        "manifest and config fetched"
    );
    let p = ctrd::pull(&mut ctr, &img, &args.snapshotter).await?;
    // Layers the snapshotter pulled itself are neither lazy nor fetched here.
    let unpacked = match p.unpacked {
        0 => String::new(),
        n => format!(", {n} pulled by the snapshotter"),
    };
    println!(
        "pulled {} ({} layers: {} lazy, {} fetched{unpacked}) in {:.3}s",
        p.name,
        p.layers,
        p.remote,
        p.fetched,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
