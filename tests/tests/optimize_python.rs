//! `rsnap optimize` on a 3-layer python image (real runc, overlayfs,
//! fanotify), built in the test from the host's python the way the
//! benchmark's image is layered: the interpreter with its libraries, the
//! standard library, the application. The record lists, per topmost layer
//! and in access order, the ELF interpreter, the python binary (Debian links
//! libpython into it; a shared libpython is checked where the host has one),
//! libc, the modules the command imports and the file it reads, and nothing
//! it did not touch; the output puts them first.

use e2e::image::{check_estargz_layout, rsnap_ok, write_oci_layout, LayerBuilder};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const PYTHON: &str = "/usr/bin/python3";
/// Parts of the standard library the image leaves out (size only).
const SKIP: &[&str] = &[
    "__pycache__",
    "test",
    "idlelib",
    "tkinter",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "distutils",
    "turtledemo",
    "site-packages",
    "dist-packages",
];

/// Adds `dir` (absolute, on the host) recursively as layer-relative paths,
/// regular files and symlinks only, skipping `SKIP` names and `config-*`.
fn add_tree(l: &mut LayerBuilder, dir: &Path) {
    let rel = dir.to_str().unwrap().trim_start_matches('/');
    l.dir(rel, 0o755);
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        if SKIP.contains(&name.as_str()) || name.starts_with("config-") {
            continue;
        }
        let p = e.path();
        let r = p.to_str().unwrap().trim_start_matches('/').to_string();
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            let t = std::fs::read_link(&p).unwrap();
            l.symlink(&r, t.to_str().unwrap());
        } else if ft.is_dir() {
            add_tree(l, &p);
        } else if ft.is_file() {
            l.file(&r, std::fs::read(&p).unwrap(), 0o644);
        }
    }
}

/// Every parent directory of `rel` (layer-relative), outermost first.
fn parents(rel: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = Path::new(rel).parent();
    while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty()) {
        out.push(d.to_str().unwrap().to_string());
        cur = d.parent();
    }
    out.reverse();
    out
}

struct Image {
    /// Canonical layer-relative paths.
    python: String,
    interp: String,
    libc: String,
    libpython: Option<String>,
    stdlib: String,
}

/// Layer 0: python, its libraries and the loader at their canonical paths
/// plus the names it is called by; layer 1: the standard library; layer 2:
/// the application and its data.
fn build(dir: &Path) -> Image {
    let real_python = std::fs::canonicalize(PYTHON).unwrap();
    let ldd = Command::new("ldd").arg(&real_python).output().unwrap();
    let text = String::from_utf8_lossy(&ldd.stdout).into_owned();
    let mut l0 = LayerBuilder::new();
    let mut dirs = std::collections::BTreeSet::new();
    let mut files: Vec<(String, PathBuf)> = vec![(
        real_python.to_str().unwrap()[1..].to_string(),
        real_python.clone(),
    )];
    let mut links: Vec<(String, String)> = vec![(
        PYTHON[1..].to_string(),
        real_python
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string(),
    )];
    let (mut interp, mut libc, mut libpython) = (None, None, None);
    for line in text.lines().map(str::trim) {
        let path = match line.split_once("=> ") {
            Some((_, rest)) => rest.split(' ').next().unwrap_or(""),
            None => line.split(' ').next().unwrap_or(""),
        };
        if !path.starts_with('/') {
            continue;
        }
        let real = std::fs::canonicalize(path).unwrap();
        let rel = real.to_str().unwrap()[1..].to_string();
        if !line.contains("=>") {
            interp = Some(rel.clone());
            // The name the ELF asks for, e.g. /lib64/ld-linux-x86-64.so.2.
            links.push((path[1..].to_string(), format!("/{rel}")));
        } else if Path::new(path).file_name() != real.file_name() || path != real.to_str().unwrap()
        {
            links.push((path[1..].to_string(), format!("/{rel}")));
        }
        if line.starts_with("libc.so") {
            libc = Some(rel.clone());
        }
        if line.starts_with("libpython") {
            libpython = Some(rel.clone());
        }
        if !files.iter().any(|(p, _)| *p == rel) {
            files.push((rel, real));
        }
    }
    for p in files
        .iter()
        .map(|(p, _)| p)
        .chain(links.iter().map(|(p, _)| p))
    {
        dirs.extend(parents(p));
    }
    // /lib and /lib64 may be symlinks on the host (usr-merge): keep them real
    // directories here, the loader does not care.
    for d in &dirs {
        l0.dir(d, 0o755);
    }
    for (rel, real) in &files {
        l0.file(rel, std::fs::read(real).unwrap(), 0o755);
    }
    for (p, target) in &links {
        if !files.iter().any(|(f, _)| f == p) {
            l0.symlink(p, target);
        }
    }
    l0.dir("tmp", 0o1777);

    let version = real_python
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let stdlib_dir = Path::new("/usr/lib").join(&version);
    let mut l1 = LayerBuilder::new();
    for d in parents(&stdlib_dir.to_str().unwrap()[1..]) {
        l1.dir(&d, 0o755);
    }
    add_tree(&mut l1, &stdlib_dir);

    let mut l2 = LayerBuilder::new();
    l2.dir("app", 0o755)
        .dir("app/data", 0o755)
        .file(
            "app/run.py",
            "import hashlib, json, decimal\n\
             with open('/app/data/small.bin', 'rb') as f:\n    \
             print(json.dumps({'sha256': hashlib.sha256(f.read()).hexdigest(), 'd': str(decimal.Decimal(1) / 8)}))\n",
            0o644,
        )
        .file("app/data/small.bin", vec![7u8; 4096], 0o644)
        .file("app/data/unused.bin", vec![9u8; 4096], 0o644);
    write_oci_layout(
        dir,
        "v1",
        vec![l0.tar_gz(), l1.tar_gz(), l2.tar_gz()],
        &[PYTHON, "/app/run.py"],
    );
    Image {
        python: real_python.to_str().unwrap()[1..].to_string(),
        interp: interp.expect("an ELF interpreter"),
        libc: libc.expect("libc"),
        libpython,
        stdlib: stdlib_dir.to_str().unwrap()[1..].to_string(),
    }
}

