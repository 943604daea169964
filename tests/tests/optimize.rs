//! `rsnap optimize` with real runc, overlayfs and fanotify: a busybox image
//! plus a dynamically linked host binary (`ls` with its libraries and the
//! ELF interpreter) is profiled; the record lists, per topmost layer and in
//! access order, the binaries, the loader, the libraries and the files
//! read (not the whited-out or untouched ones); the output puts them first
//! with the prefetch landmark (the untouched layer gets the no-prefetch
//! landmark), passes our reader and the Go reference's; `--reuse-record`
//! gives a byte-identical image; bad inputs fail clearly and leave no
//! mount, container or scratch file behind.

use e2e::image::{
    busybox_layer, check_estargz_layout, rsnap, rsnap_ok, write_oci_layout, LayerBuilder, OciLayout,
};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const DYN_BIN: &str = "/usr/bin/ls";

/// `DYN_BIN`, its libraries and its interpreter, at their canonical paths
/// (layer-relative); symlinks (path, target) for the names the loader
/// asks for (`libpcre2-8.so.0` -> `libpcre2-8.so.0.11.2`); the
/// interpreter's path as the ELF names it; its canonical path.
type DynFiles = (
    Vec<(String, Vec<u8>)>,
    Vec<(String, String)>,
    String,
    String,
);

fn dynamic_files() -> DynFiles {
    let out = Command::new("ldd").arg(DYN_BIN).output().expect("ldd");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut files = vec![(
        DYN_BIN.trim_start_matches('/').to_string(),
        std::fs::read(DYN_BIN).unwrap(),
    )];
    let mut interp = None;
    let mut links = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=> ") {
            Some((_, rest)) => rest.split(' ').next().unwrap_or(""),
            None => line.split(' ').next().unwrap_or(""),
        };
        if !path.starts_with('/') {
            continue; // vdso
        }
        let real = std::fs::canonicalize(path).unwrap();
        if !line.contains("=>") {
            interp = Some((path.to_string(), real.clone()));
        }
        let rel = real.to_str().unwrap().trim_start_matches('/').to_string();
        let (name, real_name) = (Path::new(path).file_name(), real.file_name());
        if line.contains("=>") && name != real_name {
            let dir = Path::new(&rel).parent().unwrap().to_str().unwrap();
            links.push((
                format!("{dir}/{}", name.unwrap().to_str().unwrap()),
                real_name.unwrap().to_str().unwrap().to_string(),
            ));
        }
        if !files.iter().any(|(p, _)| *p == rel) {
            files.push((rel, std::fs::read(&real).unwrap()));
        }
    }
    let (elf_path, real) = interp.expect("an ELF interpreter in ldd's output");
    let real = real.to_str().unwrap().trim_start_matches('/').to_string();
    (files, links, elf_path, real)
}

struct Sample {
    libs: Vec<String>,
    interp: String,
}

/// Layers: busybox + data; the dynamic binary (and a file replacing one of
/// the first layer, a whiteout); a layer the workload never touches.
fn sample_image(dir: &Path) -> Sample {
    let mut l0 = busybox_layer();
    l0.dir("data", 0o755)
        .file("data/a.txt", "a from layer 0\n", 0o644)
        .file("data/b.txt", "old b\n", 0o644)
        .file("data/hidden.txt", "hidden\n", 0o644)
        .file("data/untouched", "never read\n", 0o644);
    let (files, links, elf_interp, interp) = dynamic_files();
    let mut l1 = LayerBuilder::new();
    let mut dirs = std::collections::BTreeSet::new();
    for (p, _) in &files {
        let mut cur = Path::new(p).parent();
        while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_str().unwrap().to_string());
            cur = d.parent();
        }
    }
    for d in &dirs {
        l1.dir(d, 0o755);
    }
    for (p, data) in &files {
        l1.file(p, data.clone(), 0o755);
    }
    for (p, target) in &links {
        l1.symlink(p, target);
    }
    // The ELF names /lib64/ld-linux-x86-64.so.2; /lib/... paths from ldd
    // are canonical here, but the loader also searches /lib.
    let elf_dir = Path::new(&elf_interp).parent().unwrap().to_str().unwrap();
    if elf_dir.trim_start_matches('/') != "usr/lib/x86_64-linux-gnu" {
        l1.dir(elf_dir.trim_start_matches('/'), 0o755);
    }
    l1.symlink(elf_interp.trim_start_matches('/'), &format!("/{interp}"));
    l1.symlink("lib", "usr/lib");
    l1.file("data/b.txt", "new b\n", 0o644)
        .whiteout("data/hidden.txt");
    let mut l2 = LayerBuilder::new();
    l2.dir("etc", 0o755)
        .file("etc/unused-motd", "unused\n", 0o644);
    write_oci_layout(
        dir,
        "v1",
        vec![l0.tar_gz(), l1.tar_gz(), l2.tar_gz()],
        &["/bin/sh"],
    );
    let libs = files
        .iter()
        .map(|(p, _)| p.clone())
        .filter(|p| p.contains(".so"))
        .collect();
    Sample { libs, interp }
}

