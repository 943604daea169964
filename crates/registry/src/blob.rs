//! Blobs: size (HEAD), small verified fetches, whole-blob verified streams,
//! and `BlobReader` for ranged reads. Ranged reads are validated (206 with an
//! exact Content-Range, or a whole-blob 200 sliced locally) but not
//! digest-checked: the caller verifies each chunk against the eStargz TOC.

use crate::digest::{verify, Digest, Verifier};
use crate::error::{Error, Result};
use crate::headers::{byteranges_boundary, format_ranges, parse_content_range};
use crate::multipart::parse_byteranges;
use crate::transport::{execute_any, read_limited, unexpected, Endpoint, Request};
use crate::{pull_scope, Client, Reference};
use bytes::{Bytes, BytesMut};
use futures::Stream;
use http::{header, Method, StatusCode};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// At most this many ranges in one multi-range request.
const MAX_RANGES_PER_REQUEST: usize = 64;

impl Client {
    /// The size of a blob, from a HEAD request.
    pub async fn blob_size(&self, repo: &Reference, digest: &str) -> Result<u64> {
        Digest::parse(digest)?;
        let eps = self.endpoints(repo.registry())?;
        let _permit = self.permit().await?;
        let path = blob_path(repo, digest);
        let (resp, _) = execute_any(&self.inner, &eps, |ep| {
            Request::new(Method::HEAD, ep.url(&path), pull_scope(repo))
        })
        .await?;
        if !resp.status().is_success() {
            return Err(unexpected(resp).await);
        }
        resp.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Error::invalid(resp.url(), "HEAD without Content-Length"))
    }

    /// A whole small blob (config, TOC …), verified; `TooLarge` past `limit`.
    pub async fn fetch_blob_bytes(
        &self,
        repo: &Reference,
        digest: &str,
        limit: u64,
    ) -> Result<Bytes> {
        Digest::parse(digest)?;
        let eps = self.endpoints(repo.registry())?;
        let _permit = self.permit().await?;
        let path = blob_path(repo, digest);
        let (resp, _) = execute_any(&self.inner, &eps, |ep| {
            Request::new(Method::GET, ep.url(&path), pull_scope(repo))
        })
        .await?;
        if resp.status() != StatusCode::OK {
            return Err(unexpected(resp).await);
        }
        let bytes = read_limited(resp, limit, self.inner.cfg.stall_timeout, "blob").await?;
        verify(digest, &bytes)?;
        Ok(bytes)
    }

    /// Stream a whole blob. The digest is checked at the end: the last item is
    /// an error (`DigestMismatch`) instead of the end of the stream if it did
    /// not match, so a consumer must not trust the data before the stream ends.
    pub async fn fetch_blob_stream(&self, repo: &Reference, digest: &str) -> Result<BlobStream> {
        let verifier = Verifier::new(digest)?;
        let eps = self.endpoints(repo.registry())?;
        let permit = self
            .inner
            .sem
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Config("client closed".into()))?;
        let path = blob_path(repo, digest);
        let (resp, _) = execute_any(&self.inner, &eps, |ep| {
            Request::new(Method::GET, ep.url(&path), pull_scope(repo))
        })
        .await?;
        if resp.status() != StatusCode::OK {
            return Err(unexpected(resp).await);
        }
        let size = resp.content_length();
        let st = StreamState {
            client: self.clone(),
            repo: repo.clone(),
            path,
            resp: Some(resp),
            verifier: Some(verifier),
            seen: 0,
            skip: 0,
            size,
            resumes_left: self.inner.cfg.retries,
            _permit: permit,
        };
        let s = futures::stream::unfold(st, |mut st| async move {
            loop {
                let resp = st.resp.as_mut()?;
                let stall = st.client.inner.cfg.stall_timeout;
                let url = resp.url().to_string();
                let next = match tokio::time::timeout(stall, resp.chunk()).await {
                    Err(_) => Err(Error::unreachable(
                        &url,
                        format!("body stalled for {stall:?}"),
                    )),
                    Ok(Err(e)) => Err(Error::unreachable(&url, e)),
                    Ok(Ok(c)) => Ok(c),
                };
                match next {
                    Err(e) => {
                        st.resp = None;
                        if st.resumes_left > 0 {
                            st.resumes_left -= 1;
                            tracing::debug!(error = %e, at = st.seen, "resuming blob stream");
                            match st.resume().await {
                                Ok(()) => continue,
                                Err(e2) => return Some((Err(e2), st)),
                            }
                        }
                        return Some((Err(e), st));
                    }
                    Ok(Some(mut chunk)) => {
                        // After a resume answered with the whole blob: drop what we already had.
                        if st.skip > 0 {
                            let n = st.skip.min(chunk.len() as u64);
                            st.skip -= n;
                            chunk = chunk.slice(n as usize..);
                            if chunk.is_empty() {
                                continue;
                            }
                        }
                        st.seen += chunk.len() as u64;
                        if let Some(v) = st.verifier.as_mut() {
                            v.update(&chunk);
                        }
                        if st.size.is_some_and(|s| st.seen > s) {
                            st.resp = None;
                            let e = Error::invalid(&url, "body longer than Content-Length");
                            return Some((Err(e), st));
                        }
                        return Some((Ok(chunk), st));
                    }
                    Ok(None) => {
                        st.resp = None;
                        if st.size.is_some_and(|s| st.seen < s) {
                            let e = Error::invalid(&url, "body shorter than Content-Length");
                            return Some((Err(e), st));
                        }
                        let v = st.verifier.take()?;
                        return match v.finish() {
                            Ok(()) => None,
                            Err(e) => Some((Err(e), st)),
                        };
                    }
                }
            }
        });
        Ok(BlobStream {
            size,
            inner: Box::pin(s),
        })
    }

    /// A reader for ranges of one blob. `size` comes from the (verified)
    /// descriptor when known; otherwise a HEAD asks the registry.
    pub async fn blob_reader(
        &self,
        repo: &Reference,
        digest: &str,
        size: Option<u64>,
    ) -> Result<BlobReader> {
        Digest::parse(digest)?;
        let size = match size {
            Some(s) => s,
            None => self.blob_size(repo, digest).await?,
        };
        let eps = self.endpoints(repo.registry())?;
        Ok(BlobReader {
            inner: Arc::new(ReaderInner {
                client: self.clone(),
                repo: repo.repo_only(),
                digest: digest.to_string(),
                size,
                eps,
                first_ep: AtomicUsize::new(0),
            }),
        })
    }

    /// A reader for a blob of unknown size, and the blob's last
    /// `min(tail, size)` bytes, in one request: `Range: bytes=-tail` (a
    /// suffix range) answers with the bytes and, in its Content-Range, the
    /// size. A host that does not answer it so costs a HEAD and a ranged
    /// read, as `blob_reader` with no size would, and never the whole blob.
    pub async fn blob_reader_tail(
        &self,
        repo: &Reference,
        digest: &str,
        tail: u64,
    ) -> Result<(BlobReader, Bytes)> {
        Digest::parse(digest)?;
        let eps = self.endpoints(repo.registry())?;
        let path = blob_path(repo, digest);
        let range = format!("bytes=-{}", tail.max(1));
        let answer = {
            let _permit = self.permit().await?;
            let (resp, used) = execute_any(&self.inner, &eps, |ep| {
                Request::new(Method::GET, ep.url(&path), pull_scope(repo))
                    .header(header::RANGE, &range)
            })
            .await?;
            let authority = eps[used].spec.authority.clone();
            (
                suffix_answer(resp, tail, self.inner.cfg.stall_timeout).await?,
                used,
                authority,
            )
        };
        let reader = |size, first_ep| BlobReader {
            inner: Arc::new(ReaderInner {
                client: self.clone(),
                repo: repo.repo_only(),
                digest: digest.to_string(),
                size,
                eps: eps.clone(),
                first_ep: AtomicUsize::new(first_ep),
            }),
        };
        match answer {
            (Some((size, bytes)), used, _) => Ok((reader(size, used), bytes)),
            (None, _, authority) => {
                tracing::debug!(host = %authority, "suffix range not honoured; asking the size");
                let r = self.blob_reader(repo, digest, None).await?;
                let n = tail.min(r.size());
                let bytes = r.read_at(r.size() - n, n).await?;
                Ok((r, bytes))
            }
        }
    }

    pub(crate) async fn permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.inner
            .sem
            .acquire()
            .await
            .map_err(|_| Error::Config("client closed".into()))
    }
}

