//! A read-only POSIX check (no pjdfstest/fstest package exists in Debian):
//! the same tar extracted by GNU tar onto a kernel filesystem and mounted
//! by us must agree on every lstat field, link target, xattr, directory
//! listing and byte; plus the read-only calls (pread at EOF, lseek, mmap,
//! access, statfs) and the write calls that must fail with EROFS.

mod common;

use common::*;
use lazyfs::{ChunkCache, Config, FileSource};
use std::collections::BTreeSet;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn xattrs(p: &Path) -> BTreeSet<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut names).unwrap_or(0);
    names[..n]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|k| {
            let k = String::from_utf8_lossy(k).into_owned();
            let mut v = vec![0u8; 4096];
            let m = rustix::fs::lgetxattr(p, k.as_str(), &mut v).unwrap();
            v.truncate(m);
            (k, v)
        })
        .filter(|(k, _)| !k.starts_with("security."))
        .collect()
}

#[test]
fn mount_agrees_with_gnu_tar_extraction() {
    if !e2e::require_root_tools(&["tar"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let l = lower_layer();
    let tar_path = tmp.path().join("layer.tar");
    std::fs::write(&tar_path, l.tar()).unwrap();
    let ref_dir = tmp.path().join("ref");
    std::fs::create_dir(&ref_dir).unwrap();
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf"])
        .arg(&tar_path)
        .arg("-C")
        .arg(&ref_dir)
        .status()
        .unwrap();
    assert!(st.success());
    let listed = Command::new("tar")
        .arg("-tf")
        .arg(&tar_path)
        .output()
        .unwrap();
    let entries: Vec<String> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|s| s.trim_end_matches('/').to_string())
        .collect();
    assert!(entries.len() > 30, "{entries:?}");

    let rt = runtime();
    let blob = to_estargz(&l, 64 << 10, &[]);
    let blob_path = tmp.path().join("blob");
    std::fs::write(&blob_path, &blob.bytes).unwrap();
    let cfg = Config {
        no_background_fetch: true,
        ..Config::default()
    };
    let m = mount_source(
        &rt,
        Arc::new(FileSource::open(&blob_path).unwrap()),
        &blob,
        &cfg,
        Arc::new(ChunkCache::memory_only(64 << 20)),
    );
    let mnt = m.path();

    for e in &entries {
        let (a, b) = (ref_dir.join(e), mnt.join(e));
        let (ma, mb) = (
            std::fs::symlink_metadata(&a).unwrap(),
            std::fs::symlink_metadata(&b).unwrap(),
        );
        assert_eq!(ma.mode(), mb.mode(), "{e}: st_mode");
        assert_eq!((ma.uid(), ma.gid()), (mb.uid(), mb.gid()), "{e}: owner");
        assert_eq!(ma.rdev(), mb.rdev(), "{e}: rdev");
        if ma.is_dir() {
            assert_eq!(ma.nlink(), mb.nlink(), "{e}: dir nlink");
            let la: BTreeSet<_> = std::fs::read_dir(&a)
                .unwrap()
                .map(|x| x.unwrap().file_name())
                .collect();
            let lb: BTreeSet<_> = std::fs::read_dir(&b)
                .unwrap()
                .map(|x| x.unwrap().file_name())
                .collect();
            assert_eq!(la, lb, "{e}: directory listing");
        } else {
            assert_eq!(ma.nlink(), mb.nlink(), "{e}: nlink");
            assert_eq!(ma.size(), mb.size(), "{e}: size");
        }
        if ma.file_type().is_symlink() {
            assert_eq!(
                std::fs::read_link(&a).unwrap(),
                std::fs::read_link(&b).unwrap(),
                "{e}"
            );
        } else {
            assert_eq!(ma.mtime(), mb.mtime(), "{e}: mtime");
            assert_eq!(xattrs(&a), xattrs(&b), "{e}: xattrs");
        }
        if ma.is_file() {
            assert!(
                std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
                "{e}: content"
            );
        }
    }

    // Read-only calls on a multi-chunk file.
    let big = mnt.join("data/f8-1048576");
    let want = noise(1 << 20, 9);
    let f = std::fs::File::open(&big).unwrap();
    let mut buf = vec![0u8; 100];
    assert_eq!(
        f.read_at(&mut buf, (1 << 20) - 40).unwrap(),
        40,
        "short read at the end"
    );
    assert_eq!(&buf[..40], &want[want.len() - 40..]);
    assert_eq!(f.read_at(&mut buf, 1 << 20).unwrap(), 0, "EOF");
    assert_eq!(f.read_at(&mut buf, 5 << 20).unwrap(), 0, "past EOF");
    assert_eq!(
        rustix::fs::seek(&f, rustix::fs::SeekFrom::End(0)).unwrap(),
        1 << 20
    );
    // mmap the file and compare a page in the middle of the second chunk.
    use std::os::fd::AsRawFd;
    // SAFETY: a fresh private read-only mapping of an open file, unmapped below.
    let map = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            1 << 20,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(map, libc::MAP_FAILED);
    // SAFETY: within the 1 MiB mapping.
    let page = unsafe { std::slice::from_raw_parts((map as *const u8).add(70_000), 4096) };
    assert_eq!(page, &want[70_000..74_096]);
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(map, 1 << 20) };
    assert!(rustix::fs::access(&big, rustix::fs::Access::READ_OK).is_ok());
    assert_eq!(
        rustix::fs::access(&big, rustix::fs::Access::WRITE_OK),
        Err(rustix::io::Errno::ROFS)
    );
    let sfs = rustix::fs::statfs(mnt).unwrap();
    assert!(sfs.f_blocks > 0 && sfs.f_files > 0);

    // Every way of writing fails with EROFS.
    let rofs = |r: std::io::Result<()>, what: &str| {
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EROFS), "{what}");
    };
    rofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(&big)
            .map(|_| ()),
        "open for writing",
    );
    rofs(std::fs::write(mnt.join("new"), b"x"), "create");
    rofs(std::fs::create_dir(mnt.join("d")), "mkdir");
    rofs(std::fs::remove_file(mnt.join("etc/hostname")), "unlink");
    rofs(
        std::fs::rename(mnt.join("etc/hostname"), mnt.join("etc/h2")),
        "rename",
    );
    rofs(std::os::unix::fs::symlink("x", mnt.join("sl")), "symlink");
    rofs(std::fs::hard_link(&big, mnt.join("hl")), "link");
    rofs(
        std::fs::set_permissions(&big, std::os::unix::fs::PermissionsExt::from_mode(0o600)),
        "chmod",
    );
    rofs(
        rustix::fs::setxattr(&big, "user.x", b"1", rustix::fs::XattrFlags::empty())
            .map_err(Into::into),
        "setxattr",
    );
    drop(f);
}
