//! A real containerd 1.6 with a private config: root, state and sockets in a
//! scratch directory, the CRI plugin off (or on, configured for our
//! snapshotter: [`CriOptions`]), and optionally our snapshotter as the proxy
//! plugin `remote`. Stopped by PID on drop, after removing its tasks, and
//! whatever it left mounted under its directories is unmounted.

use crate::process::{wait_until, Service};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The namespace every `ctr` call of the harness uses.
pub const NAMESPACE: &str = "e2e";

/// The namespace containerd's CRI plugin keeps pods, containers and images in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// How the CRI plugin is configured when it is enabled: our snapshotter
/// (`remote`) for every pull, the `cri.*` snapshot labels passed on, and
/// plain HTTP for the local registries.
#[derive(Clone, Debug, Default)]
pub struct CriOptions {
    /// `sandbox_image`: the pause image, a reference on a local registry.
    pub sandbox_image: String,
    /// Registries (`127.0.0.1:PORT`) reached over plain HTTP (a mirror entry each).
    pub plain_http: Vec<String>,
    /// Give pods their own network through the CNI bridge, host-local and
    /// loopback plugins (Debian's containernetworking-plugins); without it
    /// only host-network pods can run.
    pub cni: bool,
}

/// Where the CNI plugins are installed (Debian's containernetworking-plugins).
pub const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";

/// Harness instances alive in this process.
static LIVE: AtomicU32 = AtomicU32::new(0);

pub struct Containerd {
    /// Scratch directory holding config, root, state, sockets and the log.
    pub dir: PathBuf,
    /// The gRPC socket (`ctr -a`).
    pub socket: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    /// The bridge the CNI config creates (deleted on drop), when CRI pods
    /// have their own network.
    bridge: Option<String>,
    service: Service,
}

impl Containerd {
    /// Start containerd in `scratch/containerd-N`; with `snapshotter_socket`
    /// the proxy plugin `remote` points at it (it need not exist yet:
    /// containerd dials it lazily).
    pub fn start(scratch: &Path, snapshotter_socket: Option<&Path>) -> Containerd {
        Self::start_with(scratch, snapshotter_socket, None)
    }

    /// Start containerd with its CRI plugin enabled and configured by `cri`.
    pub fn start_cri(scratch: &Path, snapshotter_socket: &Path, cri: &CriOptions) -> Containerd {
        Self::start_with(scratch, Some(snapshotter_socket), Some(cri))
    }

    fn start_with(
        scratch: &Path,
        snapshotter_socket: Option<&Path>,
        cri: Option<&CriOptions>,
    ) -> Containerd {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = scratch.join(format!("containerd-{n}"));
        let root = dir.join("root");
        let state = dir.join("state");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        // Unix socket paths are limited to 108 bytes; tempdirs are short, but
        // say so clearly if one is not.
        let socket = dir.join("c.sock");
        assert!(
            socket.as_os_str().len() < 100,
            "socket path too long for AF_UNIX: {}",
            socket.display()
        );
        let disabled = if cri.is_some() {
            ""
        } else {
            r#"disabled_plugins = ["io.containerd.grpc.v1.cri"]"#
        };
        let mut config = format!(
            r#"version = 2
root = "{root}"
state = "{state}"
{disabled}
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[debug]
  address = "{dir}/debug.sock"
  level = "info"
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"
"#,
            root = root.display(),
            state = state.display(),
            sock = socket.display(),
            dir = dir.display(),
        );
        if let Some(s) = snapshotter_socket {
            config.push_str(&format!(
                "[proxy_plugins.remote]\n  type = \"snapshot\"\n  address = \"{}\"\n",
                s.display()
            ));
        }
        let mut bridge = None;
        if let Some(cri) = cri {
            let (section, br) = cri_config(&dir, cri, n);
            config.push_str(&section);
            bridge = br;
        }
        let cfg = dir.join("config.toml");
        std::fs::write(&cfg, config).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(&cfg);
        let log = dir.join("containerd.log");
        let service = Service::spawn("containerd", cmd, &log).expect("spawn containerd");
        LIVE.fetch_add(1, Ordering::SeqCst);
        let mut c = Containerd {
            dir,
            socket,
            root,
            state,
            bridge,
            service,
        };
        let up = wait_until(Duration::from_secs(20), || {
            c.socket.exists() && c.ctr(&["version"]).status.success()
        });
        if !up {
            let running = c.service.is_running();
            panic!(
                "containerd did not come up (running: {running}); log:\n{}",
                c.log_tail()
            );
        }
        c
    }

