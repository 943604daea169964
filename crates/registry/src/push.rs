//! Pushing blobs (skip when present, cross-repository mount, monolithic or
//! chunked upload) and manifests. Pushes go to the origin only, never to a
//! mirror.

use crate::digest::{verify, Digest, Verifier};
use crate::error::{Error, Result};
use crate::transport::{execute, unexpected, Endpoint, Request};
use crate::{push_scope, Client, Reference};
use bytes::Bytes;
use http::{header, Method, StatusCode};

#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Repositories of the same registry that may hold the blob already:
    /// the registry is asked to mount it from them instead of an upload.
    pub mount_from: Vec<String>,
    /// Upload in PATCH chunks of this many bytes; `None` uploads in one PUT.
    pub chunk_size: Option<usize>,
}

/// How an upload begins: at an upload URL, or already finished (the blob
/// was there or was mounted from another repository).
#[derive(Debug, Clone, PartialEq, Eq)]
enum UploadStart {
    Location(String),
    Done(BlobPush),
}

/// What `push_blob` had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobPush {
    AlreadyThere,
    Mounted,
    Uploaded,
}

impl Client {
    fn origin(&self, repo: &Reference) -> Result<Endpoint> {
        let eps = self.endpoints(repo.registry())?;
        eps.last()
            .cloned()
            .ok_or_else(|| Error::Config("no endpoint".into()))
    }

    pub async fn push_blob(&self, repo: &Reference, digest: &str, data: Bytes) -> Result<BlobPush> {
        self.push_blob_with(repo, digest, data, &PushOptions::default())
            .await
    }

    pub async fn push_blob_with(
        &self,
        repo: &Reference,
        digest: &str,
        data: Bytes,
        opts: &PushOptions,
    ) -> Result<BlobPush> {
        // Never upload bytes under a digest they do not have.
        verify(digest, &data)?;
        let ep = self.origin(repo)?;
        let scope = push_scope(repo);
        let _permit = self.permit().await?;
        let mut location = match self.begin_upload(&ep, repo, digest, opts).await? {
            UploadStart::Location(l) => l,
            UploadStart::Done(done) => return Ok(done),
        };
        if let Some(chunk) = opts.chunk_size.filter(|&c| c > 0 && c < data.len()) {
            let mut off = 0;
            while off < data.len() {
                let end = (off + chunk).min(data.len());
                location = self
                    .patch(&ep, &location, off as u64, data.slice(off..end), &scope)
                    .await?;
                off = end;
            }
            self.finish_upload(&ep, &location, digest, Bytes::new(), &scope)
                .await?;
        } else {
            self.finish_upload(&ep, &location, digest, data, &scope)
                .await?;
        }
        Ok(BlobPush::Uploaded)
    }

