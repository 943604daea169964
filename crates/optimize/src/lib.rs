//! `rsnap optimize`: run an image's workload once in a runc container on a
//! rootfs assembled from its layers, record the files it opens or executes
//! (fanotify), and convert the image to eStargz with each layer's recorded
//! files first, followed by the prefetch landmark.
//!
//! The phases: open the source image (`convert::SourceImage`), unpack each
//! layer into its own directory ([`unpack`]), mount an overlay of them
//! ([`rootfs`]), build the runc bundle ([`spec`]), watch the overlay's
//! superblock ([`fanotify`]) while the container runs ([`run`]), map each
//! opened inode back to its topmost layer ([`lists`]), and convert. Guards
//! undo each step (container, watcher, mount, scratch dir) on every exit,
//! Ctrl-C included.

mod error;
mod fanotify;
mod lists;
pub mod record;
mod rootfs;
mod run;
mod spec;
mod unpack;

pub use error::{Error, Result};
pub use record::{LayerRecord, Record, RecordError};
pub use run::Ended;
pub use spec::BindMount;

use convert::{Descriptor, SourceImage};
use indicatif::ProgressBar;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Handle;

#[derive(Clone, Debug)]
pub struct Options {
    /// The command to run; empty runs the image's Entrypoint + Cmd.
    pub command: Vec<String>,
    /// `KEY=VALUE` added to (or replacing in) the image's Env.
    pub env: Vec<String>,
    pub mounts: Vec<BindMount>,
    /// How long the workload runs at most (not zero).
    pub period: Duration,
    /// Run until SIGINT or SIGTERM instead of for `period`.
    pub wait_on_signal: bool,
    /// Share the host's network namespace (default: a new one, loopback only).
    pub net_host: bool,
    /// Save the record here (before converting).
    pub record_out: Option<PathBuf>,
    /// Convert from this record instead of running the workload.
    pub reuse_record: Option<PathBuf>,
    /// Paths and globs to put first too, in the layer that has them.
    pub prefetch_list: Option<PathBuf>,
    /// How to convert (the per-layer lists are set from the record).
    pub convert: convert::Options,
    pub runc: PathBuf,
    /// Where the scratch directory (layers, overlay, bundle) is made.
    pub scratch_dir: PathBuf,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            command: Vec::new(),
            env: Vec::new(),
            mounts: Vec::new(),
            period: Duration::from_secs(10),
            wait_on_signal: false,
            net_host: false,
            record_out: None,
            reuse_record: None,
            prefetch_list: None,
            convert: convert::Options::default(),
            runc: "runc".into(),
            scratch_dir: std::env::temp_dir(),
        }
    }
}

/// What a run found, beyond the record.
#[derive(Clone, Debug)]
pub struct RunStats {
    pub ended: Ended,
    /// Distinct files opened (including ones created by the workload).
    pub opened: usize,
    /// The fanotify queue overflowed: the record may miss files.
    pub overflowed: bool,
}

#[derive(Debug)]
pub struct Outcome {
    pub record: Record,
    /// `None` with `--reuse-record`.
    pub run: Option<RunStats>,
    pub report: convert::Report,
}

/// Optimize `src` into `dst` (each `oci:DIR[:TAG]` or a registry
/// reference); registry calls run on `rt`.
pub fn optimize(
    src: &str,
    dst: &str,
    cfg: &registry::ClientConfig,
    rt: &Handle,
    opts: &Options,
    bar: &(dyn Fn(&Descriptor) -> ProgressBar + Sync),
) -> Result<Outcome> {
    if opts.period.is_zero() {
        return Err(Error::PeriodZero);
    }
    check_destination(dst)?;
    let image = SourceImage::open(src, cfg, rt, &opts.convert.platforms)?;
    let digests: Vec<String> = image
        .layers()
        .iter()
        .map(|d| d.digest().to_string())
        .collect();
    let (record, run, listings) = match &opts.reuse_record {
        Some(p) => {
            let bytes = std::fs::read(p).map_err(Error::io(format!("reading {}", p.display())))?;
            let r = Record::parse(&bytes)?;
            if r.image != image.manifest_digest() {
                tracing::warn!(record = %r.image, image = %image.manifest_digest(), "the record is of another image digest; using the layers both have");
            }
            (r, None, None)
        }
        None => {
            let stop = Interrupt::install(rt);
            let (r, stats, listings) = profile(&image, &digests, opts, &stop.flag)?;
            stop.done();
            (r, Some(stats), Some(listings))
        }
    };
    if let Some(p) = &opts.record_out {
        std::fs::write(p, record.to_json())
            .map_err(Error::io(format!("writing {}", p.display())))?;
    }
    let prefetch = match &opts.prefetch_list {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(Error::io(format!("reading {}", p.display())))?,
        ),
        None => None,
    };
    let listings = match (&prefetch, listings) {
        (None, _) => None,
        (Some(_), Some(l)) => Some(l),
        (Some(_), None) => Some(list_layers(&image)?),
    };
    let by_layer = lists::layer_lists(
        &digests,
        &record,
        prefetch.as_deref().zip(listings.as_deref()),
    )?;
    let mut copts = opts.convert.clone();
    copts.layer.prioritized_by_layer = by_layer;
    let report = convert::convert_image(&image, dst, cfg, rt, &copts, bar)?;
    Ok(Outcome {
        record,
        run,
        report,
    })
}

