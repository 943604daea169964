//! `rsnap index REF`: a seekable index (`gzindex`) for each plain gzip
//! layer of an image, so the daemon can serve the image lazily without
//! converting it; pushed as a referrer of the image manifest or written to
//! a directory the daemon reads (`convert::index`). This prints what it
//! does.

use anyhow::Result;
use convert::index::{Event, Platforms};
use registry::{Client, Reference};
use std::path::PathBuf;

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

async fn run_async(args: Args) -> Result<()> {
    let image = Reference::parse(&args.image)?;
    let client = Client::new(args.net.client_config([image.registry()]))?;
    let opts = convert::index::PublishOptions {
        span_size: args.span_size,
        platforms: match args.platform {
            Some(p) => Platforms::Only(p),
            None if args.all_platforms => Platforms::All,
            None => Platforms::Host,
        },
        scratch: args.scratch.unwrap_or_else(std::env::temp_dir),
        out: args.out,
    };
    let totals = convert::index::publish(&client, &image, &opts, print).await?;
    if totals.layers > 0 {
        println!(
            "{}: {} bytes of index for {} bytes of layers ({:.2}%)",
            args.image,
            totals.indexes,
            totals.layers,
            totals.indexes as f64 * 100.0 / totals.layers as f64
        );
    }
    Ok(())
}

fn print(e: Event<'_>) {
    match e {
        Event::Skipped {
            layer,
            size,
            media_type,
            estargz,
        } => println!(
            "{} {size:>12} skipped ({media_type}{})",
            short(layer),
            if estargz { ", eStargz" } else { "" }
        ),
        Event::Indexed {
            layer,
            size,
            index_size,
            report,
            took,
        } => println!(
            "{} {size:>12} -> index {:>9} bytes ({:.2}% of the layer), {} checkpoints, {} entries, {:.2}s",
            short(layer),
            index_size,
            index_size as f64 * 100.0 / size.max(1) as f64,
            report.checkpoints,
            report.entries,
            took.as_secs_f64()
        ),
        Event::Pushed { manifest, artifact } => println!("{manifest} <- referrer {artifact}"),
    }
}

fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}
