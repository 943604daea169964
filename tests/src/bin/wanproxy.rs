//! `wanproxy`: the WAN-profile proxy of `e2e::wanproxy` as a process, so
//! bench scripts can start it and stop it by PID.
//!
//!   wanproxy --upstream [HOST:]PORT [--listen-port N] [--delay-ms 15] [--mbit 200] [--stats FILE]
//!
//! Prints `127.0.0.1:PORT` on stdout once listening. `--stats FILE` is
//! rewritten (atomically) within 50 ms of any change with
//! `down=BYTES up=BYTES connections=N` (down = from the upstream).

use e2e::wanproxy::WanProxy;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "usage: wanproxy --upstream [HOST:]PORT [--listen-port N] [--delay-ms MS] [--mbit MBIT] [--stats FILE]
  defaults: --listen-port 0 (any free port), --delay-ms 15 (each way), --mbit 200 (each way; 0 = no cap)";

fn main() {
    if let Err(e) = run() {
        eprintln!("wanproxy: {e}\n{USAGE}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut upstream: Option<SocketAddr> = None;
    let (mut listen, mut delay_ms, mut mbit) = (0u16, 15f64, 200f64);
    let mut stats: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--upstream" => {
                let v = val()?;
                let v = if v.contains(':') {
                    v
                } else {
                    format!("127.0.0.1:{v}")
                };
                upstream = v.to_socket_addrs().map_err(|e| format!("{v}: {e}"))?.next();
            }
            "--listen-port" => listen = val()?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--delay-ms" => delay_ms = val()?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--mbit" => mbit = val()?.parse().map_err(|e| format!("{a}: {e}"))?,
            "--stats" => stats = Some(PathBuf::from(val()?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    let upstream = upstream.ok_or("--upstream is required")?;
    if !(delay_ms >= 0.0 && mbit >= 0.0) {
        return Err("--delay-ms and --mbit must be >= 0".into());
    }
    let p = WanProxy::bind(
        listen,
        upstream,
        Duration::from_secs_f64(delay_ms / 1000.0),
        (mbit * 1e6) as u64,
    )
    .map_err(|e| format!("listen on 127.0.0.1:{listen}: {e}"))?;
    println!("{}", p.host());
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    // Runs until killed (SIGTERM by the script that started it).
    let mut last = None;
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let now = (p.bytes_down(), p.bytes_up(), p.connections());
        if let (Some(path), true) = (&stats, last != Some(now)) {
            let tmp = path.with_extension("tmp");
            let line = format!("down={} up={} connections={}\n", now.0, now.1, now.2);
            std::fs::write(&tmp, line)
                .and_then(|_| std::fs::rename(&tmp, path))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            last = Some(now);
        }
    }
}
