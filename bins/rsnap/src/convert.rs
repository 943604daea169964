//! `rsnap convert SRC DST`: an image to eStargz or zstd:chunked (and between
//! the two), between OCI layouts and registries in any mix (the `convert`
//! crate does the work).

use anyhow::{Context, Result};
use convert::{Action, Options, Platforms};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Source image: oci:DIR[:TAG] (an OCI image layout) or a registry
    /// reference HOST/REPO[:TAG|@DIGEST].
    pub src: String,
    /// Destination image: oci:DIR[:TAG] (created if missing; TAG defaults to
    /// the source tag) or a registry reference HOST/REPO[:TAG].
    pub dst: String,
    /// File listing paths to prioritize (one per line, in access order);
    /// they go first in their layer, followed by the prefetch landmark.
    #[arg(long, value_name = "FILE")]
    pub prioritized_files: Option<PathBuf>,
    /// Chunk size in bytes for large files (writer default if unset).
    #[arg(long)]
    pub chunk_size: Option<u64>,
    /// gzip compression level 0-9 (writer default if unset).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub compression_level: Option<u32>,
    /// Output format: estargz (gzip chunks) or zstd-chunked (zstd frames,
    /// the TOC in a skippable frame; needs --oci). Layers already in the
    /// chosen format are kept as they are; the other is converted.
    #[arg(long, default_value = "estargz", value_parser = parse_compression)]
    pub compression: estargz::Compression,
    /// zstd level 1-22 for --compression zstd-chunked (default 3).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub zstd_level: Option<i32>,
    /// OCI media types for the output; required for zstd-chunked (there is
    /// no Docker media type for zstd layers), as with the reference's
    /// `ctr-remote image convert --zstdchunked --oci`.
    #[arg(long)]
    pub oci: bool,
    /// Pack small files into shared gzip members until a member holds N
    /// bytes (the reference's `--estargz-min-chunk-size`; readers older
    /// than its 0.13 cannot read such layers).
    #[arg(long, value_name = "N")]
    pub min_chunk_size: Option<u64>,
    /// Write legacy CRFS stargz instead of eStargz: no chunk digests, no
    /// landmarks, the 47-byte footer, no TOC digest annotation. Such an
    /// image mounts lazily only with `allow_no_verification`.
    #[arg(long, conflicts_with_all = ["prioritized_files", "min_chunk_size", "external_toc"])]
    pub legacy_stargz: bool,
    /// Keep each layer's TOC out of its blob, in a "TOC image" published
    /// next to the image as `<tag>-esgztoc` (the reference's
    /// `--estargz-external-toc`; readers find it there).
    #[arg(long)]
    pub external_toc: bool,
    /// Layers converted at the same time (default: number of CPUs).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// From an index, convert this platform (os/arch[/variant]) instead of the host's.
    #[arg(long)]
    pub platform: Option<String>,
    /// From an index, convert every platform.
    #[arg(long, conflicts_with = "platform")]
    pub all_platforms: bool,
    #[command(flatten)]
    pub net: crate::net::NetFlags,
}

fn parse_compression(s: &str) -> std::result::Result<estargz::Compression, String> {
    estargz::Compression::parse(s).ok_or_else(|| format!("{s:?}: expected estargz or zstd-chunked"))
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    if args.compression == estargz::Compression::Zstd && !args.oci {
        anyhow::bail!(
            "--compression zstd-chunked needs --oci: zstd layers have OCI media types only"
        );
    }
    if args.zstd_level.is_some() && args.compression != estargz::Compression::Zstd {
        anyhow::bail!("--zstd-level applies to --compression zstd-chunked only");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cfg = args.net.client_config_for(&[&args.src, &args.dst]);
    let prioritized_files = match &args.prioritized_files {
        Some(p) => convert::parse_prioritized(
            &std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?,
        ),
        None => Vec::new(),
    };
    let platforms = match (&args.platform, args.all_platforms) {
        (_, true) => Platforms::All,
        (Some(p), false) => Platforms::Only(registry::Platform::parse(p)?),
        (None, false) => Platforms::Host,
    };
    let opts = Options {
        layer: convert::LayerOptions {
            chunk_size: args.chunk_size,
            compression_level: args.compression_level,
            compression: args.compression,
            zstd_level: args.zstd_level,
            prioritized_files,
            min_chunk_size: args.min_chunk_size,
            legacy: args.legacy_stargz,
            external_toc: args.external_toc,
            ..Default::default()
        },
        jobs: args.jobs,
        platforms,
    };
    let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:>19} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
    )
    .expect("static template")
    .progress_chars("=> ");
    let bar = |d: &convert::Descriptor| {
        let bar = mp.add(ProgressBar::new(d.size()).with_style(style.clone()));
        bar.set_prefix(short(d.digest().as_ref()).to_string());
        bar
    };
    let report = convert::convert(&args.src, &args.dst, &cfg, rt.handle(), &opts, &bar);
    let _ = mp.clear();
    let report = report?;

    for l in &report.layers {
        let (s, c) = (&l.source, &l.converted.desc);
        println!(
            "{} {:>12} -> {} {:>12} {}",
            short(s.digest().as_ref()),
            s.size(),
            short(c.digest().as_ref()),
            c.size(),
            match l.converted.action {
                Action::Converted => "converted",
                Action::PassedThrough => match args.compression {
                    estargz::Compression::Gzip => "already eStargz",
                    estargz::Compression::Zstd => "already zstd:chunked",
                },
                Action::Kept => "kept (not a tar layer)",
            }
        );
    }
    let before: u64 = report.layers.iter().map(|l| l.source.size()).sum();
    let after: u64 = report.layers.iter().map(|l| l.converted.desc.size()).sum();
    println!(
        "{} -> {} {} ({} layers, {before} -> {after} bytes, {:.2}s)",
        args.src,
        report.destination,
        report.root.digest(),
        report.layers.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(t) = &report.toc_image {
        println!("TOC image {t}");
    }
    Ok(())
}

fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}
