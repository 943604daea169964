//! The fd holder's loop: keeps the anchors of mounted layers while daemons
//! come and go, and gives them up when no daemon comes back.
//!
//! Leases bound the wait of readers: a daemon keeps an `attach` connection
//! open while it lives. When the last lease ends (the daemon stopped or
//! died) and no daemon attaches or lists the connections within
//! `give_up_after`, nobody will answer the requests queued in the kernel:
//! the holder closes its anchors (with no other fd left the kernel aborts
//! each connection, so the waiting readers get an error instead of hanging
//! forever), detaches the mount points, notes what it gave up in
//! [`GAVE_UP_FILE`] beside its socket for the next daemon to count, and
//! exits. The timer is only armed by a lease that ended: a daemon that never
//! attaches (an older binary) keeps the old behaviour, waiting without end.

use super::{recv, send, seqpacket, Answer, ConnState, Req};
use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Name of the file, beside the socket, where a holder that gave up adds
/// one line per mount it gave up (the daemon counts and removes it).
pub const GAVE_UP_FILE: &str = "fd-holder-gave-up";

/// How the holder decides it is no longer needed.
#[derive(Debug, Clone)]
pub struct HolderConfig {
    /// Exit after holding nothing for this long.
    pub idle_exit: Duration,
    /// How often entries whose mount is gone are dropped (and the give-up
    /// deadline checked).
    pub prune_every: Duration,
    /// Give every connection up this long after the last daemon's lease
    /// ended with no daemon back; `None`: wait for a daemon forever.
    pub give_up_after: Option<Duration>,
}

impl Default for HolderConfig {
    fn default() -> Self {
        HolderConfig {
            idle_exit: Duration::from_secs(30),
            prune_every: Duration::from_secs(2),
            give_up_after: None,
        }
    }
}

/// What serving one client connection left behind.
enum Served {
    Done,
    /// A daemon's lease: keep the connection until it closes.
    Lease(u32),
}

type Held = HashMap<String, (ConnState, OwnedFd)>;

/// The holder: serve the store at `path` until nothing has been held for
/// `idle_exit`, the socket's directory is gone, or it gave its connections
/// up (`give_up_after`). Entries whose mount point is no longer a FUSE mount
/// are dropped (their connection then ends). Single-threaded; every call
/// is short.
pub fn run_holder(path: &Path, cfg: &HolderConfig) -> std::io::Result<()> {
    let sock = seqpacket()?;
    let _ = std::fs::remove_file(path);
    rustix::net::bind(&sock, &rustix::net::SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&sock, 64)?;
    info!(socket = %path.display(), give_up_after = ?cfg.give_up_after, "fd holder serving");
    let mut held: Held = HashMap::new();
    let mut leases: Vec<(u32, OwnedFd)> = Vec::new();
    // Since when no daemon holds a lease, once one has ended.
    let mut orphaned_since: Option<Instant> = None;
    let mut empty_since = Some(Instant::now());
    let mut last_prune = Instant::now();
    loop {
        use rustix::event::{PollFd, PollFlags};
        let mut fds = vec![PollFd::new(&sock, PollFlags::IN)];
        fds.extend(leases.iter().map(|(_, l)| PollFd::new(l, PollFlags::IN)));
        // Wake for the give-up deadline too, not only every prune.
        let mut wait = cfg.prune_every;
        if let (Some(since), Some(limit)) = (orphaned_since, cfg.give_up_after) {
            wait = wait.min(limit.saturating_sub(since.elapsed()));
        }
        let timeout = rustix::event::Timespec::try_from(wait).ok();
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let accept = !fds[0].revents().is_empty();
        // A lease carries no more messages: anything readable is its end.
        let ended: Vec<usize> = (1..fds.len())
            .filter(|&i| !fds[i].revents().is_empty())
            .map(|i| i - 1)
            .collect();
        drop(fds);
        for i in ended.into_iter().rev() {
            let (pid, _) = leases.remove(i);
            info!(pid, "fd holder: a daemon's lease ended");
            if leases.is_empty() {
                orphaned_since = Some(Instant::now());
            }
        }
        if accept {
            if let Ok(conn) = rustix::net::accept_with(&sock, rustix::net::SocketFlags::CLOEXEC) {
                let t = Some(Duration::from_secs(5));
                let _ = rustix::net::sockopt::set_socket_timeout(
                    &conn,
                    rustix::net::sockopt::Timeout::Recv,
                    t,
                );
                match serve_one(conn.as_fd(), &mut held) {
                    Ok(Served::Lease(pid)) => {
                        info!(pid, "fd holder: a daemon attached");
                        leases.push((pid, conn));
                        orphaned_since = None;
                    }
                    Ok(Served::Done) => {}
                    Err(e) => debug!(error = %e, "fd holder: a client failed"),
                }
            }
        }
        if last_prune.elapsed() >= cfg.prune_every {
            last_prune = Instant::now();
            held.retain(|key, (st, _)| {
                let keep = crate::mounts::is_fuse_mounted(&canonical(&st.mountpoint));
                if !keep {
                    info!(key, "fd holder: mount gone; dropping its connection");
                }
                keep
            });
            if !path.parent().is_some_and(Path::exists) {
                warn!(socket = %path.display(), "fd holder: directory gone; exiting");
                return Ok(());
            }
        }
        if let (Some(since), Some(limit)) = (orphaned_since, cfg.give_up_after) {
            if leases.is_empty() && !held.is_empty() && since.elapsed() >= limit {
                give_up(path, std::mem::take(&mut held), limit);
                let _ = std::fs::remove_file(path);
                return Ok(());
            }
        }
        match (&empty_since, held.is_empty()) {
            (None, true) => empty_since = Some(Instant::now()),
            (Some(_), false) => empty_since = None,
            (Some(t), true) if t.elapsed() >= cfg.idle_exit => {
                let _ = std::fs::remove_file(path);
                info!("fd holder: nothing held; exiting");
                return Ok(());
            }
            _ => {}
        }
    }
}