    /// Push a blob from a file without holding it in memory: PATCH chunks
    /// of `opts.chunk_size` (default 16 MiB), digest checked before the
    /// upload is committed.
    pub async fn push_blob_file(
        &self,
        repo: &Reference,
        digest: &str,
        path: &std::path::Path,
        opts: &PushOptions,
    ) -> Result<BlobPush> {
        use tokio::io::AsyncReadExt;
        let mut verifier = Verifier::new(digest)?;
        let io = |e: std::io::Error| Error::Io {
            path: path.display().to_string(),
            source: e,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(io)?;
        let ep = self.origin(repo)?;
        let scope = push_scope(repo);
        let _permit = self.permit().await?;
        let mut location = match self.begin_upload(&ep, repo, digest, opts).await? {
            UploadStart::Location(l) => l,
            UploadStart::Done(done) => return Ok(done),
        };
        let chunk = opts.chunk_size.filter(|&c| c > 0).unwrap_or(16 << 20);
        let mut off = 0u64;
        loop {
            let mut buf = Vec::with_capacity(chunk);
            while buf.len() < chunk {
                let n = (&mut file)
                    .take((chunk - buf.len()) as u64)
                    .read_to_end(&mut buf)
                    .await
                    .map_err(io)?;
                if n == 0 {
                    break;
                }
            }
            if buf.is_empty() {
                break;
            }
            verifier.update(&buf);
            let n = buf.len() as u64;
            location = self
                .patch(&ep, &location, off, Bytes::from(buf), &scope)
                .await?;
            off += n;
        }
        verifier.finish()?;
        self.finish_upload(&ep, &location, digest, Bytes::new(), &scope)
            .await?;
        Ok(BlobPush::Uploaded)
    }

    /// HEAD, then a mount attempt per `mount_from`, then a new upload.
    /// `UploadStart::Done` when nothing is left to upload.
    async fn begin_upload(
        &self,
        ep: &Endpoint,
        repo: &Reference,
        digest: &str,
        opts: &PushOptions,
    ) -> Result<UploadStart> {
        let scope = push_scope(repo);
        let blob = ep.url(&format!("/v2/{}/blobs/{digest}", repo.repository()));
        match execute(
            &self.inner,
            ep,
            &Request::new(Method::HEAD, blob, scope.clone()),
        )
        .await
        {
            Ok(r) if r.status().is_success() => {
                return Ok(UploadStart::Done(BlobPush::AlreadyThere))
            }
            Ok(_) | Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let uploads = ep.url(&format!("/v2/{}/blobs/uploads/", repo.repository()));
        for from in &opts.mount_from {
            if from == repo.repository() {
                continue;
            }
            let mut url = url::Url::parse(&uploads).map_err(|e| Error::Config(e.to_string()))?;
            url.query_pairs_mut()
                .append_pair("mount", digest)
                .append_pair("from", from);
            let mut req = Request::new(
                Method::POST,
                url.to_string(),
                format!("{scope} repository:{from}:pull"),
            );
            req.body = Some(Bytes::new());
            let resp = match execute(&self.inner, ep, &req).await {
                Ok(r) => r,
                // No access to the source repository: just upload.
                Err(e)
                    if matches!(
                        e.kind(),
                        crate::ErrorKind::Unauthorized | crate::ErrorKind::NotFound
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            return match resp.status() {
                StatusCode::CREATED => Ok(UploadStart::Done(BlobPush::Mounted)),
                // Not mountable: the registry started an upload instead.
                StatusCode::ACCEPTED => Ok(UploadStart::Location(upload_location(&resp)?)),
                _ => Err(unexpected(resp).await),
            };
        }
        let mut req = Request::new(Method::POST, uploads, scope);
        req.body = Some(Bytes::new());
        let resp = execute(&self.inner, ep, &req).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(unexpected(resp).await);
        }
        Ok(UploadStart::Location(upload_location(&resp)?))
    }

    /// Upload `data` at `off`; returns the next upload location.
    async fn patch(
        &self,
        ep: &Endpoint,
        location: &str,
        off: u64,
        data: Bytes,
        scope: &str,
    ) -> Result<String> {
        let end = off + data.len() as u64;
        let mut req = Request::new(Method::PATCH, location.to_string(), scope.to_string())
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_RANGE, &format!("{}-{}", off, end - 1));
        req.body = Some(data);
        req.follow_redirects = false;
        let resp = execute(&self.inner, ep, &req).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(unexpected(resp).await);
        }
        upload_location(&resp)
    }

    async fn finish_upload(
        &self,
        ep: &Endpoint,
        location: &str,
        digest: &str,
        body: Bytes,
        scope: &str,
    ) -> Result<()> {
        let mut url = url::Url::parse(location).map_err(|e| Error::invalid(location, e))?;
        url.query_pairs_mut().append_pair("digest", digest);
        let mut req = Request::new(Method::PUT, url.to_string(), scope.to_string())
            .header(header::CONTENT_TYPE, "application/octet-stream");
        req.body = Some(body);
        req.follow_redirects = false;
        let resp = execute(&self.inner, ep, &req).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(unexpected(resp).await);
        }
        Ok(())
    }

    /// Push a manifest or index under `r`'s tag (or digest). Returns its digest.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<String> {
        let digest = Digest::sha256_of(&bytes);
        if let Some(d) = r.digest() {
            verify(d, &bytes)?;
        }
        let ep = self.origin(r)?;
        let _permit = self.permit().await?;
        let url = ep.url(&format!(
            "/v2/{}/manifests/{}",
            r.repository(),
            r.manifest_ref()
        ));
        let mut req =
            Request::new(Method::PUT, url, push_scope(r)).header(header::CONTENT_TYPE, media_type);
        req.body = Some(bytes);
        req.follow_redirects = false;
        let resp = execute(&self.inner, &ep, &req).await?;
        if resp.status() != StatusCode::CREATED && resp.status() != StatusCode::OK {
            return Err(unexpected(resp).await);
        }
        Ok(r.digest().map(str::to_string).unwrap_or(digest))
    }
}

/// The absolute upload URL from a 202's Location (often relative).
fn upload_location(resp: &reqwest::Response) -> Result<String> {
    let loc = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| Error::invalid(resp.url(), "upload answer without Location"))?;
    let u = resp
        .url()
        .join(loc)
        .map_err(|e| Error::invalid(resp.url(), format!("bad Location: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(Error::invalid(resp.url(), "upload Location is not HTTP"));
    }
    Ok(u.to_string())
}
