//! remote-snapshotter: containerd proxy snapshotter daemon.
//!
//! Wiring only: flags and config -> `stargzfs::StargzFs` (the eStargz
//! `RemoteFs`) -> `snapshotter::Snapshotter` -> gRPC on a unix socket, plus
//! the CRI image-service proxy whose keychain feeds the registry client
//! (`[cri_keychain]`), signals and an optional metrics endpoint. SIGTERM stops serving and keeps state and
//! mounts for the next start; SIGINT (or `--unmount-on-exit`) also unmounts
//! every remote layer.
//!
//! Mounts outlive the process: each mount's FUSE fd is kept by the fd
//! holder (this binary run as `remote-snapshotter fd-holder`, started on
//! demand in its own process group). SIGTERM stops reading requests, answers
//! those already read and exits; the next start (same or a new binary)
//! takes the fds back and serves the requests queued meanwhile. After a
//! crash the same happens; only the requests the dead process had read are
//! lost (the kernel fails them at once) and counted.

mod config;
mod fsconfig;
mod keychain;
mod metrics;

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

const DEFAULT_CONFIG: &str = "/etc/remote-snapshotter/config.toml";
/// `[fuse] handover_timeout_sec` unset: readers of a node whose daemon does
/// not come back get an error after ten minutes rather than never.
const DEFAULT_HANDOVER_TIMEOUT_SEC: u64 = 600;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "containerd remote snapshotter for lazily pulled eStargz layers"
)]
struct Args {
    /// Unix socket containerd's proxy_plugins entry points at.
    #[arg(
        long,
        default_value = "/run/remote-snapshotter/remote-snapshotter.sock"
    )]
    address: PathBuf,
    /// State directory (metadata and snapshot directories).
    #[arg(long, default_value = "/var/lib/remote-snapshotter")]
    root: PathBuf,
    /// TOML config; a missing file at the default path means defaults.
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// trace, debug, info, warn, error, or a tracing filter directive.
    #[arg(long, default_value = "info", env = "RUST_LOG")]
    log_level: String,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Serve Prometheus metrics on this TCP address (e.g. 127.0.0.1:9184).
    #[arg(long)]
    metrics_address: Option<String>,
    /// Unmount all remote layers on any exit, not only on SIGINT.
    #[arg(long)]
    unmount_on_exit: bool,
    /// Do not keep mounts alive across restarts (no fd holder): mounts die
    /// with the process, as before.
    #[arg(long)]
    no_fd_holder: bool,
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(clap::Subcommand, Debug)]
enum Mode {
    /// Hold the FUSE fds of the daemon's mounts while no daemon runs (the
    /// daemon starts this itself; exits once it holds nothing).
    FdHolder {
        /// The unix socket to serve (`ROOT/fdstore.sock`).
        #[arg(long)]
        socket: PathBuf,
        /// Give the connections up this many seconds after the last
        /// daemon went away without another attaching (0: never).
        #[arg(long, default_value_t = 0)]
        give_up_after: u64,
    },
}