fn blob_path(repo: &Reference, digest: &str) -> String {
    format!("/v2/{}/blobs/{digest}", repo.repository())
}

struct StreamState {
    client: Client,
    repo: Reference,
    path: String,
    resp: Option<reqwest::Response>,
    verifier: Option<Verifier>,
    seen: u64,
    /// Bytes still to drop from a whole-blob answer to a resume.
    skip: u64,
    size: Option<u64>,
    resumes_left: u32,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl StreamState {
    /// Ask for the rest of the blob after a broken body (`Range: bytes=seen-`).
    async fn resume(&mut self) -> Result<()> {
        let eps = self.client.endpoints(self.repo.registry())?;
        let range = format!("bytes={}-", self.seen);
        let (resp, _) = execute_any(&self.client.inner, &eps, |ep| {
            Request::new(Method::GET, ep.url(&self.path), pull_scope(&self.repo))
                .header(header::RANGE, &range)
        })
        .await?;
        let url = resp.url().to_string();
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let cr = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_content_range(v).ok())
                    .and_then(|c| c.range)
                    .ok_or_else(|| Error::invalid(&url, "206 without a usable Content-Range"))?;
                if cr.0 != self.seen {
                    return Err(Error::invalid(&url, "resumed at the wrong offset"));
                }
                self.skip = 0;
            }
            StatusCode::OK => self.skip = self.seen,
            _ => return Err(unexpected(resp).await),
        }
        self.resp = Some(resp);
        Ok(())
    }
}

