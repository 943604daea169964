//! Misbehaving fronts for a real registry, and a token server, on 127.0.0.1.
//!
//! - [`Front`]: an HTTP/1.1 proxy (one request per connection) that records
//!   what it saw (method, path, Authorization, Range) and can redirect blob
//!   GETs to another port, ignore Range, refuse multi-range, corrupt blob
//!   bodies or fail the first requests with 503.
//! - [`TokenServer`]: the `realm` of a registry's token auth. It parses the
//!   request (query, form body, Basic credentials) and asks the test's
//!   callback for a token, so the JWT signing lives in the test.
//!
//! Plain threads, no async runtime; both stop when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What to do with a multi-range request (`Range: bytes=a-b,c-d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MultiRange {
    /// Pass it to the registry.
    #[default]
    Pass,
    /// Answer 416 Range Not Satisfiable.
    Reject,
    /// Drop the Range header: the registry answers 200 with the whole blob.
    Whole,
}

#[derive(Debug, Clone, Default)]
pub struct FrontOptions {
    /// Drop every Range header (200 + whole blob).
    pub ignore_range: bool,
    pub multi_range: MultiRange,
    /// Answer blob GETs with `307 Location: http://127.0.0.1:<port><path>`.
    pub redirect_blobs_to: Option<u16>,
    /// Flip one byte in every blob body.
    pub corrupt_blobs: bool,
    /// Answer the first N requests with 503 (`Retry-After: 0`).
    pub fail_first: usize,
    /// Answer the first N requests with 429 (`Retry-After: 1`).
    pub throttle_first: usize,
    /// Send half of each blob answer, then nothing for this long.
    pub stall_blobs: Option<Duration>,
    /// Like `stall_blobs`, but only for whole-blob GETs (no Range header).
    pub stall_whole_blobs: Option<Duration>,
    /// Rewrite a 206's `Content-Range: bytes a-b/t` to `bytes a+1-b+1/t`.
    pub shift_content_range: bool,
}

/// One request as the front saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
    pub status: u16,
}

pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) target: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub(crate) fn remove(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }
}

pub(crate) fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut r = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut it = line.split_whitespace();
    let (method, target) = (it.next()?.to_string(), it.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut req = Request {
        method,
        target,
        headers,
        body: Vec::new(),
    };
    let len: usize = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    req.body.resize(len, 0);
    r.read_exact(&mut req.body).ok()?;
    Some(req)
}

