//! Sending one request to one endpoint: attaches the host's authorization,
//! answers 401 challenges, retries connection errors, 5xx and 429 with
//! bounded exponential backoff (honouring a capped `Retry-After`) and follows
//! redirects itself so that Authorization never leaves its origin.

use crate::error::{Error, Result};
use crate::headers::{parse_retry_after, parse_www_authenticate};
use crate::hosts::EndpointSpec;
use crate::Inner;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, Method, StatusCode};
use std::time::Duration;

const MAX_REDIRECTS: usize = 5;
const MAX_AUTH_ROUNDS: usize = 2;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub(crate) struct Endpoint {
    pub spec: EndpointSpec,
    pub http: reqwest::Client,
}

impl Endpoint {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.spec.base_url())
    }
}

pub(crate) struct Request {
    pub method: Method,
    pub url: String,
    pub headers: HeaderMap,
    pub body: Option<Bytes>,
    /// Token scope, e.g. `repository:a/b:pull`.
    pub scope: String,
    pub follow_redirects: bool,
}

impl Request {
    pub fn new(method: Method, url: String, scope: String) -> Request {
        Request {
            method,
            url,
            headers: HeaderMap::new(),
            body: None,
            scope,
            follow_redirects: true,
        }
    }
    pub fn header(mut self, name: header::HeaderName, value: &str) -> Request {
        if let Ok(v) = header::HeaderValue::from_str(value) {
            self.headers.insert(name, v);
        }
        self
    }
}

fn origin(u: &url::Url) -> (String, String, Option<u16>) {
    (
        u.scheme().to_string(),
        u.host_str().unwrap_or("").to_string(),
        u.port_or_known_default(),
    )
}

fn map_send_error(url: &str, e: reqwest::Error) -> Error {
    Error::unreachable(url, e)
}

/// Sleep before retry `attempt` (0-based): exponential with a little jitter,
/// or the server's Retry-After (capped).
async fn backoff(base: Duration, attempt: u32, retry_after: Option<Duration>) {
    let d = match retry_after {
        Some(d) => d.min(MAX_RETRY_AFTER),
        None => {
            let exp = base
                .saturating_mul(1u32 << attempt.min(10))
                .min(MAX_BACKOFF);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            exp + exp / 4 * (nanos % 1000) / 1000
        }
    };
    tokio::time::sleep(d).await;
}

/// Send `req` to `ep`. Returns the response for any status but these, which
/// become errors: 404 (NotFound), 401/403 (Unauthorized, after answering the
/// challenge), 5xx/429 after the retries are spent (Unreachable).
pub(crate) async fn execute(
    inner: &Inner,
    ep: &Endpoint,
    req: &Request,
) -> Result<reqwest::Response> {
    let mut url = url::Url::parse(&req.url)
        .map_err(|e| Error::Config(format!("bad URL {}: {e}", req.url)))?;
    let home =
        origin(&url::Url::parse(&ep.spec.base_url()).map_err(|e| Error::Config(e.to_string()))?);
    let mut method = req.method.clone();
    let mut attempt: u32 = 0;
    let mut auth_rounds = 0;
    let mut redirects = 0;
    let header_timeout = ep.spec.request_timeout.unwrap_or(inner.cfg.request_timeout);
    loop {
        // Credentials only for the endpoint's own origin, never a redirect target elsewhere.
        let same_origin = origin(&url) == home;
        let mut rb = ep
            .http
            .request(method.clone(), url.clone())
            .headers(req.headers.clone());
        for (k, v) in &ep.spec.headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        let sent_auth = if same_origin {
            inner
                .auth
                .header(&ep.http, &ep.spec.authority, &req.scope)
                .await?
        } else {
            None
        };
        if let Some(a) = &sent_auth {
            rb = rb.header(header::AUTHORIZATION, a.as_str());
        }
        if let Some(b) = &req.body {
            if method != Method::GET && method != Method::HEAD {
                rb = rb.body(b.clone());
            }
        }
        let url_s = url.to_string();
        let resp = match tokio::time::timeout(header_timeout, rb.send()).await {
            Err(_) => Err(Error::unreachable(
                &url_s,
                format!("no response within {header_timeout:?}"),
            )),
            Ok(Err(e)) => Err(map_send_error(&url_s, e)),
            Ok(Ok(r)) => Ok(r),
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                if attempt < inner.cfg.retries {
                    tracing::debug!(error = %e, attempt, "retrying");
                    backoff(inner.cfg.retry_base, attempt, None).await;
                    attempt += 1;
                    continue;
                }
                return Err(e);
            }
        };
        let status = resp.status();
        match status {
            StatusCode::UNAUTHORIZED => {
                let challenges: Vec<_> = resp
                    .headers()
                    .get_all(header::WWW_AUTHENTICATE)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(|v| parse_www_authenticate(v).ok())
                    .flatten()
                    .collect();
                let detail = error_detail(resp).await;
                if same_origin && auth_rounds < MAX_AUTH_ROUNDS {
                    auth_rounds += 1;
                    if inner
                        .auth
                        .challenged(&ep.spec.authority, &req.scope, &challenges)?
                    {
                        continue;
                    }
                }
                return Err(Error::Unauthorized { url: url_s, detail });
            }
            StatusCode::FORBIDDEN => {
                return Err(Error::Unauthorized {
                    url: url_s,
                    detail: error_detail(resp).await,
                });
            }
            StatusCode::NOT_FOUND => return Err(Error::NotFound { url: url_s }),
            s if s.is_redirection() && req.follow_redirects && s != StatusCode::NOT_MODIFIED => {
                let loc = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| Error::invalid(&url_s, format!("{s} without Location")))?;
                let next = url
                    .join(loc)
                    .map_err(|e| Error::invalid(&url_s, format!("bad Location: {e}")))?;
                if !matches!(next.scheme(), "http" | "https") {
                    return Err(Error::invalid(&url_s, "redirect to a non-HTTP URL"));
                }
                redirects += 1;
                if redirects > MAX_REDIRECTS {
                    return Err(Error::invalid(&url_s, "too many redirects"));
                }
                if s == StatusCode::SEE_OTHER {
                    method = Method::GET;
                }
                url = next;
                continue;
            }
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                let retry_after = resp
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(parse_retry_after);
                let detail = error_detail(resp).await;
                if attempt < inner.cfg.retries {
                    tracing::debug!(%status, attempt, "retrying");
                    backoff(inner.cfg.retry_base, attempt, retry_after).await;
                    attempt += 1;
                    continue;
                }
                return Err(Error::Server {
                    url: url_s,
                    status: s.as_u16(),
                    detail,
                });
            }
            _ => return Ok(resp),
        }
    }
}