/// A whole blob as a stream of chunks; see [`Client::fetch_blob_stream`].
pub struct BlobStream {
    size: Option<u64>,
    inner: Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>,
}

impl BlobStream {
    /// The Content-Length the registry announced.
    pub fn size(&self) -> Option<u64> {
        self.size
    }
}

impl Stream for BlobStream {
    type Item = Result<Bytes>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Ranged reads of one blob. Cheap to clone; shares the client.
#[derive(Clone)]
pub struct BlobReader {
    inner: Arc<ReaderInner>,
}

struct ReaderInner {
    client: Client,
    repo: Reference,
    digest: String,
    size: u64,
    eps: Arc<Vec<Endpoint>>,
    /// Skip endpoints (mirrors) that already failed for this blob.
    first_ep: AtomicUsize,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BlobReader({}@{}, {} bytes)",
            self.inner.repo, self.inner.digest, self.inner.size
        )
    }
}

/// One piece of a response: blob bytes `first..=last`.
struct Piece {
    first: u64,
    last: u64,
    data: Bytes,
}

impl BlobReader {
    pub fn size(&self) -> u64 {
        self.inner.size
    }
    pub fn digest(&self) -> &str {
        &self.inner.digest
    }
    pub fn reference(&self) -> &Reference {
        &self.inner.repo
    }

    fn check(&self, off: u64, len: u64) -> Result<()> {
        if off.checked_add(len).is_none_or(|end| end > self.inner.size) {
            return Err(Error::Config(format!(
                "read {off}+{len} past the end of {} ({} bytes)",
                self.inner.digest, self.inner.size
            )));
        }
        Ok(())
    }