pub(crate) fn response(status: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

pub(crate) fn send(mut s: &TcpStream, bytes: &[u8]) {
    let _ = s.write_all(bytes);
    let _ = s.flush();
    let _ = s.shutdown(Shutdown::Both);
}

fn respond(s: &TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    send(s, &response(status, headers, body));
}

pub(crate) fn status_of(resp: &[u8]) -> u16 {
    std::str::from_utf8(&resp[..resp.len().min(32)])
        .ok()
        .and_then(|s| s.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Accept loop shared by both servers: one thread per connection.
pub(crate) fn serve(
    handler: Arc<dyn Fn(TcpStream) + Send + Sync>,
) -> (u16, Arc<AtomicBool>, thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let t = thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((c, _)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
                    let h = handler.clone();
                    thread::spawn(move || h(c));
                }
                Err(_) => thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    (port, stop, t)
}

pub struct Front {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Front {
    pub fn start(upstream: u16, opts: FrontOptions) -> Front {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let log = seen.clone();
        let handler = Arc::new(move |c: TcpStream| {
            if let Some(req) = read_request(&c) {
                let resp = handle_front(req.clone_shallow(), upstream, &opts, &failed);
                // Log before answering, so a test that got the answer sees the entry.
                log.lock().unwrap().push(Seen {
                    method: req.method.clone(),
                    path: req.target.clone(),
                    authorization: req.header("authorization").map(str::to_string),
                    range: req.header("range").map(str::to_string),
                    status: status_of(&resp),
                });
                let whole = req.header("range").is_none();
                let stall = opts
                    .stall_blobs
                    .or(opts.stall_whole_blobs.filter(|_| whole));
                match stall {
                    Some(pause) if is_blob_get(&req) && resp.len() > 1 => {
                        let mut w = &c;
                        let _ = w.write_all(&resp[..resp.len() / 2]);
                        let _ = w.flush();
                        thread::sleep(pause);
                        let _ = c.shutdown(Shutdown::Both);
                    }
                    _ => send(&c, &resp),
                }
            }
        });
        let (port, stop, t) = serve(handler);
        Front {
            port,
            seen,
            stop,
            thread: Some(t),
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Request {
    fn clone_shallow(&self) -> Request {
        Request {
            method: self.method.clone(),
            target: self.target.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
        }
    }
}

pub(crate) fn is_blob_get(req: &Request) -> bool {
    req.method == "GET" && req.target.contains("/blobs/sha256:")
}

fn handle_front(
    mut req: Request,
    upstream: u16,
    o: &FrontOptions,
    failed: &AtomicUsize,
) -> Vec<u8> {
    let n = failed.fetch_add(1, Ordering::SeqCst);
    if n < o.fail_first {
        return response(
            "503 Service Unavailable",
            &[("Retry-After", "0".into())],
            b"try later",
        );
    }
    if n < o.throttle_first {
        return response(
            "429 Too Many Requests",
            &[("Retry-After", "1".into())],
            b"slow down",
        );
    }
    if let (Some(port), true) = (o.redirect_blobs_to, is_blob_get(&req)) {
        let loc = format!("http://127.0.0.1:{port}{}", req.target);
        return response("307 Temporary Redirect", &[("Location", loc)], b"");
    }
    let multi = req.header("range").is_some_and(|r| r.contains(','));
    if multi && o.multi_range == MultiRange::Reject {
        return response("416 Range Not Satisfiable", &[], b"");
    }
    if o.ignore_range || (multi && o.multi_range == MultiRange::Whole) {
        req.remove("range");
    }
    let mut resp = forward(&mut req, upstream);
    let status = status_of(&resp);
    if o.shift_content_range && status == 206 {
        resp = shift_range(resp);
    }
    if o.corrupt_blobs
        && is_blob_get(&req)
        && (status == 200 || status == 206)
        && body_start(&resp).is_some_and(|b| b < resp.len())
    {
        let last = resp.len() - 1;
        resp[last] ^= 0xff;
    }
    resp
}

/// Send `req` to the upstream on 127.0.0.1 (one request, `Connection:
/// close`) and return its whole answer; 502 when the upstream is down.
pub(crate) fn forward(req: &mut Request, upstream: u16) -> Vec<u8> {
    req.remove("connection");
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return response("502 Bad Gateway", &[], b"");
    };
    let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.target);
    for (k, v) in &req.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    if up
        .write_all(head.as_bytes())
        .and_then(|_| up.write_all(&req.body))
        .is_err()
    {
        return response("502 Bad Gateway", &[], b"");
    }
    let mut resp = Vec::new();
    let _ = up.read_to_end(&mut resp);
    resp
}

/// Where the body of a raw HTTP answer starts.
pub(crate) fn body_start(resp: &[u8]) -> Option<usize> {
    resp.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
}

fn shift_range(resp: Vec<u8>) -> Vec<u8> {
    let Some(end) = resp.windows(4).position(|w| w == b"\r\n\r\n") else {
        return resp;
    };
    let head = String::from_utf8_lossy(&resp[..end]).to_string();
    let head: Vec<String> = head
        .split("\r\n")
        .map(|l| {
            let Some(v) = l.strip_prefix("Content-Range: bytes ") else {
                return l.to_string();
            };
            let parse = || -> Option<String> {
                let (r, t) = v.split_once('/')?;
                let (a, b) = r.split_once('-')?;
                Some(format!(
                    "Content-Range: bytes {}-{}/{t}",
                    a.parse::<u64>().ok()? + 1,
                    b.parse::<u64>().ok()? + 1
                ))
            };
            parse().unwrap_or_else(|| l.to_string())
        })
        .collect();
    let mut out = head.join("\r\n").into_bytes();
    out.extend_from_slice(&resp[end..]);
    out
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A token request as the token server saw it.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    pub method: String,
    /// Query and form parameters, in order (`scope` may repeat).
    pub params: Vec<(String, String)>,
    /// Decoded Basic credentials, if any.
    pub basic: Option<(String, String)>,
    /// The raw Authorization header, if any.
    pub authorization: Option<String>,
}

impl TokenRequest {
    pub fn param(&self, k: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }
    pub fn scopes(&self) -> Vec<String> {
        self.params
            .iter()
            .filter(|(n, _)| n == "scope")
            .map(|(_, v)| v.clone())
            .collect()
    }
}

/// The callback's answer: a token and its `expires_in`, or an HTTP status.
pub type Issuer = dyn Fn(&TokenRequest) -> Result<(String, u64), u16> + Send + Sync;

pub struct TokenServer {
    pub port: u16,
    seen: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl TokenServer {
    pub fn start(issuer: Arc<Issuer>) -> TokenServer {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let handler = Arc::new(move |c: TcpStream| {
            let Some(req) = read_request(&c) else { return };
            let mut tr = TokenRequest {
                method: req.method.clone(),
                ..Default::default()
            };
            if let Some((_, q)) = req.target.split_once('?') {
                tr.params.extend(parse_form(q));
            }
            if req
                .header("content-type")
                .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"))
            {
                tr.params
                    .extend(parse_form(&String::from_utf8_lossy(&req.body)));
            }
            tr.authorization = req.header("authorization").map(str::to_string);
            tr.basic = tr.authorization.as_deref().and_then(decode_basic);
            log.lock().unwrap().push(tr.clone());
            match issuer(&tr) {
                Ok((token, expires_in)) => {
                    let body = serde_json::json!({"token": token, "access_token": token, "expires_in": expires_in});
                    respond(
                        &c,
                        "200 OK",
                        &[("Content-Type", "application/json".into())],
                        body.to_string().as_bytes(),
                    );
                }
                Err(code) => respond(&c, &format!("{code} Denied"), &[], b"{}"),
            }
        });
        let (port, stop, t) = serve(handler);
        TokenServer {
            port,
            seen,
            stop,
            thread: Some(t),
        }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    pub fn seen(&self) -> Vec<TokenRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn decode_basic(v: &str) -> Option<(String, String)> {
    let b64 = v.strip_prefix("Basic ")?;
    let raw = base64_decode(b64.trim())?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Standard base64 (with padding), enough for Basic credentials.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::new();
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    Some(out)
}

/// A token-signing key as docker-registry's token auth trusts it: an EC
/// key whose self-signed certificate is the registry's `rootcertbundle`,
/// and tokens that carry that certificate in `x5c`.
pub struct TokenKey {
    /// PEM file for `RegistryOptions::token`'s rootcertbundle.
    pub bundle: std::path::PathBuf,
    x5c: String,
    enc: jsonwebtoken::EncodingKey,
}

impl TokenKey {
    /// Writes the bundle as `dir/token-bundle.pem`.
    pub fn create(dir: &std::path::Path) -> TokenKey {
        use base64::Engine;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["token-issuer".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let bundle = dir.join("token-bundle.pem");
        std::fs::write(&bundle, cert.pem()).unwrap();
        TokenKey {
            bundle,
            x5c: base64::engine::general_purpose::STANDARD.encode(cert.der()),
            enc: jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        }
    }

    /// A signed token with these claims; Err(500) if signing fails, as a
    /// token server would answer.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, u16> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.x5c = Some(vec![self.x5c.clone()]);
        jsonwebtoken::encode(&header, claims, &self.enc).map_err(|_| 500u16)
    }
}