    pub fn pid(&self) -> u32 {
        self.service.pid()
    }

    /// SIGKILL this containerd (shims and containers keep running) and
    /// start it again on the same config, root, state and sockets.
    pub fn restart(&mut self) {
        self.service.kill();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config").arg(self.dir.join("config.toml"));
        self.service = Service::spawn("containerd", cmd, &self.dir.join("containerd.log"))
            .expect("spawn containerd");
        let up = wait_until(Duration::from_secs(20), || {
            self.ctr(&["version"]).status.success()
        });
        assert!(
            up,
            "containerd did not come back; log:\n{}",
            self.log_tail()
        );
    }

    /// Run `ctr -a SOCK -n e2e ARGS...`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_in(NAMESPACE, args)
    }

    /// Run `ctr -a SOCK -n NAMESPACE ARGS...`.
    pub fn ctr_in(&self, namespace: &str, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(&self.socket)
            .args(["-n", namespace])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// Like [`Containerd::ctr`], panicking with stderr and the daemon's log
    /// on failure; returns stdout.
    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        if !out.status.success() {
            panic!(
                "ctr {args:?} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log tail:\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ctr images pull --plain-http REF` with an optional snapshotter.
    pub fn pull_plain_http(&self, reference: &str, snapshotter: Option<&str>) -> String {
        let mut args = vec!["images", "pull", "--plain-http"];
        let s;
        if let Some(name) = snapshotter {
            s = format!("--snapshotter={name}");
            args.push(&s);
        }
        args.push(reference);
        self.ctr_ok(&args)
    }

    /// `ctr run --rm` a fresh container of `image` and return its output
    /// (stdout, and stderr if it wrote any), panicking if it fails.
    /// Container ids are unique across concurrent tests (runc state under
    /// /run/containerd is shared between instances).
    pub fn run(&self, image: &str, snapshotter: Option<&str>, cmd: &[&str]) -> String {
        let (ok, out, err) = self.run_full(image, snapshotter, cmd);
        if !ok {
            panic!(
                "ctr run {image} {cmd:?} failed:\noutput: {out}\nctr: {err}\ncontainerd log tail:\n{}",
                self.log_tail()
            );
        }
        out
    }

    /// [`Containerd::run`] that may fail: whether it worked, the
    /// container's output and ctr's stderr. The output goes to a file the
    /// shim writes (`--log-uri file://`), not through ctr's FIFOs: with
    /// those, containerd 1.6 sometimes drops the last write of a process
    /// that exits right after it (containerd#5741; seen here as a missing
    /// last line under load).
    pub fn run_full(
        &self,
        image: &str,
        snapshotter: Option<&str>,
        cmd: &[&str],
    ) -> (bool, String, String) {
        let id = unique_id("c");
        let log = self.dir.join(format!("{id}.out"));
        let uri = format!("file://{}", log.display());
        let mut args = vec!["run", "--rm", "--log-uri", &uri];
        let s;
        if let Some(name) = snapshotter {
            s = format!("--snapshotter={name}");
            args.push(&s);
        }
        args.push(image);
        args.push(&id);
        args.extend_from_slice(cmd);
        let res = self.ctr(&args);
        let out = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        (
            res.status.success(),
            out,
            String::from_utf8_lossy(&res.stderr).into_owned(),
        )
    }

    /// The last 40 lines of the daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Kill and delete every task and container in the namespaces the
    /// harness uses so their shims exit (shims outlive containerd otherwise).
    fn remove_tasks(&self) {
        for ns in [NAMESPACE, CRI_NAMESPACE] {
            let out = self.ctr_in(ns, &["tasks", "ls", "-q"]);
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.ctr_in(ns, &["tasks", "kill", "-s", "SIGKILL", id]);
                wait_until(Duration::from_secs(5), || {
                    self.ctr_in(ns, &["tasks", "rm", "-f", id]).status.success()
                });
            }
            let out = self.ctr_in(ns, &["containers", "ls", "-q"]);
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self.ctr_in(ns, &["containers", "rm", id]);
            }
        }
    }
}

