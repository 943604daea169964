//! `rsnap`: the command line of remote-snapshotter. One module per subcommand;
//! each owns its clap `Args` and a `run` function. Logic lives in the crates.

mod convert;
mod index;
mod layers;
mod mount;
mod net;
mod optimize;
mod profile;
mod pull;
mod toc;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "rsnap",
    version,
    about = "Lazy-pulling eStargz images for containerd"
)]
struct Cli {
    /// Log level filter (error, warn, info, debug, trace) or a tracing directive.
    #[arg(long, global = true, default_value = "warn", env = "RSNAP_LOG")]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Convert an image (OCI layout or registry) to eStargz.
    Convert(convert::Args),
    /// Build a seekable index of each plain gzip layer of an image and push
    /// it as an OCI referrer of the image (or write it to a directory), so
    /// the image is served lazily without converting it.
    Index(index::Args),
    /// Print (and optionally verify) the TOC of an eStargz blob.
    Toc(toc::Args),
    /// Mount one layer, or all layers of an image, lazily (foreground; Ctrl-C unmounts).
    Mount(mount::Args),
    /// Pull an image lazily into containerd through the remote snapshotter.
    Pull(pull::Args),
    /// Run an image's workload once, record the files it opens, and convert
    /// it to eStargz with those files first (prefetched at mount time).
    Optimize(optimize::Args),
    /// List the remote layers mounted under a daemon's root: image, fetched %, state.
    Layers(layers::Args),
    /// Profiles of real runs the daemon recorded (`[profile] record`):
    /// list them, or export one as an `optimize --reuse-record` record.
    Profile(profile::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log_level))
        .with_writer(std::io::stderr)
        .init();
    match cli.cmd {
        Cmd::Convert(a) => convert::run(a),
        Cmd::Index(a) => index::run(a),
        Cmd::Toc(a) => toc::run(a),
        Cmd::Mount(a) => mount::run(a),
        Cmd::Pull(a) => pull::run(a),
        Cmd::Optimize(a) => optimize::run(a),
        Cmd::Layers(a) => layers::run(a),
        Cmd::Profile(a) => profile::run(a),
    }
}