/// No daemon came back: close every anchor (the kernel aborts a
/// connection when its last fd closes: queued and later requests fail),
/// detach the mount points, and leave a note for the next daemon.
fn give_up(path: &Path, held: Held, waited: Duration) {
    use std::io::Write;
    warn!(
        mounts = held.len(),
        waited_sec = waited.as_secs(),
        "fd holder: no daemon came back; aborting the connections it held"
    );
    let mut note = String::new();
    let states: Vec<ConnState> = held.into_values().map(|(st, _fd)| st).collect();
    // Every anchor is closed now. A mount whose connection another process
    // still serves (a daemon too old to attach) stays alive and is left
    // alone: only dead ones are detached.
    for st in states {
        let mp = canonical(&st.mountpoint);
        let detached = crate::mounts::cleanup_dead_mounts(&mp).unwrap_or_default();
        info!(mount = %mp.display(), detached = !detached.is_empty(), "fd holder: gave up a connection");
        note.push_str(&format!(
            "{}\t{}\n",
            st.layer_digest,
            st.mountpoint.display()
        ));
    }
    let file = path.with_file_name(GAVE_UP_FILE);
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(note.as_bytes()));
    if let Err(e) = res {
        warn!(file = %file.display(), error = %e, "fd holder: cannot note what it gave up");
    }
}

/// `p` with its parent canonicalized: the mount table has real paths, and
/// the mount point itself must not be touched (a stat could wait for a
/// server that is not there yet).
fn canonical(p: &Path) -> PathBuf {
    match (
        p.parent().and_then(|d| d.canonicalize().ok()),
        p.file_name(),
    ) {
        (Some(d), Some(n)) => d.join(n),
        _ => p.to_path_buf(),
    }
}

