//! FUSE requests this process has read and not yet answered, counted in a
//! file the next process can read after a crash.
//!
//! The count lives in an 8-byte shared mapping of `<dir>/<pid>`: the kernel
//! keeps a shared file mapping's writes when the process is killed, so a
//! SIGKILLed daemon leaves behind exactly how many requests it abandoned
//! (the kernel answers them ECONNABORTED when its fds close). A graceful
//! exit waits for zero first, so its file says 0.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

static FALLBACK: AtomicI64 = AtomicI64::new(0);
static MAPPED: OnceLock<&'static AtomicI64> = OnceLock::new();

fn counter() -> &'static AtomicI64 {
    MAPPED.get().copied().unwrap_or(&FALLBACK)
}

/// Add `d` to the count (the hook the FUSE sessions call).
pub(crate) fn add(d: i64) {
    counter().fetch_add(d, Ordering::AcqRel);
}

/// Requests read from any mount of this process and not yet answered.
pub fn in_flight() -> i64 {
    counter().load(Ordering::Acquire)
}

/// Wait until no request is in flight, at most `limit`; the count left.
pub fn wait_drained(limit: Duration) -> i64 {
    let start = Instant::now();
    loop {
        let n = in_flight();
        if n <= 0 || start.elapsed() >= limit {
            return n.max(0);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Keep this process's count in `<dir>/<pid>` from now on (once per
/// process; later calls do nothing). Returns the sum of the counts that
/// processes no longer running left in `dir` (requests they abandoned) and
/// removes their files.
pub fn persist_in(dir: &Path) -> std::io::Result<u64> {
    std::fs::create_dir_all(dir)?;
    let mut abandoned = 0u64;
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(b) = std::fs::read(e.path()) {
            if let Ok(raw) = <[u8; 8]>::try_from(b.as_slice()) {
                abandoned += i64::from_ne_bytes(raw).max(0) as u64;
            }
        }
        let _ = std::fs::remove_file(e.path());
    }
    if MAPPED.get().is_none() {
        let path: PathBuf = dir.join(std::process::id().to_string());
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        f.set_len(8)?;
        use rustix::mm::{mmap, MapFlags, ProtFlags};
        // SAFETY: a fresh 8-byte shared mapping of a file we own, never
        // unmapped (it lives as long as the process); AtomicI64 has the
        // alignment of a page-aligned address.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                8,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &f,
                0,
            )?
        };
        // SAFETY: see above; the mapping is valid for 'static.
        let cell: &'static AtomicI64 = unsafe { &*(ptr as *const AtomicI64) };
        cell.store(FALLBACK.load(Ordering::Acquire), Ordering::Release);
        let _ = MAPPED.set(cell);
    }
    Ok(abandoned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_process_counts_are_collected_once() {
        let dir = tempfile::tempdir().unwrap();
        // pid 1 runs; 0x7fff_fff0 does not exist.
        std::fs::write(dir.path().join("2147483632"), 3i64.to_ne_bytes()).unwrap();
        std::fs::write(dir.path().join("1"), 5i64.to_ne_bytes()).unwrap();
        std::fs::write(dir.path().join("junk"), b"x").unwrap();
        assert_eq!(persist_in(dir.path()).unwrap(), 3);
        assert!(!dir.path().join("2147483632").exists());
        assert!(dir.path().join("1").exists());
        // Our own file is mapped: the count shows in it.
        add(2);
        let own = std::fs::read(dir.path().join(std::process::id().to_string())).unwrap();
        assert_eq!(i64::from_ne_bytes(own.try_into().unwrap()), in_flight());
        add(-2);
        assert_eq!(persist_in(dir.path()).unwrap(), 0);
    }
}