fn init_logging(a: &Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&a.log_level).context("--log-level")?;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only on a terminal: a log file or journald gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if a.log_json {
        b.json().init();
    } else {
        b.init();
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tune_allocator();
    let args = Args::parse();
    init_logging(&args)?;
    if let Some(Mode::FdHolder {
        socket,
        give_up_after,
    }) = &args.mode
    {
        // Survive the signals that stop the daemon's process group or
        // terminal; it exits by itself once it holds nothing.
        // SAFETY: setting signal dispositions to ignore, before any thread
        // of ours depends on them.
        unsafe {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let cfg = stargzfs::FdHolderConfig {
            give_up_after: (*give_up_after > 0)
                .then(|| std::time::Duration::from_secs(*give_up_after)),
            ..Default::default()
        };
        return tokio::task::block_in_place(|| stargzfs::run_fd_holder(socket, &cfg))
            .context("fd holder");
    }
    let cfg = config::Config::load(&args.config, args.config.as_os_str() == DEFAULT_CONFIG)?;
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }

    // Signals first so a SIGTERM during a slow restore is not lost.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;

    let mut fs_cfg = fsconfig::stargz_config(&cfg, &args.root)?;
    // Kubernetes pull secrets: what the kubelet's pulls through our image
    // service carried is what the registry client asks first.
    let keychain = cfg
        .cri_keychain
        .enable_keychain
        .then(|| keychain::open(&cfg.cri_keychain, &args.root));
    if let Some(k) = &keychain {
        fs_cfg.credentials = Some(Arc::new(keychain::KeychainSource(k.clone())));
    }
    if !args.no_fd_holder {
        let exe = std::env::current_exe().context("own executable")?;
        let sock = stargzfs::fd_store_path(&args.root);
        fs_cfg.fd_holder = Some(vec![
            exe.into(),
            "fd-holder".into(),
            "--socket".into(),
            sock.into(),
            "--give-up-after".into(),
            cfg.fuse
                .handover_timeout_sec
                .unwrap_or(DEFAULT_HANDOVER_TIMEOUT_SEC)
                .to_string()
                .into(),
        ]);
    }
    let remote = Arc::new(stargzfs::StargzFs::new(&fs_cfg).context("eStargz filesystem")?);
    // Mounts handed over by the previous process are served before anything
    // else: their containers' reads are waiting in the kernel.
    let (adopted, failed) = remote.adopt_inherited().await;
    if adopted + failed > 0 {
        tracing::info!(adopted, failed, "handed-over mounts");
    }
    let pull = cfg.fallback_pull.settings();
    let mut pull_stats = None;
    let wrapped: Arc<dyn snapshotter::RemoteFs> = if pull.enable {
        let p = fullpull::PullingFs::new(remote.clone(), remote.client(), pull, &args.root)
            .context("fallback pull")?;
        pull_stats = Some(p.stats());
        Arc::new(p)
    } else {
        remote.clone()
    };
    let snap = Arc::new(
        snapshotter::Snapshotter::open(&args.root, wrapped)
            .await
            .with_context(|| format!("opening state in {}", args.root.display()))?,
    );

    if let Some(addr) = args.metrics_address.clone().or(cfg.metrics_address.clone()) {
        let l = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("metrics address {addr}"))?;
        tracing::info!(%addr, "serving metrics");
        tokio::spawn(metrics::serve(
            l,
            snap.metrics(),
            Some(remote.clone()),
            pull_stats,
        ));
    }

    if let Some(k) = keychain.clone() {
        tokio::spawn(keychain::flush_every(k, std::time::Duration::from_secs(60)));
    }

    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut routes = snapshotter::server::routes(snap.clone());
    let mut cri_server = None;
    if let Some(k) = keychain.clone() {
        let upstream = cfg.cri_keychain.image_service_path();
        let proxy =
            cri_keychain::ImageServiceProxy::new(cri_keychain::connect_upstream(&upstream), k);
        match cfg.cri_keychain.listen_path.clone() {
            Some(path) => {
                let l = snapshotter::server::bind(&path)?;
                tracing::info!(address = %path.display(), upstream = %upstream.display(), "serving the CRI image service");
                let stop = stopped();
                cri_server = Some(tokio::spawn(async move {
                    cri_keychain::serve(l, &path, proxy, stop).await
                }));
            }
            None => {
                tracing::info!(address = %args.address.display(), upstream = %upstream.display(), "serving the CRI image service");
                routes = routes.add_service(proxy.into_server());
            }
        }
    }
    let listener = snapshotter::server::bind(&args.address)?;
    tracing::info!(address = %args.address.display(), root = %args.root.display(), "serving");
    let server = {
        let path = args.address.clone();
        let stop = stopped();
        tokio::spawn(async move {
            snapshotter::server::serve_routes(listener, &path, routes, stop).await
        })
    };
    let unmount = tokio::select! {
        _ = term.recv() => { tracing::info!("SIGTERM: stopping, keeping mounts"); args.unmount_on_exit }
        _ = int.recv() => { tracing::info!("SIGINT: stopping and unmounting"); true }
    };
    let _ = tx.send(true);
    // In-flight calls get a moment to finish; containerd retries the rest.
    match tokio::time::timeout(std::time::Duration::from_secs(10), server).await {
        Ok(Ok(Err(e))) => tracing::error!(error = %e, "server error"),
        Err(_) => tracing::warn!("server did not stop in 10s"),
        _ => {}
    }
    if let Some(s) = cri_server {
        match tokio::time::timeout(std::time::Duration::from_secs(10), s).await {
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "CRI image service error"),
            Err(_) => tracing::warn!("CRI image service did not stop in 10s"),
            _ => {}
        }
    }
    if let Some(k) = keychain {
        // Last-used times since the last flush.
        let _ = tokio::task::spawn_blocking(move || k.flush()).await;
    }
    if unmount {
        snap.unmount_all().await;
    } else {
        // Replies to requests already read go out; a read that needs the
        // registry may take up to the fetch timeout.
        let drain = fs_cfg
            .fetch_timeout
            .unwrap_or(std::time::Duration::from_secs(10))
            + std::time::Duration::from_secs(5);
        let (n, left) = remote.hand_over_all(drain).await;
        tracing::info!(
            mounts = n,
            unanswered = left,
            "mounts left for the next process"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// glibc malloc keeps freed memory per thread arena: with many runtime and
/// FUSE threads passing multi-megabyte fetch buffers around, RSS grew to
/// several times the live data (benchmarks: 370-400 MiB after a background
/// fetch, ~190 MiB with these settings). Few arenas, and big buffers from
/// mmap so that freeing them returns the memory at once.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before the
    // daemon starts its own work.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 20);
    }
}