fn serve_one(conn: BorrowedFd<'_>, held: &mut Held) -> std::io::Result<Served> {
    let (msg, mut fds) = recv(conn)?;
    let reply = |a: &Answer, fd: Option<BorrowedFd<'_>>| -> std::io::Result<()> {
        send(conn, &serde_json::to_vec(a)?, fd)
    };
    let error = |e: String| Answer {
        error: Some(e),
        ..Default::default()
    };
    let req: Req = match serde_json::from_slice(&msg) {
        Ok(r) => r,
        Err(e) => return reply(&error(format!("bad request: {e}")), None).map(|()| Served::Done),
    };
    let mut served = Served::Done;
    match req {
        Req::Put { key, state } => {
            let Some(fd) = fds.pop() else {
                return reply(&error("put without an fd".into()), None).map(|()| Served::Done);
            };
            debug!(key, "fd holder: holding");
            held.insert(key, (state, fd));
        }
        Req::Del { key } => {
            debug!(key, "fd holder: releasing");
            held.remove(&key);
        }
        Req::List => {
            for (st, fd) in held.values() {
                let a = Answer {
                    state: Some(st.clone()),
                    ..Default::default()
                };
                reply(&a, Some(fd.as_fd()))?;
            }
            let end = Answer {
                end: true,
                ..Default::default()
            };
            return reply(&end, None).map(|()| Served::Done);
        }
        Req::Attach { pid } => served = Served::Lease(pid),
    }
    reply(
        &Answer {
            ok: true,
            ..Default::default()
        },
        None,
    )?;
    Ok(served)
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::handover::{check, FdStore};
    use std::io::{Read, Write};

    fn wait(mut f: impl FnMut() -> bool) -> bool {
        (0..250).any(|_| {
            f() || {
                std::thread::sleep(Duration::from_millis(20));
                false
            }
        })
    }

    fn state(mp: &str) -> ConnState {
        ConnState {
            mountpoint: mp.into(),
            layer_digest: "sha256:aa".into(),
            labels: [("k".to_string(), "v".to_string())].into(),
            proto: Some((7, 41)),
            mounted_at: 1,
        }
    }

    #[test]
    fn holder_keeps_fds_and_gives_back_the_same_open_file() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fd.sock");
        let cfg = HolderConfig {
            idle_exit: Duration::from_secs(600),
            prune_every: Duration::from_secs(600),
            give_up_after: None,
        };
        let p = sock.clone();
        std::thread::spawn(move || run_holder(&p, &cfg));
        let store = FdStore::new(&sock);
        assert!(wait(|| store.is_running()));
        let (mut rd, wr) = std::io::pipe().unwrap();
        let wr: OwnedFd = wr.into();
        store.put("/m/1", &state("/m/1"), wr.as_fd()).unwrap();
        drop(wr);
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, state("/m/1"));
        // The fd that came back writes into the same pipe.
        let mut w = std::fs::File::from(listed.into_iter().next().unwrap().1);
        w.write_all(b"hi").unwrap();
        drop(w);
        let mut got = [0u8; 2];
        rd.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        // Put without an fd is refused; del releases.
        assert!(store
            .call(
                &Req::Put {
                    key: "x".into(),
                    state: state("x")
                },
                None
            )
            .map(check)
            .unwrap()
            .is_err());
        store.del("/m/1").unwrap();
        assert!(store.list().unwrap().is_empty());
        // The holder closed its copy: the pipe's writer is gone.
        let mut rest = Vec::new();
        rd.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn holder_exits_when_idle_and_drops_entries_whose_mount_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fd.sock");
        let cfg = HolderConfig {
            idle_exit: Duration::from_millis(300),
            prune_every: Duration::from_millis(50),
            give_up_after: None,
        };
        let p = sock.clone();
        let t = std::thread::spawn(move || run_holder(&p, &cfg));
        let store = FdStore::new(&sock);
        assert!(wait(|| store.is_running()));
        let (_rd, wr) = std::io::pipe().unwrap();
        let wr: OwnedFd = wr.into();
        // Not a FUSE mount: pruned at the next tick, then idle, then exit.
        store
            .put("/nowhere", &state("/nowhere"), wr.as_fd())
            .unwrap();
        t.join().unwrap().unwrap();
        assert!(!sock.exists());
        assert!(!store.is_running());
    }

    #[test]
    fn holder_gives_up_only_after_a_lease_ended_and_no_daemon_came_back() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fd.sock");
        let cfg = HolderConfig {
            idle_exit: Duration::from_secs(600),
            prune_every: Duration::from_secs(600),
            give_up_after: Some(Duration::from_millis(300)),
        };
        let p = sock.clone();
        let t = std::thread::spawn(move || run_holder(&p, &cfg));
        let store = FdStore::new(&sock);
        assert!(wait(|| store.is_running()));
        let (mut rd, wr) = std::io::pipe().unwrap();
        let wr: OwnedFd = wr.into();
        store.put("/m/1", &state("/m/1"), wr.as_fd()).unwrap();
        drop(wr);
        // No lease has ended yet: nothing is given up.
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(store.list().unwrap().len(), 1);
        // A daemon attaches and goes away; a second one comes back in time.
        drop(store.attach().unwrap());
        std::thread::sleep(Duration::from_millis(100));
        let lease = store.attach().unwrap();
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(store.list().unwrap().len(), 1, "given up under a lease");
        // The last lease ends and nobody comes back: given up, and the
        // holder's fd is closed (the pipe's only writer).
        let ended = Instant::now();
        drop(lease);
        t.join().unwrap().unwrap();
        let took = ended.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "gave up after {took:?}"
        );
        let mut rest = Vec::new();
        rd.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        let note = std::fs::read_to_string(dir.path().join(GAVE_UP_FILE)).unwrap();
        assert_eq!(note, "sha256:aa\t/m/1\n");
        assert!(!sock.exists());
    }
}
