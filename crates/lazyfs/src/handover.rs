//! Keeping FUSE connections alive across daemon processes: the fd store.
//!
//! A FUSE connection lives while any process holds one of its `/dev/fuse`
//! fds. The daemon mounts a layer with one fd (the *anchor*) and serves it
//! only through clones of it (`FUSE_DEV_IOC_CLONE`). The anchor goes to a
//! small long-lived holder process ([`run_holder`], started by the daemon in
//! its own session) over a unix socket (`SCM_RIGHTS`). When the daemon dies,
//! however it dies, the kernel aborts only the requests its clones had read
//! and not answered (ECONNABORTED, at once: bounded); the connection and
//! every queued request survive, and the next daemon takes the anchors from
//! the holder ([`FdStore::list`]), clones them and serves on.
//!
//! Protocol: one `SOCK_SEQPACKET` message per request/answer, JSON, with at
//! most one fd: `put` (key, state + fd), `del` (key), `list` (answered by one
//! message per entry with its fd, then `{"end":true}`).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// Largest message (state JSON); labels of a many-layer image fit easily.
const MAX_MSG: usize = 256 * 1024;

/// `FUSE_DEV_IOC_CLONE` = `_IOR(229, 0, uint32_t)`.
const FUSE_DEV_IOC_CLONE: libc::c_ulong = 0x8004_e500;

/// A new `/dev/fuse` fd attached to the connection of `anchor`. Requests a
/// clone has read and not answered are aborted when the clone is closed;
/// the connection itself lives on while another fd of it is open.
pub fn clone_fuse_fd(anchor: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let dev: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?
        .into();
    let mut src = anchor.as_raw_fd() as u32;
    // SAFETY: a valid ioctl on an fd we own, with a pointer to a u32.
    let rc = unsafe { libc::ioctl(dev.as_raw_fd(), FUSE_DEV_IOC_CLONE as _, &mut src) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(dev)
}

/// What the next process needs to serve a handed-over connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnState {
    pub mountpoint: PathBuf,
    pub layer_digest: String,
    /// The labels the mount was made with (image reference, layer and TOC
    /// digests): enough to open the layer again.
    pub labels: HashMap<String, String>,
    /// FUSE ABI version the kernel sent in INIT, e.g. (7, 41).
    pub proto: Option<(u32, u32)>,
    /// Unix seconds of the original mount.
    pub mounted_at: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum Req {
    Put { key: String, state: ConnState },
    Del { key: String },
    List,
}

#[derive(Debug, Serialize, Deserialize, Default)]
struct Answer {
    #[serde(default)]
    ok: bool,
    #[serde(default)]
    end: bool,
    #[serde(default)]
    state: Option<ConnState>,
    #[serde(default)]
    error: Option<String>,
}

fn send(sock: BorrowedFd<'_>, msg: &[u8], fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        cmsg.push(SendAncillaryMessage::ScmRights(&fds));
    }
    sendmsg(sock, &[IoSlice::new(msg)], &mut cmsg, SendFlags::NOSIGNAL)?;
    Ok(())
}