    /// Bytes `off..off+len` of the blob.
    pub async fn read_at(&self, off: u64, len: u64) -> Result<Bytes> {
        self.check(off, len)?;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let pieces = self.fetch(&[(off, len)]).await?;
        take(&pieces, off, len).ok_or_else(|| self.invalid("response did not cover the range"))
    }

    /// Several ranges at once (one multi-range request where the host allows
    /// it, single ranges otherwise); results in the order asked.
    pub async fn read_ranges(&self, ranges: &[(u64, u64)]) -> Result<Vec<Bytes>> {
        for &(o, l) in ranges {
            self.check(o, l)?;
        }
        let mut want: Vec<(u64, u64)> = ranges.iter().copied().filter(|r| r.1 > 0).collect();
        want.sort_unstable();
        // Merge overlapping and adjacent ranges: servers may refuse overlaps.
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (o, l) in want {
            match merged.last_mut() {
                Some((mo, ml)) if o <= *mo + *ml => *ml = (*ml).max(o + l - *mo),
                _ => merged.push((o, l)),
            }
        }
        let mut pieces = Vec::new();
        if merged.len() <= 1 || self.inner.client.caps(self.authority()).no_multi_range {
            pieces = self.fetch_singles(&merged).await?;
        } else {
            for batch in merged.chunks(MAX_RANGES_PER_REQUEST) {
                pieces.extend(self.fetch(batch).await?);
            }
            // A server may answer fewer ranges than asked: get the rest singly.
            let missing: Vec<_> = merged
                .iter()
                .copied()
                .filter(|&(o, l)| take(&pieces, o, l).is_none())
                .collect();
            if !missing.is_empty() {
                tracing::debug!(
                    host = self.authority(),
                    n = missing.len(),
                    "multi-range answer incomplete"
                );
                self.inner
                    .client
                    .set_caps(self.authority(), |c| c.no_multi_range = true);
                pieces.extend(self.fetch_singles(&missing).await?);
            }
        }
        ranges
            .iter()
            .map(|&(o, l)| {
                if l == 0 {
                    Ok(Bytes::new())
                } else {
                    take(&pieces, o, l)
                        .ok_or_else(|| self.invalid("response did not cover a range"))
                }
            })
            .collect()
    }

    fn authority(&self) -> &str {
        let i = self
            .inner
            .first_ep
            .load(Ordering::Relaxed)
            .min(self.inner.eps.len() - 1);
        &self.inner.eps[i].spec.authority
    }

    fn invalid(&self, what: &str) -> Error {
        Error::invalid(format!("{}@{}", self.inner.repo, self.inner.digest), what)
    }

    async fn fetch_singles(&self, ranges: &[(u64, u64)]) -> Result<Vec<Piece>> {
        let futs = ranges.iter().map(|r| self.fetch(std::slice::from_ref(r)));
        let all = futures::future::try_join_all(futs).await?;
        Ok(all.into_iter().flatten().collect())
    }

    /// One request for `ranges` (sorted, disjoint, non-empty). Returns what
    /// the server sent, validated; a refused multi-range request is retried
    /// as single ranges and remembered per host.
    async fn fetch(&self, ranges: &[(u64, u64)]) -> Result<Vec<Piece>> {
        let inner = &self.inner;
        let client = &inner.client;
        let first = inner
            .first_ep
            .load(Ordering::Relaxed)
            .min(inner.eps.len() - 1);
        let eps = &inner.eps[first..];
        let path = blob_path(&inner.repo, &inner.digest);
        let range_header = format_ranges(ranges);
        let started = std::time::Instant::now();
        let (resp, used) = {
            let _permit = client.permit().await?;
            let (resp, used) = execute_any(&client.inner, eps, |ep| {
                Request::new(Method::GET, ep.url(&path), pull_scope(&inner.repo))
                    .header(header::RANGE, &range_header)
            })
            .await?;
            if used > 0 {
                inner.first_ep.store(first + used, Ordering::Relaxed);
            }
            let authority = eps[used].spec.authority.clone();
            (self.collect(resp, ranges, &authority).await, authority)
        };
        // One line per registry request: the bench's request timelines.
        tracing::debug!(
            digest = %inner.digest,
            ranges = %range_header,
            ms = started.elapsed().as_millis() as u64,
            "ranged GET"
        );
        match resp {
            Ok(Some(p)) => Ok(p),
            Ok(None) if ranges.len() > 1 => {
                tracing::info!(host = %used, "multi-range refused; using single ranges for this host");
                client.set_caps(&used, |c| c.no_multi_range = true);
                Box::pin(self.fetch_singles(ranges)).await
            }
            Ok(None) => Err(self.invalid("range refused")),
            Err(e) => Err(e),
        }
    }

