//! The FUSE front of a `LazyLayer`: the only module that knows fuser.
//!
//! Reads of cached data are answered on the FUSE thread; a read that needs
//! the network is handed to the tokio runtime and answered from there, so a
//! slow fetch never holds a FUSE thread and never stalls other readers.
//! The layer never changes, so attributes and entries (negative ones too)
//! get long TTLs and file pages stay cached across opens (`FOPEN_KEEP_CACHE`).
//! With `passthrough` on and a kernel that offers it, an open of a file whose
//! chunks are all cached is answered with a backing file (`materialize`) and
//! its reads never reach us (`backing`).

mod backing;

use crate::error::Error;
use crate::layer::{LazyLayer, OpenFile, Read};
use crate::materialize::FileStore;
use crate::mounts;
use crate::tree::{Attr, Inode};
use estargz::index::NodeKind;
use fuser::{
    BackgroundSession, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyXattr, Request,
    SessionACL,
};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// Entries and attributes never change: let the kernel keep them long.
const TTL: Duration = Duration::from_secs(24 * 3600);

struct LayerFs {
    layer: Arc<LazyLayer>,
    /// Open handles served by us (passthrough handles are not here).
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    /// Whole-file copies for passthrough; `None`: passthrough is off or
    /// there is no disk cache.
    store: Option<Arc<FileStore>>,
    /// The kernel agreed to passthrough (set in `init`).
    passthrough: bool,
    modes: backing::Modes,
    counters: Arc<Counters>,
}

/// What the FUSE front did, for tests and debugging.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// LOOKUP requests.
    pub lookups: AtomicU64,
    /// READ requests of layer files.
    pub reads: AtomicU64,
    /// Opens answered with a backing file.
    pub passthrough_opens: AtomicU64,
    /// RELEASEs of layer files handled (the kernel sends them after
    /// `close` returns: tests wait for them).
    pub releases: AtomicU64,
}

impl LayerFs {
    fn new(layer: Arc<LazyLayer>) -> LayerFs {
        let cfg = layer.config();
        let store = match (&cfg.cache_dir, cfg.passthrough) {
            (Some(dir), true) => Some(Arc::new(FileStore::new(dir))),
            _ => None,
        };
        LayerFs {
            layer,
            files: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            store,
            passthrough: false,
            modes: backing::Modes::default(),
            counters: Arc::default(),
        }
    }

    /// The store, if opens may be passed through on this mount.
    /// None for an unverified layer: a copy the kernel reads by itself
    /// would bypass a failed layer-level check.
    fn passthrough_store(&self) -> Option<&Arc<FileStore>> {
        self.store
            .as_ref()
            .filter(|_| self.passthrough && !self.layer.is_unverified())
    }
}

/// Linux's `new_encode_dev`, the format of FUSE's `rdev`.
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

fn file_type(k: NodeKind) -> FileType {
    match k {
        NodeKind::Dir => FileType::Directory,
        NodeKind::Reg => FileType::RegularFile,
        NodeKind::Symlink => FileType::Symlink,
        NodeKind::Char => FileType::CharDevice,
        NodeKind::Block => FileType::BlockDevice,
        NodeKind::Fifo => FileType::NamedPipe,
    }
}

fn time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn fuse_attr(a: &Attr) -> FileAttr {
    let t = time(a.mtime);
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: file_type(a.kind),
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: encode_dev(a.rdev_major, a.rdev_minor),
        blksize: 4096,
        flags: 0,
    }
}

fn errno(e: &Error) -> Errno {
    match e {
        Error::NotFound => Errno::ENOENT,
        Error::NotAFile => Errno::EISDIR,
        _ => Errno::EIO,
    }
}

/// A negative entry: "no such name", cached by the kernel for `TTL`.
fn negative_attr() -> FileAttr {
    fuse_attr(&Attr {
        ino: 0,
        kind: NodeKind::Reg,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        size: 0,
        mtime: 0,
        rdev_major: 0,
        rdev_minor: 0,
    })
}

impl LayerFs {
    /// The JSON state file changes: its attributes must not be cached.
    fn ttl(&self, ino: u64) -> Duration {
        match self.layer.tree().inode(ino) {
            Some(Inode::StateFile) => Duration::ZERO,
            _ => TTL,
        }
    }

    /// Call `add(next offset, name, inode)` for `.`, `..` and the entries
    /// from `offset` on until it says the reply is full. `false`: not a dir.
    fn each_entry(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(u64, &str, u64) -> bool,
    ) -> bool {
        let tree = self.layer.tree();
        let Some(entries) = tree.entries(ino) else {
            return false;
        };
        let dots = [(".", ino), ("..", tree.parent(ino))];
        let all = dots
            .into_iter()
            .chain(entries.iter().map(|(n, i)| (n.as_str(), *i)));
        for (k, (name, child)) in all.enumerate().skip(offset as usize) {
            if add(k as u64 + 1, name, child) {
                break;
            }
        }
        true
    }
}

