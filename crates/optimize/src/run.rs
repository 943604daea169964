//! The workload as a runc container: `runc run` in the foreground (its
//! output goes to our stderr), stopped at the end of the period, on a
//! signal, or when the command exits. Dropping [`Container`] kills what is
//! left and runs `runc delete -f`, so no container outlives a run.

use crate::error::{Error, Result};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why the profiling run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The command exited with status 0.
    Exited,
    /// The period elapsed (the workload was killed).
    Period,
    /// SIGINT or SIGTERM under `--wait-on-signal`.
    Signal,
}

pub(crate) struct Container {
    runc: PathBuf,
    state: PathBuf,
    id: String,
    child: Option<Child>,
}

impl Container {
    /// `runc --root STATE run --bundle BUNDLE ID`, in its own process
    /// group so that a terminal's Ctrl-C reaches only us (we stop it).
    pub fn start(runc: &Path, state: &Path, bundle: &Path, id: &str) -> Result<Container> {
        let stderr = || {
            std::io::stderr()
                .as_fd()
                .try_clone_to_owned()
                .map_err(Error::io("duplicating stderr"))
        };
        let child = Command::new(runc)
            .arg("--root")
            .arg(state)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(stderr()?)
            .stderr(stderr()?)
            .process_group(0)
            .spawn()
            .map_err(|e| Error::Runc {
                what: format!("{} run", runc.display()),
                detail: e.to_string(),
            })?;
        Ok(Container {
            runc: runc.to_path_buf(),
            state: state.to_path_buf(),
            id: id.to_string(),
            child: Some(child),
        })
    }

    /// Wait for the command to exit, for `period` (None: no limit) to pass,
    /// or for `stop`: `signal_ends` says whether `stop` is the normal end
    /// (`--wait-on-signal`) or an interruption.
    pub fn wait(
        &mut self,
        period: Option<Duration>,
        stop: &AtomicBool,
        signal_ends: bool,
    ) -> Result<Ended> {
        let start = Instant::now();
        let child = self.child.as_mut().expect("a started container");
        loop {
            if let Some(status) = child.try_wait().map_err(Error::io("waiting for runc"))? {
                self.child = None;
                return check(status).map(|()| Ended::Exited);
            }
            if stop.load(Ordering::Relaxed) {
                return if signal_ends {
                    Ok(Ended::Signal)
                } else {
                    Err(Error::Interrupted)
                };
            }
            if period.is_some_and(|p| start.elapsed() >= p) {
                return Ok(Ended::Period);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn runc(&self, args: &[&str]) -> Result<()> {
        let out = Command::new(&self.runc)
            .arg("--root")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Error::Runc {
                what: args.join(" "),
                detail: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(Error::Runc {
                what: args.join(" "),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }
}

/// A non-zero exit of the workload is an error: its profile may be that
/// of a failed start.
fn check(status: ExitStatus) -> Result<()> {
    // runc reports a container killed by signal N as 128 + N.
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(c), _) if c > 128 => {
            Err(Error::Workload(format!("was killed by signal {}", c - 128)))
        }
        (Some(c), _) => Err(Error::Workload(format!("exited with status {c}"))),
        (None, Some(s)) => Err(Error::Workload(format!("(runc) was killed by signal {s}"))),
        (None, None) => Err(Error::Workload("ended without a status".into())),
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = self.runc(&["kill", &self.id, "KILL"]) {
                tracing::debug!(error = %e, "runc kill");
            }
            // `runc run` returns once the container's init is gone; if the
            // container never started, kill runc itself.
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if let Err(e) = self.runc(&["delete", "-f", &self.id]) {
            // Nothing to delete when runc removed it on exit.
            tracing::debug!(error = %e, "runc delete");
        }
    }
}
