//! Test harness: starts real services on 127.0.0.1 in a scratch directory,
//! records their PIDs and stops them by PID (never by name) when dropped,
//! so a failing test still cleans up.

pub mod authfront;
pub mod containerd;
pub mod cri;
pub mod faultproxy;
pub mod grpcraw;
pub mod image;
pub mod process;
pub mod registry;
pub mod tcpproxy;
pub mod tls;
pub mod tokenauth;
pub mod wanproxy;

use std::net::TcpListener;

/// A free TCP port on 127.0.0.1 (bind to port 0, read it back, release it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local addr")
        .port()
}

/// Whether the root-only tests can run here (root, /dev/fuse, the tools).
/// Tests that need real components call this and fail loudly in CI
/// (`CI=true`) rather than silently skipping.
pub fn require_root_tools(tools: &[&str]) -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| which(t).is_none())
        .collect();
    if root && missing.is_empty() {
        return true;
    }
    let msg = format!("needs root and {missing:?} on PATH");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    false
}

pub fn which(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
