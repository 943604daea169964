//! containerd's own snapshotter test suite against the daemon: the Go
//! `snapshots/testsuite` of containerd 1.6 (Debian's
//! golang-github-containerd-containerd-dev), driving the daemon over its
//! unix socket through containerd's proxy snapshotter client
//! (`snapshots/proxy`), exactly as containerd drives a proxy plugin: every
//! call, its error codes, and the mounts it returns (mounted by the suite).
//!
//! The Go test binary (tests/go/containerd-testsuite) is built once with
//! GO111MODULE=off against Debian's Go sources and cached under the target
//! dir; it is rebuilt when its source changes. Without Go (and no way to
//! install it) the test says so and skips; scripts/install-deps.sh installs
//! golang-go and the containerd sources.

use std::path::{Path, PathBuf};
use std::process::Command;

const GO_PACKAGES: [&str; 2] = ["golang-go", "golang-github-containerd-containerd-dev"];
const SUITE_PKG: &str =
    "/usr/share/gocode/src/github.com/containerd/containerd/snapshots/testsuite";

fn daemon_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_remote-snapshotter"))
}

/// Go and containerd's Go sources, installed with apt if missing (root,
/// Debian); the reason if that is not possible.
fn go_toolchain() -> Result<(), String> {
    let have = || {
        Command::new("go")
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
            && Path::new(SUITE_PKG).is_dir()
    };
    if have() {
        return Ok(());
    }
    eprintln!("installing {GO_PACKAGES:?} with apt-get");
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(GO_PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if ok && have() {
        Ok(())
    } else {
        Err(format!(
            "Go or containerd's Go sources are missing and could not be installed \
             (apt-get install {}); run scripts/install-deps.sh",
            GO_PACKAGES.join(" ")
        ))
    }
}

/// The suite's test binary, built under `TARGET/go-testsuite` unless a
/// build from the same source is there.
fn suite_binary() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/go/containerd-testsuite/suite_test.go");
    let source = std::fs::read(&src).expect("the Go suite's source");
    // target/debug/remote-snapshotter -> target/go-testsuite
    let out = daemon_bin()
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join("go-testsuite");
    let bin = out.join("containerd-testsuite.test");
    let stamp = out.join("source.go");
    if bin.exists() && std::fs::read(&stamp).is_ok_and(|s| s == source) {
        return bin;
    }
    // A GOPATH of our package, plus gotest.tools/v3 (Debian ships it
    // without the module suffix the suite imports).
    let gopath = out.join("gopath");
    let pkg = gopath.join("src/containerdtestsuite");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("suite_test.go"), &source).unwrap();
    let v3 = gopath.join("src/gotest.tools/v3");
    if !v3.exists() {
        std::fs::create_dir_all(v3.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/usr/share/gocode/src/gotest.tools", &v3).unwrap();
    }
    eprintln!("building containerd's snapshotter test suite (Go, once)");
    let st = Command::new("go")
        .args(["test", "-c", "-o"])
        .arg(&bin)
        .arg(".")
        .current_dir(&pkg)
        .env("GO111MODULE", "off")
        .env("GOPATH", format!("{}:/usr/share/gocode", gopath.display()))
        .env("GOCACHE", out.join("cache"))
        .env("GOFLAGS", "")
        .status()
        .expect("run go");
    assert!(st.success(), "building the Go suite failed");
    std::fs::write(&stamp, &source).unwrap();
    bin
}

#[test]
fn containerd_snapshotter_testsuite_passes_over_the_socket() {
    if !e2e::require_root_tools(&[]) {
        return;
    }
    if let Err(why) = go_toolchain() {
        eprintln!("SKIPPED containerd's snapshotter test suite: {why}");
        return;
    }
    let bin = suite_binary();
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .args(["-test.v", "-test.parallel", "4", "-test.timeout", "10m"])
        .env("RSNAP_DAEMON", daemon_bin())
        // The suite makes its directories with os.MkdirTemp("").
        .env("TMPDIR", tmp.path())
        .current_dir(tmp.path())
        .output()
        .expect("run the Go suite");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let passed = text
        .lines()
        .filter(|l| l.trim_start().starts_with("--- PASS"))
        .count();
    let failed: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("--- FAIL"))
        .collect();
    let skipped: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("--- SKIP"))
        .collect();
    eprintln!(
        "containerd snapshotter suite: {passed} passed, {} failed, skipped {skipped:?}",
        failed.len()
    );
    assert!(
        out.status.success() && failed.is_empty(),
        "containerd's snapshotter suite failed ({failed:?}):\n{text}"
    );
    // The suite skips Rename itself on every kernel (issues.go: "rename test
    // still fails on some kernels with overlay"); nothing else may skip.
    assert!(
        skipped.iter().all(|l| l.contains("/Rename ")),
        "skipped: {skipped:?}"
    );
    // 21 subtests (one of them that skip) plus the top-level test.
    assert!(passed >= 21, "only {passed} passed:\n{text}");
    e2e::containerd::unmount_under(tmp.path());
}
