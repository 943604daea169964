//! A fault-injecting HTTP proxy on 127.0.0.1 in front of a real registry,
//! with faults switched at run time through a shared [`Faults`] handle:
//! refuse connections, blackhole them, answer N requests with 503/429,
//! stall blob bodies after K bytes, flip a byte in ranged blob bodies,
//! answer Range with the whole blob. It counts what it saw per kind.
//!
//! One request per connection (`Connection: close`), plain threads; the
//! HTTP plumbing is shared with [`crate::authfront`]. Stops when dropped.

use crate::authfront::{
    body_start, forward, is_blob_get, read_request, response, send, serve, status_of, Request,
};
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Kinds of request the proxy counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v2/` and anything else.
    Other,
    Manifest,
    /// Blob GET with a Range header.
    BlobRange,
    /// Blob GET without Range.
    BlobWhole,
    /// Blob HEAD.
    BlobHead,
}

const KINDS: usize = 5;

fn kind_of(req: &Request) -> Kind {
    if req.target.contains("/manifests/") {
        Kind::Manifest
    } else if req.target.contains("/blobs/sha256:") {
        match (req.method.as_str(), req.header("range").is_some()) {
            ("HEAD", _) => Kind::BlobHead,
            (_, true) => Kind::BlobRange,
            _ => Kind::BlobWhole,
        }
    } else {
        Kind::Other
    }
}

/// What the proxy saw and did, since the start or the last reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Requests read, by [`Kind`] (index `Kind as usize`).
    pub requests: [u64; KINDS],
    /// Connections closed at once (refuse mode).
    pub refused: u64,
    /// Connections held without an answer (blackhole mode).
    pub blackholed: u64,
    /// Injected 503 and 429 answers.
    pub injected_503: u64,
    pub injected_429: u64,
    /// Blob bodies stalled, corrupted, answered whole for a Range.
    pub stalled: u64,
    pub corrupted: u64,
    pub whole_for_range: u64,
    /// Response bytes written to clients.
    pub bytes_down: u64,
}

impl Counts {
    pub fn get(&self, k: Kind) -> u64 {
        self.requests[k as usize]
    }
    pub fn total_requests(&self) -> u64 {
        self.requests.iter().sum()
    }
}

/// "Do this to the next N": 0 is off, [`ALWAYS`] is until cleared.
pub const ALWAYS: usize = usize::MAX;

/// The switches. Every setter takes effect for the next request.
#[derive(Default)]
pub struct Faults {
    refuse: AtomicBool,
    blackhole: AtomicBool,
    /// (remaining, status, Retry-After seconds)
    fail: Mutex<(usize, u16, Option<u64>)>,
    stall_n: AtomicUsize,
    stall_after: AtomicUsize,
    corrupt_n: AtomicUsize,
    whole_n: AtomicUsize,
    counts: Mutex<Counts>,
    stop: AtomicBool,
}

/// Take one from a "next N" counter; ALWAYS never runs out.
fn take(n: &AtomicUsize) -> bool {
    n.fetch_update(SeqCst, SeqCst, |v| match v {
        0 => None,
        ALWAYS => Some(ALWAYS),
        v => Some(v - 1),
    })
    .is_ok()
}

impl Faults {
    /// Pass everything through (clears every fault, keeps the counts).
    pub fn pass(&self) {
        self.refuse.store(false, SeqCst);
        self.blackhole.store(false, SeqCst);
        *self.fail.lock().unwrap() = (0, 0, None);
        self.stall_n.store(0, SeqCst);
        self.corrupt_n.store(0, SeqCst);
        self.whole_n.store(0, SeqCst);
    }
    /// Close each new connection at once, before reading it ("down").
    pub fn refuse(&self, on: bool) {
        self.refuse.store(on, SeqCst);
    }
    /// Read requests and never answer (a host that went silent); held
    /// connections are closed when this is switched off.
    pub fn blackhole(&self, on: bool) {
        self.blackhole.store(on, SeqCst);
    }
    /// Answer the next `n` requests with `status` (503, 429, ...) and an
    /// optional `Retry-After` in seconds.
    pub fn fail_next(&self, n: usize, status: u16, retry_after: Option<u64>) {
        *self.fail.lock().unwrap() = (n, status, retry_after);
    }
    /// Send the headers and `after` bytes of the next `n` blob bodies, then
    /// nothing until this is cleared (or 120 s), then close.
    pub fn stall_blobs(&self, n: usize, after: usize) {
        self.stall_after.store(after, SeqCst);
        self.stall_n.store(n, SeqCst);
    }
    /// Flip one byte in the middle of the next `n` ranged (206) blob bodies.
    pub fn corrupt_ranges(&self, n: usize) {
        self.corrupt_n.store(n, SeqCst);
    }
    /// Drop the Range header of the next `n` blob GETs (200 + whole blob).
    pub fn whole_blob(&self, n: usize) {
        self.whole_n.store(n, SeqCst);
    }
    pub fn counts(&self) -> Counts {
        *self.counts.lock().unwrap()
    }
    pub fn reset_counts(&self) {
        *self.counts.lock().unwrap() = Counts::default();
    }
    fn count(&self, f: impl FnOnce(&mut Counts)) {
        f(&mut self.counts.lock().unwrap());
    }
    fn take_fail(&self) -> Option<(u16, Option<u64>)> {
        let mut f = self.fail.lock().unwrap();
        if f.0 == 0 {
            return None;
        }
        if f.0 != ALWAYS {
            f.0 -= 1;
        }
        Some((f.1, f.2))
    }
    /// Sleep while `cond` holds, up to `max`, waking early when stopped.
    fn hold(&self, max: Duration, cond: impl Fn() -> bool) {
        let t = Instant::now();
        while cond() && !self.stop.load(SeqCst) && t.elapsed() < max {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

pub struct FaultProxy {
    pub port: u16,
    faults: Arc<Faults>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl FaultProxy {
    /// Start passing everything to the registry on 127.0.0.1:`upstream`.
    pub fn start(upstream: u16) -> FaultProxy {
        let faults = Arc::new(Faults::default());
        let f = faults.clone();
        let (port, stop, t) = serve(Arc::new(move |c: TcpStream| handle(&f, c, upstream)));
        FaultProxy {
            port,
            faults,
            stop,
            thread: Some(t),
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The switches, to keep or hand to another thread.
    pub fn faults(&self) -> Arc<Faults> {
        self.faults.clone()
    }
}

impl std::ops::Deref for FaultProxy {
    type Target = Faults;
    fn deref(&self) -> &Faults {
        &self.faults
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.faults.stop.store(true, SeqCst);
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(f: &Faults, c: TcpStream, upstream: u16) {
    if f.refuse.load(SeqCst) {
        f.count(|n| n.refused += 1);
        // Linger 0: the client sees a reset, as from a port nobody listens on.
        let _ = rustix_linger_zero(&c);
        return;
    }
    let Some(mut req) = read_request(&c) else {
        return;
    };
    let kind = kind_of(&req);
    f.count(|n| n.requests[kind as usize] += 1);
    if f.blackhole.load(SeqCst) {
        f.count(|n| n.blackholed += 1);
        f.hold(Duration::from_secs(120), || f.blackhole.load(SeqCst));
        let _ = c.shutdown(Shutdown::Both);
        return;
    }
    if let Some((status, retry_after)) = f.take_fail() {
        f.count(|n| match status {
            429 => n.injected_429 += 1,
            _ => n.injected_503 += 1,
        });
        let mut h = Vec::new();
        if let Some(s) = retry_after {
            h.push(("Retry-After", s.to_string()));
        }
        let r = response(&format!("{status} Injected"), &h, b"injected fault");
        f.count(|n| n.bytes_down += r.len() as u64);
        return send(&c, &r);
    }
    let blob = is_blob_get(&req);
    if blob && req.header("range").is_some() && take(&f.whole_n) {
        f.count(|n| n.whole_for_range += 1);
        req.remove("range");
    }
    let mut resp = forward(&mut req, upstream);
    let status = status_of(&resp);
    let body = body_start(&resp).filter(|&b| b < resp.len());
    if let (true, 206, Some(b)) = (blob, status, body) {
        if take(&f.corrupt_n) {
            f.count(|n| n.corrupted += 1);
            let mid = b + (resp.len() - b) / 2;
            resp[mid] ^= 0x5a;
        }
    }
    if let (true, 200 | 206, Some(b)) = (blob, status, body) {
        if take(&f.stall_n) {
            f.count(|n| n.stalled += 1);
            let upto = (b + f.stall_after.load(SeqCst)).min(resp.len() - 1);
            let mut w = &c;
            let _ = w.write_all(&resp[..upto]).and_then(|_| w.flush());
            f.count(|n| n.bytes_down += upto as u64);
            // Until cleared: a "slow registry" that recovers.
            f.hold(Duration::from_secs(120), || f.stall_n.load(SeqCst) > 0);
            let _ = c.shutdown(Shutdown::Both);
            return;
        }
    }
    f.count(|n| n.bytes_down += resp.len() as u64);
    send(&c, &resp);
}

/// Close with SO_LINGER 0, so the peer gets RST rather than a clean EOF.
fn rustix_linger_zero(c: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a properly sized linger struct.
    let r = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A tiny upstream: answers every request with 206 + a fixed body, or
    /// 200 + the whole body when there is no Range header.
    fn upstream(body: &'static [u8]) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        thread::spawn(move || {
            for c in l.incoming().flatten() {
                let Some(req) = read_request(&c) else {
                    continue;
                };
                let r = if req.header("range").is_some() {
                    response(
                        "206 Partial",
                        &[("Content-Range", "bytes 0-9/10".into())],
                        body,
                    )
                } else {
                    response("200 OK", &[], body)
                };
                send(&c, &r);
            }
        });
        port
    }

    fn get(port: u16, path: &str, range: bool) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        let r = if range { "Range: bytes=0-9\r\n" } else { "" };
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n{r}\r\n")?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    }

    const BLOB: &str = "/v2/a/blobs/sha256:00";

    #[test]
    fn faults_switch_at_run_time_and_are_counted() {
        let p = FaultProxy::start(upstream(b"0123456789"));
        let ok = get(p.port, BLOB, true).unwrap();
        assert!(ok.starts_with(b"HTTP/1.1 206") && ok.ends_with(b"0123456789"));

        p.fail_next(2, 429, Some(1));
        for _ in 0..2 {
            let r = get(p.port, BLOB, true).unwrap();
            assert!(r.starts_with(b"HTTP/1.1 429"));
            assert!(String::from_utf8_lossy(&r).contains("Retry-After: 1"));
        }
        assert!(get(p.port, BLOB, true)
            .unwrap()
            .starts_with(b"HTTP/1.1 206"));

        p.corrupt_ranges(1);
        let bad = get(p.port, BLOB, true).unwrap();
        assert!(bad.starts_with(b"HTTP/1.1 206") && !bad.ends_with(b"0123456789"));
        assert_eq!(bad.len(), ok.len(), "same length, one byte differs");
        assert!(get(p.port, BLOB, true).unwrap().ends_with(b"0123456789"));

        p.whole_blob(ALWAYS);
        assert!(get(p.port, BLOB, true)
            .unwrap()
            .starts_with(b"HTTP/1.1 200"));
        p.pass();

        p.refuse(true);
        assert!(get(p.port, BLOB, true).map_or(true, |r| r.is_empty()));
        p.refuse(false);

        p.stall_blobs(1, 3);
        let faults = p.faults();
        let t = Instant::now();
        let h = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            faults.stall_blobs(0, 0);
        });
        let stalled = get(p.port, BLOB, true).unwrap();
        h.join().unwrap();
        assert!(t.elapsed() >= Duration::from_millis(250));
        assert!(stalled.ends_with(b"012") && !stalled.ends_with(b"0123"));

        let c = p.counts();
        // Counted as the client asked (a Range answered whole is still a range GET).
        assert_eq!(c.get(Kind::BlobRange), 8);
        assert_eq!(c.get(Kind::BlobWhole), 0);
        assert_eq!(
            (
                c.injected_429,
                c.corrupted,
                c.whole_for_range,
                c.refused,
                c.stalled
            ),
            (2, 1, 1, 1, 1)
        );
        assert!(get(p.port, "/v2/a/manifests/t", false).is_ok());
        assert_eq!(p.counts().get(Kind::Manifest), 1);
        p.reset_counts();
        assert_eq!(p.counts(), Counts::default());
    }

    #[test]
    fn blackhole_holds_until_cleared() {
        let p = FaultProxy::start(upstream(b"0123456789"));
        p.blackhole(true);
        let faults = p.faults();
        let h = thread::spawn(move || {
            thread::sleep(Duration::from_millis(300));
            faults.blackhole(false);
        });
        let r = get(p.port, BLOB, true).unwrap();
        h.join().unwrap();
        assert!(r.is_empty(), "no answer from a blackhole");
        assert_eq!(p.counts().blackholed, 1);
        assert!(get(p.port, BLOB, true)
            .unwrap()
            .starts_with(b"HTTP/1.1 206"));
    }
}
