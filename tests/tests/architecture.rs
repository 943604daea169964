//! The crate dependency direction, read from `cargo metadata`: libraries
//! never depend on binaries, the format and registry crates know nothing of
//! the layers above them, the snapshotter knows only its `RemoteFs` trait,
//! and tonic stays where gRPC is spoken. Rules about a crate that does not
//! exist are vacuous; `rules_catch_violations` shows each one can fail.

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A workspace package: its name, its directory relative to the workspace
/// root (`crates/lazyfs`), and its declared dependencies.
#[derive(Debug)]
struct Pkg {
    name: String,
    dir: String,
    deps: Vec<Dep>,
}

#[derive(Debug)]
struct Dep {
    name: String,
    /// `[dev-dependencies]`: only tests and examples see these.
    dev: bool,
}

impl Pkg {
    /// What ships with the package: `[dependencies]` and
    /// `[build-dependencies]`. Direction rules are about these; a test may
    /// use whatever it needs.
    fn shipped(&self) -> impl Iterator<Item = &str> {
        self.deps.iter().filter(|d| !d.dev).map(|d| d.name.as_str())
    }

    fn under(&self, top: &str) -> bool {
        self.dir.starts_with(&format!("{top}/"))
    }
}

/// Package → the workspace packages it must not depend on.
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("lazyfs", &["snapshotter"]),
    // The snapshotter knows only `RemoteFs`; its tests may use lazyfs.
    (
        "snapshotter",
        &["lazyfs", "registry", "estargz", "stargzfs"],
    ),
    (
        "estargz",
        &["registry", "lazyfs", "snapshotter", "stargzfs"],
    ),
    ("registry", &["lazyfs", "snapshotter", "stargzfs"]),
    // A format crate like estargz: no HTTP, FUSE or snapshot semantics.
    (
        "gzindex",
        &["registry", "lazyfs", "snapshotter", "stargzfs"],
    ),
];

/// Packages that depend on no workspace package at all.
const LEAVES: &[&str] = &["snapshot-labels", "mountinfo", "overlay-unpack"];

/// Packages under crates/ that may depend on tonic directly: the
/// snapshotter (its gRPC service), ctrd (a containerd client), the
/// snapshotter's conformance suite (a dev-only crate that drives that gRPC
/// service and reads its status codes) and cri-keychain (it serves the CRI
/// image service the kubelet pulls through). Everything under bins/ and the
/// tests package may too.
const TONIC_USERS: &[&str] = &[
    "snapshotter",
    "ctrd",
    "snapshotter-testsuite",
    "cri-keychain",
];

/// Every broken rule, one line each.
fn violations(pkgs: &[Pkg]) -> Vec<String> {
    let mut out = Vec::new();
    let bins: BTreeSet<&str> = pkgs
        .iter()
        .filter(|p| p.under("bins"))
        .map(|p| p.name.as_str())
        .collect();
    let members: BTreeSet<&str> = pkgs.iter().map(|p| p.name.as_str()).collect();
    for p in pkgs {
        let from = p.name.as_str();
        if p.under("crates") {
            // Not even for tests: a binary is no library to link against.
            for d in p.deps.iter().filter(|d| bins.contains(d.name.as_str())) {
                out.push(format!("{from} (crates/) depends on the binary {}", d.name));
            }
            if !TONIC_USERS.contains(&from) && p.shipped().any(|d| d == "tonic") {
                out.push(format!("{from} depends on tonic directly"));
            }
        }
        for (_, banned) in FORBIDDEN.iter().filter(|(who, _)| *who == from) {
            for d in p.shipped().filter(|d| banned.contains(d)) {
                out.push(format!("{from} depends on {d}"));
            }
        }
        if LEAVES.contains(&from) {
            for d in p.shipped().filter(|d| members.contains(d)) {
                out.push(format!("{from} depends on the workspace crate {d}"));
            }
        }
    }
    out
}