/// One message and the fds that came with it; an empty message is EOF.
fn recv(sock: BorrowedFd<'_>) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut buf = vec![0u8; MAX_MSG];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let r = recvmsg(
        sock,
        &mut [IoSliceMut::new(&mut buf)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    buf.truncate(r.bytes);
    Ok((buf, fds))
}

fn seqpacket() -> std::io::Result<OwnedFd> {
    use rustix::net::{socket_with, AddressFamily, SocketFlags, SocketType};
    Ok(socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Client of the holder at a socket path.
#[derive(Debug, Clone)]
pub struct FdStore {
    path: PathBuf,
}

impl FdStore {
    pub fn new(path: impl Into<PathBuf>) -> FdStore {
        FdStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connect(&self) -> std::io::Result<OwnedFd> {
        let sock = seqpacket()?;
        let addr = rustix::net::SocketAddrUnix::new(&self.path)?;
        rustix::net::connect(&sock, &addr)?;
        let t = Some(Duration::from_secs(5));
        rustix::net::sockopt::set_socket_timeout(&sock, rustix::net::sockopt::Timeout::Recv, t)?;
        rustix::net::sockopt::set_socket_timeout(&sock, rustix::net::sockopt::Timeout::Send, t)?;
        Ok(sock)
    }

    fn call(&self, req: &Req, fd: Option<BorrowedFd<'_>>) -> std::io::Result<Answer> {
        let sock = self.connect()?;
        send(sock.as_fd(), &serde_json::to_vec(req)?, fd)?;
        let (msg, _) = recv(sock.as_fd())?;
        parse_answer(&msg)
    }

    /// Whether a holder answers at the path.
    pub fn is_running(&self) -> bool {
        self.connect().is_ok()
    }

    /// Hand the holder a dup of `fd` under `key` (replacing any old one).
    pub fn put(&self, key: &str, state: &ConnState, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        let req = Req::Put {
            key: key.to_string(),
            state: state.clone(),
        };
        check(self.call(&req, Some(fd))?)
    }

    /// Let the holder close its fd of `key` (after an unmount).
    pub fn del(&self, key: &str) -> std::io::Result<()> {
        check(self.call(&Req::Del { key: key.into() }, None)?)
    }

    /// Every held connection with a dup of its fd.
    pub fn list(&self) -> std::io::Result<Vec<(ConnState, OwnedFd)>> {
        let sock = self.connect()?;
        send(sock.as_fd(), &serde_json::to_vec(&Req::List)?, None)?;
        let mut out = Vec::new();
        loop {
            let (msg, mut fds) = recv(sock.as_fd())?;
            let a = parse_answer(&msg)?;
            if a.end {
                return Ok(out);
            }
            match (a.state, fds.pop()) {
                (Some(s), Some(fd)) => out.push((s, fd)),
                _ => return Err(std::io::Error::other("fd store: entry without state or fd")),
            }
        }
    }
}

fn parse_answer(msg: &[u8]) -> std::io::Result<Answer> {
    if msg.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "fd store closed the connection",
        ));
    }
    Ok(serde_json::from_slice(msg)?)
}

fn check(a: Answer) -> std::io::Result<()> {
    match a.error {
        Some(e) => Err(std::io::Error::other(format!("fd store: {e}"))),
        None if a.ok => Ok(()),
        None => Err(std::io::Error::other("fd store: no answer")),
    }
}

/// How the holder decides it is no longer needed.
#[derive(Debug, Clone)]
pub struct HolderConfig {
    /// Exit after holding nothing for this long.
    pub idle_exit: Duration,
    /// How often entries whose mount is gone are dropped.
    pub prune_every: Duration,
}

impl Default for HolderConfig {
    fn default() -> Self {
        HolderConfig {
            idle_exit: Duration::from_secs(30),
            prune_every: Duration::from_secs(2),
        }
    }
}

/// The holder: serve the store at `path` until nothing has been held for
/// `idle_exit`, or the socket's directory is gone. Entries whose mount point
/// is no longer a FUSE mount are dropped (their connection then ends).
/// Single-threaded; every call is short.
pub fn run_holder(path: &Path, cfg: &HolderConfig) -> std::io::Result<()> {
    let sock = seqpacket()?;
    let _ = std::fs::remove_file(path);
    rustix::net::bind(&sock, &rustix::net::SocketAddrUnix::new(path)?)?;
    rustix::net::listen(&sock, 64)?;
    info!(socket = %path.display(), "fd holder serving");
    let mut held: HashMap<String, (ConnState, OwnedFd)> = HashMap::new();
    let mut empty_since = Some(Instant::now());
    let mut last_prune = Instant::now();
    loop {
        let mut fds = [rustix::event::PollFd::new(
            &sock,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec::try_from(cfg.prune_every).ok();
        match rustix::event::poll(&mut fds, timeout.as_ref()) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        if !fds[0].revents().is_empty() {
            if let Ok(conn) = rustix::net::accept_with(&sock, rustix::net::SocketFlags::CLOEXEC) {
                let t = Some(Duration::from_secs(5));
                let _ = rustix::net::sockopt::set_socket_timeout(
                    &conn,
                    rustix::net::sockopt::Timeout::Recv,
                    t,
                );
                if let Err(e) = serve_one(conn.as_fd(), &mut held) {
                    debug!(error = %e, "fd holder: a client failed");
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

fn serve_one(
    conn: BorrowedFd<'_>,
    held: &mut HashMap<String, (ConnState, OwnedFd)>,
) -> std::io::Result<()> {
    let (msg, mut fds) = recv(conn)?;
    let reply = |a: &Answer, fd: Option<BorrowedFd<'_>>| -> std::io::Result<()> {
        send(conn, &serde_json::to_vec(a)?, fd)
    };
    let req: Req = match serde_json::from_slice(&msg) {
        Ok(r) => r,
        Err(e) => {
            return reply(
                &Answer {
                    error: Some(format!("bad request: {e}")),
                    ..Default::default()
                },
                None,
            )
        }
    };
    match req {
        Req::Put { key, state } => {
            let Some(fd) = fds.pop() else {
                let error = Some("put without an fd".to_string());
                return reply(
                    &Answer {
                        error,
                        ..Default::default()
                    },
                    None,
                );
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
            return reply(&end, None);
        }
    }
    reply(
        &Answer {
            ok: true,
            ..Default::default()
        },
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