    /// Read a response to a Range request. `Ok(None)`: the server refused
    /// the ranges (416 …) or sent a multipart body we cannot use.
    async fn collect(
        &self,
        resp: reqwest::Response,
        ranges: &[(u64, u64)],
        authority: &str,
    ) -> Result<Option<Vec<Piece>>> {
        let size = self.inner.size;
        let stall = self.inner.client.inner.cfg.stall_timeout;
        let status = resp.status();
        let url = resp.url().to_string();
        match status {
            StatusCode::PARTIAL_CONTENT => {}
            StatusCode::OK => {
                if resp.content_length().is_some_and(|l| l != size) {
                    return Err(Error::invalid(
                        &url,
                        format!("whole blob is not {size} bytes"),
                    ));
                }
                self.inner
                    .client
                    .set_caps(authority, |c| c.ignores_range = true);
                tracing::debug!(host = authority, "Range ignored; slicing the whole blob");
                return slice_whole(resp, ranges, stall, size).await.map(Some);
            }
            StatusCode::RANGE_NOT_SATISFIABLE
            | StatusCode::BAD_REQUEST
            | StatusCode::NOT_IMPLEMENTED
                if ranges.len() > 1 =>
            {
                return Ok(None);
            }
            _ => return Err(unexpected(resp).await),
        }
        let ct = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let cr = resp
            .headers()
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let wanted: u64 = ranges.iter().map(|r| r.1).sum();
        if let Some(boundary) = byteranges_boundary(&ct) {
            let limit = wanted + 4096 + 512 * ranges.len() as u64;
            let body = read_limited(resp, limit, stall, "multipart body").await?;
            let parts = match parse_byteranges(&body, &boundary) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "unusable multipart/byteranges answer");
                    return Ok(None);
                }
            };
            let mut out = Vec::with_capacity(parts.len());
            for p in parts {
                if p.last >= size {
                    return Err(Error::invalid(
                        &url,
                        "multipart part past the end of the blob",
                    ));
                }
                out.push(Piece {
                    first: p.first,
                    last: p.last,
                    data: body.slice(p.data),
                });
            }
            return Ok(Some(out));
        }
        let cr = cr.ok_or_else(|| Error::invalid(&url, "206 without Content-Range"))?;
        let cr = parse_content_range(&cr).map_err(|e| Error::invalid(&url, e))?;
        let (a, b) = cr
            .range
            .ok_or_else(|| Error::invalid(&url, "206 without a range"))?;
        if cr.total.is_some_and(|t| t != size) {
            return Err(Error::invalid(
                &url,
                format!("blob is {:?} bytes, expected {size}", cr.total),
            ));
        }
        // A single-range answer must be exactly what we asked, or (to a
        // multi-range request) cover some of it.
        if ranges.len() == 1 && (a, b) != (ranges[0].0, ranges[0].0 + ranges[0].1 - 1) {
            return Err(Error::invalid(
                &url,
                format!("Content-Range {a}-{b} does not match the request"),
            ));
        }
        if b >= size {
            return Err(Error::invalid(
                &url,
                "Content-Range past the end of the blob",
            ));
        }
        let body = read_limited(resp, b - a + 1, stall, "range").await?;
        if body.len() as u64 != b - a + 1 {
            return Err(Error::invalid(&url, "body shorter than its Content-Range"));
        }
        Ok(Some(vec![Piece {
            first: a,
            last: b,
            data: body,
        }]))
    }
}

