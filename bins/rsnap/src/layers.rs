//! `rsnap layers`: the remote layers mounted under a daemon's root, with
//! their image, fetched share and state. Facts come from the mount table,
//! each mount's `/.stargz-snapshotter/<digest>.json` (read with a timeout:
//! a mount whose daemon is not running does not answer) and the fd holder
//! (image reference; whether the mount survives a daemon restart).

use anyhow::Context;
use serde::Serialize;
use snapshotter::remote::labels::REF_KEYS;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// The daemon's state directory.
    #[arg(long, default_value = "/var/lib/remote-snapshotter")]
    root: PathBuf,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Row {
    mountpoint: PathBuf,
    layer: String,
    image: Option<String>,
    size: Option<u64>,
    fetched: Option<u64>,
    fetched_percent: Option<f64>,
    /// `served`, `not served` (no daemon answers; reads wait), `dead`.
    state: &'static str,
    /// Kept by the fd holder: survives a restart or crash of the daemon.
    held: bool,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct StateFile {
    size: u64,
    fetched_size: u64,
    fetched_percent: f64,
}

/// The state file, or the state word when it cannot be read in time.
fn read_state(mp: &Path, digest: &str) -> Result<StateFile, &'static str> {
    let path = mp
        .join(".stargz-snapshotter")
        .join(format!("{digest}.json"));
    let (tx, rx) = std::sync::mpsc::channel();
    // A detached thread: a mount nobody serves blocks it until served.
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::read(&path));
    });
    match rx.recv_timeout(Duration::from_secs(2)) {
        Ok(Ok(b)) => serde_json::from_slice(&b).map_err(|_| "bad state file"),
        Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOTCONN) => Err("dead"),
        Ok(Err(_)) => Err("unreadable"),
        Err(_) => Err("not served"),
    }
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let root = a.root.canonicalize().unwrap_or(a.root.clone());
    let mounts = mountinfo::read_self().context("reading the mount table")?;
    let held: HashMap<PathBuf, lazyfs::handover::ConnState> =
        lazyfs::handover::FdStore::new(root.join("fdstore.sock"))
            .list()
            .map(|l| {
                l.into_iter()
                    .map(|(s, _fd)| (s.mountpoint.clone(), s))
                    .collect()
            })
            .unwrap_or_default();
    let mut rows = Vec::new();
    for m in mounts
        .iter()
        .filter(|m| m.fs_type == "fuse.rsnap" && m.mount_point.starts_with(&root))
    {
        let layer = m
            .source
            .to_string_lossy()
            .strip_prefix("rsnap:")
            .unwrap_or_default()
            .to_string();
        let h = held.get(&m.mount_point);
        let image = h.and_then(|h| {
            REF_KEYS
                .iter()
                .find_map(|k| h.labels.get(*k).filter(|v| !v.is_empty()).cloned())
        });
        let (size, fetched, pct, state) = match read_state(&m.mount_point, &layer) {
            Ok(s) => (
                Some(s.size),
                Some(s.fetched_size),
                Some(s.fetched_percent),
                "served",
            ),
            Err(w) => (None, None, None, w),
        };
        rows.push(Row {
            mountpoint: m.mount_point.clone(),
            layer,
            image,
            size,
            fetched,
            fetched_percent: pct,
            state,
            held: h.is_some(),
        });
    }
    if a.json {
        for r in &rows {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!(
        "{:<24} {:<19} {:<40} {:>8} {:<11} HELD",
        "SNAPSHOT", "LAYER", "IMAGE", "FETCHED", "STATE"
    );
    for r in &rows {
        // ROOT/snapshots/<id>/fs -> <id>
        let snap = r
            .mountpoint
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let short = r.layer.get(..19).unwrap_or(&r.layer);
        let pct = r
            .fetched_percent
            .map_or("-".to_string(), |p| format!("{p:.1}%"));
        println!(
            "{:<24} {:<19} {:<40} {:>8} {:<11} {}",
            snap,
            short,
            r.image.as_deref().unwrap_or("-"),
            pct,
            r.state,
            if r.held { "yes" } else { "no" }
        );
    }
    Ok(())
}