/// The tests of this file one at a time: `assert_clean` looks at every
/// overlay and runc process of `rsnap optimize` on the machine.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// No overlay, runc state or scratch file of ours is left.
fn assert_clean(scratch: &Path) {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mi.contains("rsnap-optimize-"),
        "a mount is left:\n{}",
        mi.lines()
            .filter(|l| l.contains("rsnap-optimize-"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let left: Vec<PathBuf> = std::fs::read_dir(scratch)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "scratch entries left: {left:?}");
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !ps.lines().any(|l| l.contains("rsnap-optimize-")),
        "a runc process is left:\n{ps}"
    );
}

fn files_of(record: &Value, layer: usize) -> Vec<String> {
    record["layers"][layer]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

/// The names of a TOC before its landmark, and which landmark it has.
fn toc_head(toc: &Value) -> (Vec<String>, String) {
    let mut head = Vec::new();
    for e in toc["entries"].as_array().unwrap() {
        let name = e["name"]
            .as_str()
            .unwrap()
            .trim_start_matches("./")
            .to_string();
        if name == ".prefetch.landmark" || name == ".no.prefetch.landmark" {
            return (head, name);
        }
        if e["type"] == "reg" {
            head.push(name);
        }
    }
    panic!("no landmark in the TOC");
}

fn esgzverify() -> Option<PathBuf> {
    const OUT: &str = "/var/tmp/rsnap-bench/reference";
    let built = || {
        let p = PathBuf::from(OUT).join("esgzverify");
        p.is_file().then_some(p)
    };
    std::env::var_os("ESGZVERIFY")
        .map(PathBuf::from)
        .or_else(|| e2e::which("esgzverify"))
        .or_else(built)
        .or_else(|| {
            // Build it from Debian's Go sources where the machine has the
            // reference's build script (next to the repository), once.
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/build.sh");
            if !script.is_file() {
                return None;
            }
            let ok = Command::new(&script)
                .arg(OUT)
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                built()
            } else {
                None
            }
        })
}