impl Filesystem for LayerFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each is optional: take what the kernel offers.
        for flag in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ] {
            let _ = config.add_capabilities(flag);
        }
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        let _ = config.set_max_background(64);
        // Stack depth 1: backing files must be on a plain filesystem, and
        // overlayfs may still stack on this mount (it then reaches the
        // kernel's limit of 2). Not offered (kernel < 6.9): no passthrough.
        if self.store.is_some() {
            self.passthrough = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            info!(layer = %self.layer.digest(), granted = self.passthrough, "FUSE passthrough");
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.counters.lookups.fetch_add(1, Relaxed);
        let tree = self.layer.tree();
        let found = name.to_str().and_then(|n| tree.lookup(parent.0, n));
        match found.and_then(|ino| self.layer.attr(ino)) {
            Some(a) => reply.entry(&self.ttl(a.ino), &fuse_attr(&a), Generation(0)),
            None if tree.inode(parent.0).is_some() => {
                reply.entry(&TTL, &negative_attr(), Generation(0))
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.layer.attr(ino.0) {
            Some(a) => reply.attr(&self.ttl(ino.0), &fuse_attr(&a)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.layer.tree().readlink(ino.0) {
            Some(t) => reply.data(t.as_bytes()),
            None => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let tree = self.layer.tree();
        match tree.inode(ino.0) {
            Some(Inode::StateFile) => {
                return reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
            }
            Some(Inode::Node(_)) if tree.regular(ino.0).is_some() => {}
            Some(_) => return reply.error(Errno::EISDIR),
            None => return reply.error(Errno::ENOENT),
        }
        self.layer.note_open(ino.0);
        let fh = self.next_fh.fetch_add(1, Relaxed);
        let Some(store) = self.passthrough_store() else {
            self.files.lock().insert(fh, Arc::new(OpenFile::default()));
            return reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
        };
        let path = store.ready_path(&self.layer, ino.0);
        // Registered first: a read may arrive as soon as the reply is out.
        self.files.lock().insert(fh, Arc::new(OpenFile::default()));
        if self
            .modes
            .open(ino.0, path.as_deref(), FileHandle(fh), reply)
        {
            self.files.lock().remove(&fh);
            self.counters.passthrough_opens.fetch_add(1, Relaxed);
        } else {
            store.request(&self.layer, ino.0);
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (ino, len) = (ino.0, size as u64);
        self.counters.reads.fetch_add(1, Relaxed);
        if let Some(Inode::StateFile) = self.layer.tree().inode(ino) {
            let json = self.layer.state_json();
            let lo = (offset as usize).min(json.len());
            let hi = (lo + size as usize).min(json.len());
            return reply.data(&json[lo..hi]);
        }
        let file = self.files.lock().get(&fh.0).cloned();
        match self.layer.read_now(ino, file.as_deref(), offset, len) {
            Read::Ready(Ok(b)) => reply.data(&b),
            Read::Ready(Err(e)) => reply.error(errno(&e)),
            Read::Pending(p) => {
                let layer = self.layer.clone();
                self.layer.runtime().spawn(async move {
                    match layer.read_pending(p).await {
                        Ok(b) => reply.data(&b),
                        Err(e) => reply.error(errno(&e)),
                    }
                });
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let cached = self.files.lock().remove(&fh.0).is_some();
        reply.ok();
        if fh.0 == 0 {
            return; // the state file
        }
        if let Some(store) = self.passthrough_store() {
            self.modes.release(ino.0, !cached);
            // Read to the end, say: the next open may pass through.
            if cached {
                store.request(&self.layer, ino.0);
            }
        }
        self.counters.releases.fetch_add(1, Relaxed);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.layer.tree().entries(ino.0) {
            Some(_) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            None => reply.error(Errno::ENOTDIR),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let is_dir = self.each_entry(ino.0, offset, |next, name, child| {
            let kind = self
                .layer
                .attr(child)
                .map_or(FileType::RegularFile, |a| file_type(a.kind));
            reply.add(INodeNo(child), next, kind, name)
        });
        if !is_dir {
            return reply.error(Errno::ENOTDIR);
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let is_dir = self.each_entry(ino.0, offset, |next, name, child| {
            let Some(a) = self.layer.attr(child) else {
                return false;
            };
            reply.add(
                INodeNo(child),
                next,
                name,
                &self.ttl(child),
                &fuse_attr(&a),
                Generation(0),
            )
        });
        if !is_dir {
            return reply.error(Errno::ENOTDIR);
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let tree = self.layer.tree();
        let bytes: u64 = tree.nodes().iter().map(|n| n.size).sum();
        reply.statfs(
            bytes.div_ceil(4096),
            0,
            0,
            tree.nodes().len() as u64,
            0,
            4096,
            255,
            4096,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let v = name
            .to_str()
            .and_then(|n| self.layer.tree().xattr(ino.0, n));
        match v {
            None => reply.error(Errno::NO_XATTR),
            Some(v) if size == 0 => reply.size(v.len() as u32),
            Some(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Some(v) => reply.data(&v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let list = self.layer.tree().xattr_list(ino.0);
        if size == 0 {
            reply.size(list.len() as u32)
        } else if list.len() > size as usize {
            reply.error(Errno::ERANGE)
        } else {
            reply.data(&list)
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Permissions are checked by the kernel (default_permissions); only
        // writing is impossible.
        if mask.bits() & libc::W_OK != 0 {
            reply.error(Errno::EROFS)
        } else {
            reply.ok()
        }
    }
}

/// A mounted layer. Dropping it unmounts (lazily if still in use).
pub struct MountHandle {
    mountpoint: PathBuf,
    layer: Arc<LazyLayer>,
    session: Option<BackgroundSession>,
    /// The fd the mount was made with. Never read from: the session serves
    /// clones of it, so that a dup kept by another process (the fd holder,
    /// `handover`) keeps the connection alive while requests read by this
    /// process are still aborted, not stranded, if it dies.
    anchor: OwnedFd,
    /// Written to stop the session's workers without unmounting.
    stop: Arc<OwnedFd>,
    proto: Option<(u32, u32)>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for MountHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountHandle")
            .field("mountpoint", &self.mountpoint)
            .finish_non_exhaustive()
    }
}

/// A running session, its stop fd and the ABI version from INIT.
type Served = (
    BackgroundSession,
    Arc<OwnedFd>,
    Option<(u32, u32)>,
    Arc<Counters>,
);

/// The FUSE session of `layer` on a clone of `anchor`: with the INIT
/// handshake for a new connection, without for one handed over.
fn serve(layer: &Arc<LazyLayer>, anchor: &OwnedFd, handed_over: bool) -> std::io::Result<Served> {
    let cfg = layer.config();
    let mut fc = fuser::Config::default();
    fc.acl = SessionACL::All;
    fc.n_threads = Some(cfg.fuse_threads.max(1));
    fc.clone_fd = true;
    let mut fs = LayerFs::new(layer.clone());
    // File handles of a previous process may still be in use after a
    // handover: start ours elsewhere (a missing handle only costs that open
    // file its readahead state).
    fs.next_fh = AtomicU64::new(((std::process::id() as u64) << 32) | 1);
    let counters = fs.counters.clone();
    let clone = crate::handover::clone_fuse_fd(anchor.as_fd())?;
    let mut session = if handed_over {
        fuser::Session::from_fd_initialized(fs, clone, SessionACL::All, fc)
    } else {
        fuser::Session::from_fd(fs, clone, SessionACL::All, fc)?
    };
    let proto = session.proto_version().map(|v| (v.0, v.1));
    let stop: Arc<OwnedFd> = Arc::new(rustix::event::eventfd(
        0,
        rustix::event::EventfdFlags::CLOEXEC,
    )?);
    session.set_handover(fuser::Handover {
        stop: Some(stop.clone()),
        in_flight: Some(Arc::new(crate::inflight::add)),
    });
    Ok((session.spawn()?, stop, proto, counters))
}

/// Mount `layer` read-only at `mountpoint` (an existing directory), with
/// `allow_other,default_permissions`; `nosuid,nodev` per the config.
///
/// The mount(2) call is ours (fstype `fuse.rsnap`, source `rsnap:<digest>`)
/// and fuser only serves the connection: then exactly one party unmounts.
pub fn mount(layer: Arc<LazyLayer>, mountpoint: &Path) -> Result<MountHandle, Error> {
    use rustix::mount::MountFlags;
    let cfg = layer.config().clone();
    let mp = mountpoint
        .canonicalize()
        .unwrap_or_else(|_| mountpoint.to_path_buf());
    let merr = |source: std::io::Error| Error::Mount {
        path: mp.clone(),
        source,
    };
    let dev: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(merr)?
        .into();
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,allow_other,default_permissions",
        std::os::fd::AsRawFd::as_raw_fd(&dev)
    );
    let mut flags = MountFlags::RDONLY | MountFlags::NOATIME;
    if cfg.nosuid_nodev {
        flags |= MountFlags::NOSUID | MountFlags::NODEV;
    }
    let data = std::ffi::CString::new(data).expect("no NUL");
    rustix::mount::mount(
        format!("rsnap:{}", layer.digest()).as_str(),
        &mp,
        "fuse.rsnap",
        flags,
        data.as_c_str(),
    )
    .map_err(|e| merr(e.into()))?;
    let (session, stop, proto, counters) = match serve(&layer, &dev, false) {
        Ok(s) => s,
        Err(e) => {
            let _ = rustix::mount::unmount(&mp, rustix::mount::UnmountFlags::DETACH);
            return Err(merr(e));
        }
    };
    let handle = MountHandle {
        mountpoint: mp,
        layer,
        session: Some(session),
        anchor: dev,
        stop,
        proto,
        counters,
    };
    if cfg.read_ahead_kb > 0 {
        if let Err(e) = mounts::set_read_ahead_kb(&handle.mountpoint, cfg.read_ahead_kb) {
            warn!(mount = %handle.mountpoint.display(), error = %e, "cannot raise read_ahead_kb");
        }
    }
    info!(layer = %handle.layer.digest(), mount = %handle.mountpoint.display(), "mounted");
    Ok(handle)
}

/// Serve a mount another process made and handed over (`anchor` is its
/// mount fd, from the fd holder): no new mount, no INIT; inode numbers and
/// replies are the same because `layer` is opened from the same TOC.
pub fn adopt(
    layer: Arc<LazyLayer>,
    mountpoint: &Path,
    anchor: OwnedFd,
    proto: Option<(u32, u32)>,
) -> Result<MountHandle, Error> {
    // As `mount` does: the mount table has real paths (the mount point
    // itself is not touched: nothing may wait on this connection here).
    let mp = match (mountpoint.parent(), mountpoint.file_name()) {
        (Some(d), Some(n)) => d
            .canonicalize()
            .map_or(mountpoint.to_path_buf(), |d| d.join(n)),
        _ => mountpoint.to_path_buf(),
    };
    let (session, stop, _, counters) =
        serve(&layer, &anchor, true).map_err(|source| Error::Mount {
            path: mp.clone(),
            source,
        })?;
    info!(layer = %layer.digest(), mount = %mp.display(), "serving a handed-over mount");
    Ok(MountHandle {
        mountpoint: mp,
        layer,
        session: Some(session),
        anchor,
        stop,
        proto,
        counters,
    })
}

impl MountHandle {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn layer(&self) -> &Arc<LazyLayer> {
        &self.layer
    }

    /// The mount's own `/dev/fuse` fd, to hand to the fd holder.
    pub fn anchor(&self) -> BorrowedFd<'_> {
        self.anchor.as_fd()
    }

    /// FUSE ABI version from INIT (as recorded by the first process).
    pub fn proto(&self) -> Option<(u32, u32)> {
        self.proto
    }

    /// Stop reading requests and return without unmounting: what the
    /// kernel queues from now on waits for the next process. Replies to
    /// requests already read still go out (wait for
    /// [`crate::wait_drained`] before exiting).
    pub fn stop_serving(mut self) {
        if let Some(session) = self.session.take() {
            let _ = rustix::io::write(&*self.stop, &1u64.to_ne_bytes());
            if session.join().is_err() {
                warn!(mount = %self.mountpoint.display(), "FUSE session ended with an error");
            }
        }
    }

    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Still served by us and still in the mount table.
    pub fn is_alive(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| !s.guard.is_finished())
            && mounts::is_fuse_mounted(&self.mountpoint)
    }

    /// Unmount now. A mount still in use (say, an overlay lower dir) is
    /// detached and keeps being served until its last user is gone.
    pub fn unmount(mut self) -> Result<(), Error> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), Error> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        use rustix::mount::{unmount, UnmountFlags};
        match unmount(&self.mountpoint, UnmountFlags::empty()) {
            // EINVAL: not mounted any more (someone unmounted it for us).
            Ok(()) | Err(rustix::io::Errno::INVAL) => {
                // The kernel ends the session; the worker threads return.
                if session.join().is_err() {
                    warn!(mount = %self.mountpoint.display(), "FUSE session ended with an error");
                }
                debug!(mount = %self.mountpoint.display(), "unmounted");
                Ok(())
            }
            Err(rustix::io::Errno::BUSY) => {
                warn!(mount = %self.mountpoint.display(), "mount busy; detaching it");
                // Dropped first (its own unmount attempt fails while busy),
                // not joined: the workers serve the remaining users, then end.
                drop(session);
                unmount(&self.mountpoint, UnmountFlags::DETACH).map_err(|e| Error::Mount {
                    path: self.mountpoint.clone(),
                    source: e.into(),
                })
            }
            Err(e) => {
                drop(session);
                Err(Error::Mount {
                    path: self.mountpoint.clone(),
                    source: e.into(),
                })
            }
        }
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.unmount_inner() {
            warn!(error = %e, "unmount failed");
        }
    }
}