fn workspace_root() -> PathBuf {
    // This package is tests/, one level below the root.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn metadata(root: &Path) -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

fn packages(meta: &Value) -> Vec<Pkg> {
    let root = Path::new(meta["workspace_root"].as_str().expect("workspace_root"));
    let s = |v: &Value| v.as_str().expect("a string").to_string();
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| {
            let manifest = Path::new(p["manifest_path"].as_str().expect("manifest_path"));
            let dir = manifest
                .parent()
                .and_then(|d| d.strip_prefix(root).ok())
                .expect("members live under the workspace root");
            Pkg {
                name: s(&p["name"]),
                dir: dir.to_string_lossy().into_owned(),
                deps: p["dependencies"]
                    .as_array()
                    .expect("dependencies")
                    .iter()
                    .map(|d| Dep {
                        name: s(&d["name"]),
                        dev: d["kind"].as_str() == Some("dev"),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Directories under `dir` (recursively, `target` and hidden ones skipped)
/// that hold a Cargo.toml, relative to `root`.
fn manifest_dirs(root: &Path, dir: &Path, out: &mut Vec<String>) {
    if dir.join("Cargo.toml").is_file() {
        let rel = dir.strip_prefix(root).expect("under the root");
        out.push(rel.to_string_lossy().into_owned());
    }
    for e in std::fs::read_dir(dir).expect("reading a source directory") {
        let e = e.expect("a directory entry");
        let name = e.file_name();
        let name = name.to_string_lossy();
        if e.file_type().expect("file type").is_dir() && name != "target" && !name.starts_with('.')
        {
            manifest_dirs(root, &e.path(), out);
        }
    }
}

#[test]
fn crate_dependencies_point_one_way() {
    let root = workspace_root();
    let pkgs = packages(&metadata(&root));
    // The rules name these; a rename would make them vacuous.
    for name in ["estargz", "registry", "lazyfs", "snapshotter"] {
        let p = pkgs.iter().find(|p| p.name == name);
        assert!(p.is_some_and(|p| p.under("crates")), "no crates/{name}");
    }
    assert!(
        pkgs.iter().any(|p| p.under("bins")),
        "no package under bins/"
    );
    let v = violations(&pkgs);
    assert!(
        v.is_empty(),
        "dependency direction broken:\n{}",
        v.join("\n")
    );
}

#[test]
fn every_package_under_crates_and_bins_is_a_member() {
    let root = workspace_root();
    let pkgs = packages(&metadata(&root));
    let members: BTreeSet<&str> = pkgs.iter().map(|p| p.dir.as_str()).collect();
    let mut dirs = Vec::new();
    for top in ["crates", "bins"] {
        manifest_dirs(&root, &root.join(top), &mut dirs);
    }
    assert!(dirs.len() >= 6, "found only {dirs:?}");
    let outside: Vec<&String> = dirs
        .iter()
        .filter(|d| !members.contains(d.as_str()))
        .collect();
    assert!(
        outside.is_empty(),
        "not workspace members (add them to the root Cargo.toml): {outside:?}"
    );
}

/// Each rule reports what it exists to catch, and dev-dependencies count
/// only where said.
#[test]
fn rules_catch_violations() {
    let pkg = |name: &str, dir: &str, deps: &[(&str, bool)]| Pkg {
        name: name.into(),
        dir: dir.into(),
        deps: deps
            .iter()
            .map(|(n, dev)| Dep {
                name: n.to_string(),
                dev: *dev,
            })
            .collect(),
    };
    let pkgs = [
        pkg("tool", "bins/tool", &[("tonic", false), ("lazyfs", false)]),
        pkg("e2e", "tests", &[("tonic", false)]),
        pkg(
            "lazyfs",
            "crates/lazyfs",
            &[("snapshotter", false), ("tool", true)],
        ),
        pkg(
            "snapshotter",
            "crates/snapshotter",
            &[("lazyfs", true), ("registry", false), ("tonic", false)],
        ),
        pkg(
            "estargz",
            "crates/estargz",
            &[("stargzfs", false), ("registry", true)],
        ),
        pkg("registry", "crates/registry", &[("lazyfs", false)]),
        pkg(
            "stargzfs",
            "crates/stargzfs",
            &[("tonic", false), ("snapshotter", false)],
        ),
        pkg(
            "mountinfo",
            "crates/mountinfo",
            &[("estargz", false), ("thiserror", false)],
        ),
        pkg(
            "snapshot-labels",
            "crates/snapshot-labels",
            &[("tempfile", false)],
        ),
    ];
    let v = violations(&pkgs);
    assert_eq!(
        v,
        [
            "lazyfs (crates/) depends on the binary tool",
            "lazyfs depends on snapshotter",
            "snapshotter depends on registry",
            "estargz depends on stargzfs",
            "registry depends on lazyfs",
            "stargzfs depends on tonic directly",
            "mountinfo depends on the workspace crate estargz",
        ],
        "{v:#?}"
    );
}