#[test]
fn profiles_a_workload_and_puts_its_files_first() {
    let _serial = serial();
    if !e2e::require_root_tools(&["runc", "ldd", "gunzip", "tar"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let src = tmp.path().join("src");
    let sample = sample_image(&src);
    let record = tmp.path().join("record.json");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let src_ref = format!("oci:{}:v1", s(&src));
    let dst = tmp.path().join("dst");
    let script = "cat /data/a.txt /data/b.txt >/dev/null; cat /data/hidden.txt 2>/dev/null; /usr/bin/ls /data >/dev/null";
    let started = Instant::now();
    rsnap_ok(&[
        "optimize",
        &src_ref,
        &format!("oci:{}:opt", s(&dst)),
        "--record-out",
        &s(&record),
        "--scratch-dir",
        &s(&scratch),
        "--period",
        "30",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    // The command exits at once: the run must not wait for the period.
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "waited for the period"
    );
    assert_clean(&scratch);

    let rec: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let src_layout = OciLayout::open(&src);
    let src_manifest = src_layout.manifest(Some("v1"));
    for (i, l) in src_manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        assert_eq!(rec["layers"][i]["digest"], l["digest"]);
    }
    let l0 = files_of(&rec, 0);
    let l1 = files_of(&rec, 1);
    assert_eq!(l0, ["bin/busybox", "data/a.txt"], "layer 0: {rec:#}");
    assert_eq!(l1[0], "data/b.txt", "layer 1: {rec:#}");
    assert_eq!(
        l1[1], "usr/bin/ls",
        "the dynamic binary after b.txt: {rec:#}"
    );
    assert!(
        l1.contains(&sample.interp),
        "interpreter {} missing: {rec:#}",
        sample.interp
    );
    for lib in &sample.libs {
        assert!(l1.contains(lib), "library {lib} missing: {rec:#}");
    }
    assert!(files_of(&rec, 2).is_empty(), "layer 2 untouched: {rec:#}");

    // The output: each layer's recorded files first, then the landmark.
    let tocs = check_estargz_layout(&dst, Some("opt"));
    let (head0, mark0) = toc_head(&tocs[0]);
    assert_eq!((head0, mark0.as_str()), (l0.clone(), ".prefetch.landmark"));
    let (head1, mark1) = toc_head(&tocs[1]);
    assert_eq!((head1, mark1.as_str()), (l1.clone(), ".prefetch.landmark"));
    let (head2, mark2) = toc_head(&tocs[2]);
    assert_eq!((head2.len(), mark2.as_str()), (0, ".no.prefetch.landmark"));

    // The same record without a run: the same bytes.
    let dst2 = tmp.path().join("dst2");
    rsnap_ok(&[
        "optimize",
        &src_ref,
        &format!("oci:{}:opt", s(&dst2)),
        "--reuse-record",
        &s(&record),
    ]);
    let opt = OciLayout::open(&dst).manifest_desc(Some("opt"));
    let opt2 = OciLayout::open(&dst2).manifest_desc(Some("opt"));
    assert_eq!(
        opt["digest"], opt2["digest"],
        "--reuse-record output differs"
    );

    // A prefetch list adds paths and globs to the layer that has them.
    let list = tmp.path().join("prefetch.txt");
    std::fs::write(
        &list,
        "# by hand\n/data/untouched\netc/*-motd\ndata/hidden.txt\n",
    )
    .unwrap();
    let dst3 = tmp.path().join("dst3");
    rsnap_ok(&[
        "optimize",
        &src_ref,
        &format!("oci:{}:opt", s(&dst3)),
        "--reuse-record",
        &s(&record),
        "--prefetch-list",
        &s(&list),
    ]);
    let tocs3 = check_estargz_layout(&dst3, Some("opt"));
    let mut want0 = l0.clone();
    want0.push("data/untouched".into());
    assert_eq!(toc_head(&tocs3[0]).0, want0);
    assert_eq!(toc_head(&tocs3[1]).0, l1);
    assert_eq!(
        toc_head(&tocs3[2]),
        (
            vec!["etc/unused-motd".to_string()],
            ".prefetch.landmark".to_string()
        )
    );

    // The Go reference reads every layer.
    match esgzverify() {
        Some(v) => {
            let lay = OciLayout::open(&dst);
            for l in lay.manifest(Some("opt"))["layers"].as_array().unwrap() {
                let d = l["digest"].as_str().unwrap();
                let toc = l["annotations"][e2e::image::TOC_DIGEST].as_str().unwrap();
                let out = Command::new(&v)
                    .arg(lay.blob_path(d))
                    .arg(toc)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "esgzverify {d}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("esgzverify missing (shared/reference/build.sh)")
        }
        None => eprintln!("esgzverify missing: Go reference check skipped"),
    }

    // The output image runs (its own Cmd) and still reads the same files.
    let tmp2 = tmp.path().join("rerun");
    std::fs::create_dir(&tmp2).unwrap();
    rsnap_ok(&[
        "optimize",
        &format!("oci:{}:opt", s(&dst)),
        &format!("oci:{}:again", s(&tmp2.join("img"))),
        "--scratch-dir",
        &s(&scratch),
        "--",
        "/bin/sh",
        "-c",
        "test \"$(cat /data/b.txt)\" = 'new b' && ! test -e /data/hidden.txt",
    ]);
    assert_clean(&scratch);
}

#[test]
fn bad_inputs_fail_clearly_and_leave_nothing_behind() {
    let _serial = serial();
    if !e2e::require_root_tools(&["runc", "ldd"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let src = tmp.path().join("src");
    let mut l = busybox_layer();
    l.file("data", "x\n", 0o644);
    write_oci_layout(&src, "v1", vec![l.tar_gz()], &["/bin/sh"]);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let src_ref = format!("oci:{}:v1", s(&src));
    let dst_ref = format!("oci:{}:v1", s(&tmp.path().join("dst")));
    let sc = s(&scratch);
    let run = |extra: &[&str]| {
        let mut args = vec!["optimize", &src_ref, &dst_ref, "--scratch-dir", &sc];
        args.extend_from_slice(extra);
        let (ok, _, err) = rsnap(&args);
        assert!(!ok, "{extra:?} succeeded");
        assert_clean(&scratch);
        err
    };
    let err = run(&["--", "/no/such/command"]);
    assert!(
        err.contains("\"/no/such/command\" not found in the image"),
        "{err}"
    );
    let err = run(&["--", "nosuchcmd", "arg"]);
    assert!(
        err.contains("\"nosuchcmd\" not found in the image"),
        "{err}"
    );
    // A crash: the inner shell is not PID 1 (which ignores it), so SIGSEGV
    // kills it, and the outer one exits with 128 + 11 as shells do.
    let err = run(&["--", "/bin/sh", "-c", "/bin/sh -c 'kill -SEGV $$'; exit $?"]);
    assert!(err.contains("was killed by signal 11"), "{err}");
    let err = run(&["--", "/bin/sh", "-c", "exit 3"]);
    assert!(err.contains("exited with status 3"), "{err}");
    let err = run(&["--period", "0", "--", "/bin/true"]);
    assert!(err.contains("--period"), "{err}");
    // An unwritable destination fails before anything runs.
    let started = Instant::now();
    let (ok, _, err) = rsnap(&[
        "optimize",
        &src_ref,
        "oci:/proc/rsnap-no-such-dir:v1",
        "--scratch-dir",
        &sc,
        "--",
        "/bin/sleep",
        "20",
    ]);
    assert!(!ok && err.contains("is not writable"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_clean(&scratch);
    assert!(!tmp.path().join("dst").join("index.json").exists());
}

#[test]
fn wait_on_signal_runs_until_sigint_then_cleans_up() {
    let _serial = serial();
    if !e2e::require_root_tools(&["runc"]) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let src = tmp.path().join("src");
    let mut l = busybox_layer();
    l.file("data", "x\n", 0o644);
    write_oci_layout(&src, "v1", vec![l.tar_gz()], &["/bin/sh"]);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let record = tmp.path().join("r.json");
    let mut child = Command::new(e2e::image::rsnap_bin())
        .args([
            "optimize",
            &format!("oci:{}:v1", s(&src)),
            &format!("oci:{}:v1", s(&tmp.path().join("dst"))),
            "--scratch-dir",
            &s(&scratch),
            "--wait-on-signal",
            "--record-out",
            &s(&record),
            "--",
            "/bin/sh",
            "-c",
            "cat /data; exec sleep 300",
        ])
        .spawn()
        .unwrap();
    // Wait until the workload has read /data (the record is written later,
    // so poll the overlay's upper dir... simpler: wait for the mount).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        if mi.contains(&s(&scratch)) {
            break;
        }
        assert!(Instant::now() < deadline, "the rootfs was never mounted");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    // Still running: no period applies.
    assert!(child.try_wait().unwrap().is_none());
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert_clean(&scratch);
    let rec: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    assert_eq!(files_of(&rec, 0), ["bin/busybox", "data"]);
}