/// The CRI plugin's section of the config (and, with `cri.cni`, a CNI
/// network config in `dir/cni`); returns it and the bridge it creates.
fn cri_config(dir: &Path, cri: &CriOptions, n: u32) -> (String, Option<String>) {
    const CRI: &str = r#"[plugins."io.containerd.grpc.v1.cri"]"#;
    let mut s = format!(
        r#"{CRI}
  # Writing a negative oom_score_adj is refused in this sandbox (CRI gives
  # pods -998); a node runs containerd with the privilege to do it.
  restrict_oom_score_adj = true
  sandbox_image = "{sandbox}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "remote"
    disable_snapshot_annotations = false
"#,
        sandbox = cri.sandbox_image,
    );
    for host in &cri.plain_http {
        s.push_str(&format!(
            "  [plugins.\"io.containerd.grpc.v1.cri\".registry.mirrors.\"{host}\"]\n    endpoint = [\"http://{host}\"]\n"
        ));
    }
    let cni_dir = dir.join("cni");
    let conf_dir = cni_dir.join("conf");
    let bin_dir = cni_dir.join("bin");
    std::fs::create_dir_all(&conf_dir).unwrap();
    std::fs::create_dir_all(&bin_dir).unwrap();
    s.push_str(&format!(
        "  [plugins.\"io.containerd.grpc.v1.cri\".cni]\n    bin_dir = \"{}\"\n    conf_dir = \"{}\"\n",
        bin_dir.display(),
        conf_dir.display()
    ));
    if !cri.cni {
        return (s, None);
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        let _ = std::os::unix::fs::symlink(
            Path::new(CNI_PLUGIN_DIR).join(plugin),
            bin_dir.join(plugin),
        );
    }
    // A bridge and subnet of its own (interface names are at most 15 bytes):
    // other tests on this machine may run pods at the same time.
    let tag = (std::process::id() ^ (n << 16)) & 0xff_ffff;
    let bridge = format!("rsnap{tag:06x}");
    let subnet = format!("10.{}.{}.0/24", 200 + (tag >> 16) % 50, tag & 0xff);
    // No gateway, no masquerading: pods need an address, not a route out,
    // and the host's forwarding and NAT settings stay as they are.
    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": format!("e2e-{tag:06x}"),
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": false,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": subnet}]],
                "dataDir": cni_dir.join("ipam"),
            },
        }],
    });
    std::fs::write(conf_dir.join("10-e2e.conflist"), conf.to_string()).unwrap();
    (s, Some(bridge))
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.service.is_running() {
            self.remove_tasks();
        }
        self.service.stop(Duration::from_secs(10));
        unmount_under(&self.root);
        unmount_under(&self.state);
        if let Some(bridge) = &self.bridge {
            // CNI DEL removes a pod's veth and address, never the bridge.
            let _ = Command::new("ip")
                .args(["link", "delete", bridge])
                .stderr(std::process::Stdio::null())
                .status();
        }
        // Shared leftovers may be in use by another instance of this process
        // (cargo runs test binaries one at a time, so process-local is enough).
        if LIVE.fetch_sub(1, Ordering::SeqCst) == 1 {
            remove_run_leftovers();
        }
    }
}

/// A name unique within this machine for this run: pid + counter + time.
pub fn unique_id(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{t:x}", std::process::id())
}

/// Mount points at or below `dir`, deepest first (from /proc/self/mountinfo,
/// through the workspace's one parser). A table that cannot be read fails
/// the test: an empty answer would pass every "nothing left mounted" check.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let table = mountinfo::read_self().expect("read /proc/self/mountinfo");
    mountinfo::mount_points_under(&table, dir)
}

/// Lazily unmount everything at or below `dir` (stacked mounts included).
pub fn unmount_under(dir: &Path) {
    for _ in 0..4 {
        let mounts = mounts_under(dir);
        if mounts.is_empty() {
            return;
        }
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
                // SAFETY: a valid NUL-terminated path; MNT_DETACH never blocks.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

/// containerd 1.6 writes under /run/containerd whatever its config says, and
/// runc makes a cgroup per namespace; remove what is empty now (never
/// anything non-empty: another process may be using it).
fn remove_run_leftovers() {
    for ns in [NAMESPACE, CRI_NAMESPACE] {
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in rd.flatten() {
                let _ = std::fs::remove_dir(c.path().join(ns));
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(ns));
    }
    // CRI pods' network namespaces are bind-mounted here (removed with the pod).
    let _ = std::fs::remove_dir("/run/netns");
    let run = Path::new("/run/containerd");
    for sub in [
        format!("runc/{NAMESPACE}"),
        format!("runc/{CRI_NAMESPACE}"),
        "runc".into(),
        "fifo".into(),
        "s".into(),
        String::new(),
    ] {
        let _ = std::fs::remove_dir(run.join(sub));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_differ() {
        assert_ne!(unique_id("x"), unique_id("x"));
    }
}
