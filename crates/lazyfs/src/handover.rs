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
//! message per entry with its fd, then `{"end":true}`), `attach` (answered
//! `ok`, then the connection stays open while the daemon lives: its lease;
//! see [`holder`] for the give-up it bounds). A holder that predates
//! `attach` answers it with an error, and the daemon goes on without a lease.

mod holder;

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    Attach { pid: u32 },
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

    /// A lease: the returned socket stays connected while it is kept open;
    /// the holder gives its connections up only once no lease is left
    /// (for its configured time). Dropping it ends the lease.
    pub fn attach(&self) -> std::io::Result<Lease> {
        let sock = self.connect()?;
        let req = Req::Attach {
            pid: std::process::id(),
        };
        send(sock.as_fd(), &serde_json::to_vec(&req)?, None)?;
        let (msg, _) = recv(sock.as_fd())?;
        check(parse_answer(&msg)?)?;
        Ok(Lease(sock))
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

/// A daemon's lease with the holder ([`FdStore::attach`]); dropping it
/// ends the lease.
#[derive(Debug)]
pub struct Lease(OwnedFd);

impl Lease {
    /// Whether the holder still has it (it sends nothing on a lease: a
    /// readable or hung-up socket means the holder is gone).
    pub fn is_alive(&self) -> bool {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut p = [PollFd::new(&self.0, PollFlags::IN)];
        matches!(poll(&mut p, Some(&Timespec::default())), Ok(0))
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

pub use holder::{run_holder, HolderConfig, GAVE_UP_FILE};
