//! `rsnap optimize SRC DST [-- COMMAND...]`: run the image's workload once,
//! record the files it opens, and convert it to eStargz with those files
//! first in each layer (the `optimize` crate does the work).

use anyhow::{Context, Result};
use indicatif::ProgressBar;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    /// Source image: oci:DIR[:TAG] (an OCI image layout) or a registry
    /// reference HOST/REPO[:TAG|@DIGEST].
    pub src: String,
    /// Destination image: oci:DIR[:TAG] or a registry reference HOST/REPO[:TAG].
    pub dst: String,
    /// The command to profile instead of the image's Entrypoint + Cmd.
    #[arg(last = true)]
    pub command: Vec<String>,
    /// KEY=VALUE added to the image's environment (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Bind mount SRC:DST[:ro] into the container (repeatable).
    #[arg(long, value_name = "SRC:DST[:ro]")]
    pub mount: Vec<String>,
    /// Seconds the workload runs at most (it stops earlier if it exits).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub period: u64,
    /// Run until SIGINT or SIGTERM (Ctrl-C) instead of for --period.
    #[arg(long)]
    pub wait_on_signal: bool,
    /// Network of the container: none (a new namespace, loopback only) or host.
    #[arg(long, default_value = "none", value_parser = ["none", "host"])]
    pub net: String,
    /// Save the record (per layer, the files opened, in order) as JSON.
    #[arg(long, value_name = "FILE")]
    pub record_out: Option<PathBuf>,
    /// Convert from a saved record instead of running the workload.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["command", "wait_on_signal"])]
    pub reuse_record: Option<PathBuf>,
    /// Paths and globs (one per line) to put first too, in their layer.
    #[arg(long, value_name = "FILE")]
    pub prefetch_list: Option<PathBuf>,
    /// Chunk size in bytes for large files (writer default if unset).
    #[arg(long)]
    pub chunk_size: Option<u64>,
    /// gzip compression level 0-9 (writer default if unset).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub compression_level: Option<u32>,
    /// From an index, use this platform (os/arch[/variant]) instead of the host's.
    #[arg(long)]
    pub platform: Option<String>,
    /// The runc binary.
    #[arg(long, default_value = "runc")]
    pub runc: PathBuf,
    /// Where the scratch directory (unpacked layers, overlay) is made.
    #[arg(long, value_name = "DIR", default_value_os_t = std::env::temp_dir())]
    pub scratch_dir: PathBuf,
    #[command(flatten)]
    pub net_flags: crate::net::NetFlags,
}

pub fn run(args: Args) -> Result<()> {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cfg = args.net_flags.client_config_for(&[&args.src, &args.dst]);
    let platforms = match &args.platform {
        Some(p) => convert::Platforms::Only(registry::Platform::parse(p)?),
        None => convert::Platforms::Host,
    };
    let mounts = args
        .mount
        .iter()
        .map(|m| optimize::BindMount::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    let opts = optimize::Options {
        command: args.command,
        env: args.env,
        mounts,
        period: Duration::from_secs(args.period),
        wait_on_signal: args.wait_on_signal,
        net_host: args.net == "host",
        record_out: args.record_out,
        reuse_record: args.reuse_record,
        prefetch_list: args.prefetch_list,
        convert: convert::Options {
            layer: convert::LayerOptions {
                chunk_size: args.chunk_size,
                compression_level: args.compression_level,
                ..Default::default()
            },
            jobs: None,
            platforms,
        },
        runc: args.runc,
        scratch_dir: args.scratch_dir,
    };
    let bar = |_: &convert::Descriptor| ProgressBar::hidden();
    let out = optimize::optimize(&args.src, &args.dst, &cfg, rt.handle(), &opts, &bar)
        .with_context(|| format!("optimizing {}", args.src))?;
    if let Some(r) = &out.run {
        eprintln!(
            "workload ended: {:?}; {} files opened{}",
            r.ended,
            r.opened,
            if r.overflowed {
                " (fanotify overflowed: the record may miss files)"
            } else {
                ""
            }
        );
    }
    for (l, rep) in out.record.layers.iter().zip(&out.report.layers) {
        println!(
            "{} {:>5} files first -> {}",
            short(&l.digest),
            l.files.len(),
            short(rep.converted.desc.digest().as_ref()),
        );
    }
    println!(
        "{} -> {} {} ({:.2}s)",
        args.src,
        out.report.destination,
        out.report.root.digest(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}
