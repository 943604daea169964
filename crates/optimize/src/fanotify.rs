//! Watching what the workload opens: a fanotify group (notification class)
//! marking the whole overlay superblock for FAN_OPEN and FAN_OPEN_EXEC, so
//! runc's bind mount of the rootfs and its pivot_root cannot escape it, and
//! the ELF interpreter and the libraries the loader maps are seen like any
//! open. A thread reads events and keeps each inode's first access, from
//! the first exec on.

use crate::error::{Error, Result};
use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// One file the workload opened or executed.
#[derive(Clone, Debug)]
pub(crate) struct Access {
    /// The inode number as the overlay reports it (the lower file's).
    pub ino: u64,
    /// What `/proc/self/fd/N` said (a hint: the path as the opener saw it).
    pub link: String,
}

pub(crate) struct Watcher {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(Vec<Access>, bool)>>,
}

impl Watcher {
    /// Start watching the filesystem mounted at `mount`.
    pub fn start(mount: &Path) -> Result<Watcher> {
        // SAFETY: plain syscalls; the fd returned is owned right away.
        let raw = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
                (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint,
            )
        };
        if raw < 0 {
            return Err(Error::Fanotify {
                what: "fanotify_init",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: `raw` is a new fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = CString::new(mount.as_os_str().as_bytes()).map_err(|_| Error::Fanotify {
            what: "mount path with NUL",
            source: std::io::ErrorKind::InvalidInput.into(),
        })?;
        // SAFETY: valid fd and NUL-terminated path.
        let r = unsafe {
            libc::fanotify_mark(
                fd.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                libc::FAN_OPEN | libc::FAN_OPEN_EXEC,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if r < 0 {
            return Err(Error::Fanotify {
                what: "fanotify_mark FAN_MARK_FILESYSTEM",
                source: std::io::Error::last_os_error(),
            });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("fanotify".into())
            .spawn(move || read_loop(fd, &s))
            .map_err(Error::io("starting the fanotify thread"))?;
        Ok(Watcher {
            stop,
            thread: Some(thread),
        })
    }

    /// Stop (after the events already queued) and return the accesses in
    /// first-access order, and whether the queue overflowed.
    pub fn finish(mut self) -> (Vec<Access>, bool) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read_loop(fd: OwnedFd, stop: &AtomicBool) -> (Vec<Access>, bool) {
    let me = std::process::id() as i32;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut overflow = false;
    // Before the container's first exec, the opens are runc's own (`runc
    // init` reads /etc/passwd and /etc/group in the rootfs): the workload
    // starts with the exec of its command.
    let mut started = false;
    // u64 elements: the event records are 8-byte aligned in the buffer.
    let mut buf = vec![0u64; 8192];
    let meta_len = std::mem::size_of::<libc::fanotify_event_metadata>();
    loop {
        // Stop only once the queue is empty after `stop` was set.
        let stopping = stop.load(Ordering::Relaxed);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, if stopping { 0 } else { 50 }) };
        if ready <= 0 {
            if stopping {
                break;
            }
            continue;
        }
        let bytes = buf.len() * 8;
        // SAFETY: the buffer is `bytes` long and writable.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), bytes) };
        if n <= 0 {
            continue;
        }
        let data = &buf_bytes(&buf)[..n as usize];
        let mut off = 0;
        while off + meta_len <= data.len() {
            // SAFETY: in bounds; read_unaligned has no alignment needs.
            let m: libc::fanotify_event_metadata =
                unsafe { std::ptr::read_unaligned(data[off..].as_ptr().cast()) };
            let len = m.event_len as usize;
            if len < meta_len || off + len > data.len() {
                break;
            }
            off += len;
            if m.mask & libc::FAN_Q_OVERFLOW != 0 {
                overflow = true;
            }
            if m.fd < 0 {
                continue;
            }
            // SAFETY: the kernel gave us this fd; we own and close it.
            let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(m.fd) });
            if m.pid == me {
                continue;
            }
            if !started {
                if m.mask & libc::FAN_OPEN_EXEC == 0 {
                    continue;
                }
                started = true;
            }
            let Ok(meta) = f.metadata() else { continue };
            if !meta.is_file() {
                continue;
            }
            let ino = std::os::unix::fs::MetadataExt::ino(&meta);
            if seen.insert(ino) {
                let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                out.push(Access { ino, link });
            }
        }
    }
    (out, overflow)
}

fn buf_bytes(buf: &[u64]) -> &[u8] {
    // SAFETY: u64 has no padding; any byte view of it is valid.
    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), buf.len() * 8) }
}