fn files_of(record: &Value, layer: usize) -> Vec<String> {
    record["layers"][layer]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_python_image_records_interpreter_libraries_and_imported_modules() {
    if !e2e::require_root_tools(&["runc", "ldd"]) || !Path::new(PYTHON).exists() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let src = tmp.path().join("src");
    let img = build(&src);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let record = tmp.path().join("record.json");
    let dst = tmp.path().join("dst");
    let t = std::time::Instant::now();
    let out = rsnap_ok(&[
        "optimize",
        &format!("oci:{}:v1", s(&src)),
        &format!("oci:{}:opt", s(&dst)),
        "--record-out",
        &s(&record),
        "--scratch-dir",
        &s(&scratch),
        "--period",
        "30",
    ]);
    eprintln!("optimize took {:.2}s: {out}", t.elapsed().as_secs_f64());
    let rec: Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let (l0, l1, l2) = (files_of(&rec, 0), files_of(&rec, 1), files_of(&rec, 2));
    // The loader maps the binary's libraries: the interpreter, python
    // (with libpython in it, or beside it as a shared library) and libc.
    assert_eq!(l0[0], img.python, "python is executed first: {rec:#}");
    for want in [&img.interp, &img.libc] {
        assert!(l0.contains(want), "{want} missing from layer 0: {rec:#}");
    }
    if let Some(lp) = &img.libpython {
        assert!(l0.contains(lp), "{lp} missing: {rec:#}");
    }
    // Start-up modules (os and the like are frozen into the binary in
    // 3.11: never opened) and the ones the command imports, from layer 1.
    for m in [
        "encodings/__init__.py",
        "encodings/utf_8.py",
        "json/__init__.py",
        "json/encoder.py",
        "hashlib.py",
        "decimal.py",
    ] {
        let want = format!("{}/{m}", img.stdlib);
        assert!(l1.contains(&want), "{want} missing from layer 1: {rec:#}");
    }
    assert!(
        !l1.iter()
            .any(|f| f.contains("/email/") || f.contains("/http/")),
        "modules the command does not import: {rec:#}"
    );
    // The app layer: the script, then the file it reads; not the other.
    assert_eq!(l2, ["app/run.py", "app/data/small.bin"], "{rec:#}");

    // The output has each layer's recorded files first.
    let tocs = check_estargz_layout(&dst, Some("opt"));
    for (i, files) in [l0, l1, l2].iter().enumerate() {
        let mut head = Vec::new();
        let mut mark = None;
        for e in tocs[i]["entries"].as_array().unwrap() {
            let name = e["name"].as_str().unwrap().trim_start_matches("./");
            if name.ends_with("prefetch.landmark") {
                mark = Some(name.to_string());
                break;
            }
            if e["type"] == "reg" {
                head.push(name.to_string());
            }
        }
        assert_eq!(mark.as_deref(), Some(".prefetch.landmark"), "layer {i}");
        assert_eq!(&head, files, "layer {i}");
    }
}