/// The first bytes of an error body, for messages (registries put JSON there).
pub(crate) async fn error_detail(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = read_limited(resp, 2048, Duration::from_secs(5), "error body").await;
    match body {
        Ok(b) if !b.is_empty() => {
            let s = String::from_utf8_lossy(&b[..b.len().min(512)])
                .trim()
                .to_string();
            format!("{status}: {s}")
        }
        _ => status.to_string(),
    }
}

/// An error for a status the caller did not expect.
pub(crate) async fn unexpected(resp: reqwest::Response) -> Error {
    let url = resp.url().to_string();
    let status = resp.status().as_u16();
    Error::Status {
        url,
        status,
        detail: error_detail(resp).await,
    }
}

/// Read a whole body of at most `limit` bytes (`TooLarge` beyond it). A body
/// that makes no progress for `stall` is abandoned (`Unreachable`); for error
/// bodies, the limit just truncates.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    limit: u64,
    stall: Duration,
    what: &str,
) -> Result<Bytes> {
    let url = resp.url().to_string();
    let truncate = what == "error body";
    if let Some(len) = resp.content_length() {
        if len > limit && !truncate {
            return Err(Error::TooLarge {
                what: format!("{what} at {url}"),
                limit,
            });
        }
    }
    // Content-Length is untrusted, but bounded here by our own limit.
    let mut buf = BytesMut::with_capacity(resp.content_length().unwrap_or(0).min(limit) as usize);
    loop {
        let chunk = tokio::time::timeout(stall, resp.chunk())
            .await
            .map_err(|_| Error::unreachable(&url, format!("body stalled for {stall:?}")))?
            .map_err(|e| Error::unreachable(&url, e))?;
        let Some(chunk) = chunk else { break };
        if buf.len() as u64 + chunk.len() as u64 > limit {
            if truncate {
                let room = limit as usize - buf.len();
                buf.extend_from_slice(&chunk[..room]);
                break;
            }
            return Err(Error::TooLarge {
                what: format!("{what} at {url}"),
                limit,
            });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Try each endpoint in order (mirrors first). Moves on when an endpoint is
/// unreachable, or when a mirror lacks the content or refuses us; the
/// origin's answer is final.
pub(crate) async fn execute_any(
    inner: &Inner,
    eps: &[Endpoint],
    make: impl Fn(&Endpoint) -> Request,
) -> Result<(reqwest::Response, usize)> {
    let mut last = None;
    for (i, ep) in eps.iter().enumerate() {
        match execute(inner, ep, &make(ep)).await {
            Ok(r) => return Ok((r, i)),
            Err(e) => {
                let next = i + 1 < eps.len()
                    && (e.kind() == crate::ErrorKind::Unreachable
                        || (ep.spec.is_mirror
                            && matches!(
                                e.kind(),
                                crate::ErrorKind::NotFound | crate::ErrorKind::Unauthorized
                            )));
                if !next {
                    return Err(e);
                }
                tracing::debug!(endpoint = %ep.spec.authority, error = %e, "trying next endpoint");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Config("no endpoints".into())))
}