/// Fail before the run if an `oci:` destination cannot be written.
fn check_destination(dst: &str) -> Result<()> {
    if !dst.starts_with("oci:") {
        return Ok(());
    }
    let r = oci_layout::OciRef::parse(dst).map_err(convert::Error::from)?;
    let err = |source| Error::Destination {
        dst: dst.to_string(),
        source,
    };
    std::fs::create_dir_all(&r.dir).map_err(err)?;
    tempfile::tempfile_in(&r.dir).map_err(err)?;
    Ok(())
}

/// The listings of every layer, read (and verified) without unpacking.
fn list_layers(image: &SourceImage) -> Result<Vec<unpack::Listing>> {
    let never = AtomicBool::new(false);
    image
        .layers()
        .iter()
        .zip(image.diff_ids())
        .map(|(d, id)| {
            let blob = image.layer_blob(d, &ProgressBar::hidden())?;
            unpack::read_layer(&blob, d, id, None, &never)
        })
        .collect()
}

/// Run the workload and record what it opens.
fn profile(
    image: &SourceImage,
    digests: &[String],
    opts: &Options,
    stop: &AtomicBool,
) -> Result<(Record, RunStats, Vec<unpack::Listing>)> {
    let n = digests.len();
    let mut rootfs = rootfs::Rootfs::create(&opts.scratch_dir)?;
    let mut listings = Vec::with_capacity(n);
    for (i, (d, id)) in image.layers().iter().zip(image.diff_ids()).enumerate() {
        let blob = image.layer_blob(d, &ProgressBar::hidden())?;
        let dir = rootfs.make_layer_dir(i)?;
        listings.push(unpack::read_layer(&blob, d, id, Some(&dir), stop)?);
    }
    rootfs.mount(n)?;
    let table = rootfs.inode_table(n)?;
    let spec = spec::build(
        &rootfs.merged,
        image.config(),
        &spec::Process {
            command: &opts.command,
            env: &opts.env,
            mounts: &opts.mounts,
            net_host: opts.net_host,
        },
    )?;
    let bundle = rootfs.dir.join("bundle");
    std::fs::create_dir(&bundle).map_err(Error::io("creating the bundle"))?;
    let json = serde_json::to_vec_pretty(&spec).expect("a runtime spec serializes");
    std::fs::write(bundle.join("config.json"), json).map_err(Error::io("writing config.json"))?;

    let watcher = fanotify::Watcher::start(&rootfs.merged)?;
    let id = container_id();
    let state = rootfs.dir.join("runc");
    let mut container = run::Container::start(&opts.runc, &state, &bundle, &id)?;
    let period = (!opts.wait_on_signal).then_some(opts.period);
    let ended = container.wait(period, stop, opts.wait_on_signal);
    drop(container);
    let (accesses, overflowed) = watcher.finish();
    drop(rootfs);
    let ended = ended?;
    if overflowed {
        tracing::warn!("fanotify queue overflowed: the record may miss files");
    }
    let record = lists::record_of(&image.manifest_digest(), digests, &table, &accesses);
    let stats = RunStats {
        ended,
        opened: accesses.len(),
        overflowed,
    };
    Ok((record, stats, listings))
}

fn container_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("rsnap-optimize-{}-{nanos}", std::process::id())
}

/// SIGINT/SIGTERM while profiling set `flag` (the run stops and every guard
/// cleans up); after [`Interrupt::done`], they end the process as usual.
struct Interrupt {
    flag: Arc<AtomicBool>,
    profiling: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Interrupt {
    fn install(rt: &Handle) -> Interrupt {
        use tokio::signal::unix::{signal, SignalKind};
        let flag = Arc::new(AtomicBool::new(false));
        let profiling = Arc::new(AtomicBool::new(true));
        let _enter = rt.enter();
        let (int, term) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        );
        let task = match (int, term) {
            (Ok(mut int), Ok(mut term)) => {
                let (f, p) = (flag.clone(), profiling.clone());
                Some(rt.spawn(async move {
                    loop {
                        tokio::select! {
                            _ = int.recv() => {}
                            _ = term.recv() => {}
                        }
                        if !p.load(Ordering::Relaxed) {
                            // Our handler replaced the default one: keep
                            // its meaning once nothing needs cleaning up.
                            std::process::exit(130);
                        }
                        f.store(true, Ordering::Relaxed);
                    }
                }))
            }
            _ => {
                tracing::warn!("cannot handle SIGINT/SIGTERM; Ctrl-C may leave a mount behind");
                None
            }
        };
        Interrupt {
            flag,
            profiling,
            task,
        }
    }

    fn done(&self) {
        self.profiling.store(false, Ordering::Relaxed);
    }
}

impl Drop for Interrupt {
    fn drop(&mut self) {
        // The handlers stay installed (tokio cannot remove them): the task
        // lives on and ends the process on the next signal.
        self.done();
        drop(self.task.take());
    }
}