/// The answer to `Range: bytes=-tail`: `Some((blob size, last bytes))`, or
/// `None` when the host did not serve the suffix (a 416, or a whole blob
/// larger than `tail`: its body is not read).
async fn suffix_answer(
    resp: reqwest::Response,
    tail: u64,
    stall: std::time::Duration,
) -> Result<Option<(u64, Bytes)>> {
    let url = resp.url().to_string();
    match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            let cr = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| Error::invalid(&url, "206 without Content-Range"))?;
            let cr = parse_content_range(cr).map_err(|e| Error::invalid(&url, e))?;
            let (Some((a, b)), Some(size)) = (cr.range, cr.total) else {
                return Err(Error::invalid(&url, "suffix answer without range and size"));
            };
            // Exactly the last min(tail, size) bytes, nothing else.
            if b.checked_add(1) != Some(size) || size - a != tail.min(size) {
                return Err(Error::invalid(
                    &url,
                    format!("Content-Range {a}-{b}/{size} is not the last {tail} bytes"),
                ));
            }
            let body = read_limited(resp, b - a + 1, stall, "range").await?;
            if body.len() as u64 != b - a + 1 {
                return Err(Error::invalid(&url, "body shorter than its Content-Range"));
            }
            Ok(Some((size, body)))
        }
        StatusCode::OK => match resp.content_length() {
            Some(len) if len <= tail => {
                let body = read_limited(resp, len, stall, "blob").await?;
                if body.len() as u64 != len {
                    return Err(Error::invalid(&url, "body shorter than Content-Length"));
                }
                Ok(Some((len, body)))
            }
            _ => Ok(None),
        },
        StatusCode::RANGE_NOT_SATISFIABLE => Ok(None),
        _ => Err(unexpected(resp).await),
    }
}

/// The bytes `off..off+len` if one piece holds them.
fn take(pieces: &[Piece], off: u64, len: u64) -> Option<Bytes> {
    let last = off + len - 1;
    pieces
        .iter()
        .find(|p| p.first <= off && last <= p.last)
        .map(|p| {
            let s = (off - p.first) as usize;
            p.data.slice(s..s + len as usize)
        })
}

/// A 200 answer to a Range request: stream the whole blob, keep only the
/// ranges (sorted, disjoint), and stop reading after the last one.
async fn slice_whole(
    mut resp: reqwest::Response,
    ranges: &[(u64, u64)],
    stall: std::time::Duration,
    size: u64,
) -> Result<Vec<Piece>> {
    let url = resp.url().to_string();
    let mut out = Vec::with_capacity(ranges.len());
    let mut pos: u64 = 0;
    let mut idx = 0;
    let mut cur = BytesMut::new();
    while idx < ranges.len() {
        let chunk = tokio::time::timeout(stall, resp.chunk())
            .await
            .map_err(|_| Error::unreachable(&url, "body stalled"))?
            .map_err(|e| Error::unreachable(&url, e))?
            .ok_or_else(|| Error::invalid(&url, "whole-blob answer ended early"))?;
        let (cstart, cend) = (pos, pos + chunk.len() as u64);
        if cend > size {
            return Err(Error::invalid(
                &url,
                "whole-blob answer longer than the blob",
            ));
        }
        pos = cend;
        while idx < ranges.len() {
            let (o, l) = ranges[idx];
            let (s, e) = (o.max(cstart), (o + l).min(cend));
            if s < e {
                cur.extend_from_slice(&chunk[(s - cstart) as usize..(e - cstart) as usize]);
            }
            if o + l <= cend {
                out.push(Piece {
                    first: o,
                    last: o + l - 1,
                    data: std::mem::take(&mut cur).freeze(),
                });
                idx += 1;
            } else {
                break;
            }
        }
    }
    Ok(out)
}
