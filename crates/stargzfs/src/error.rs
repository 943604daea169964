//! Errors of the eStargz filesystem, and the one place that decides what
//! each means for a layer (`impl From<Error> for RemoteFsError`):
//!
//! | what happened | verdict |
//! |---|---|
//! | labels lack the reference or digest, TOC digest unknown | fall back |
//! | not eStargz, invalid TOC, TOC digest mismatch, bad bytes | fall back |
//! | a plain gzip layer's index malformed or for another blob | fall back |
//! | registry: unauthorized / forbidden | fall back (the error says why) |
//! | registry: not found | fall back |
//! | registry: unreachable, timed out, 5xx / 429 after retries | unavailable |
//! | registry: invalid answer, digest mismatch, too large, other | fall back |
//! | mounting, unmounting, a lost mount | error |
//!
//! Not found falls back rather than "unavailable": the registry answered,
//! and asking again will not make the blob appear; containerd's ordinary
//! pull then reports the missing content in its own words. Unavailable is
//! kept for what may work a moment later.

use lazyfs::{FetchError, SourceError};
use registry::ErrorKind;
use snapshot_labels::annotations::TOC_DIGEST;
use snapshotter::RemoteFsError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The labels name no image reference.
    #[error("no image reference label")]
    NoImageRef,
    /// The labels name no layer digest.
    #[error("no layer digest label")]
    NoLayerDigest,
    #[error("image reference: {0}")]
    Reference(#[source] registry::Error),
    /// Without a TOC digest from the verified manifest (or the labels) the
    /// TOC cannot be trusted, so the layer is not served lazily.
    #[error(
        "layer {layer} has no {TOC_DIGEST} (allow_no_verification mounts such layers unverified)"
    )]
    NoTocDigest { layer: String },
    /// An external-TOC layer whose TOC image cannot be found or used.
    #[error("layer {layer}: external TOC: {reason}")]
    ExternalToc { layer: String, reason: String },
    #[error("manifest of {image}: {source}")]
    Manifest {
        image: String,
        #[source]
        source: registry::Error,
    },
    #[error("blob {layer}: {source}")]
    Blob {
        layer: String,
        #[source]
        source: registry::Error,
    },
    /// Opening the layer (footer, TOC) failed.
    #[error(transparent)]
    Layer(#[from] lazyfs::Error),
    #[error("mounting {path}: {source}")]
    Mount {
        path: PathBuf,
        #[source]
        source: Box<lazyfs::Error>,
    },
    #[error("unmounting {path}: {source}")]
    Unmount {
        path: PathBuf,
        #[source]
        source: Box<lazyfs::Error>,
    },
    #[error("{what} for {path}: {source}")]
    Task {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("{path} is no longer served")]
    NotServed { path: PathBuf },
    #[error("{path} is not mounted")]
    NotMounted { path: PathBuf },
    /// Start-up: the chunk cache directory.
    #[error("chunk cache: {0}")]
    Cache(#[source] std::io::Error),
    /// A plain gzip layer's index does not fit the layer or is malformed.
    #[error("gzip index of {layer}: {source}")]
    GzIndex {
        layer: String,
        #[source]
        source: gzindex::Error,
    },
    /// Start-up: the registry client's configuration.
    #[error("registry client: {0}")]
    Client(#[source] registry::Error),
    /// Reading the kept profiles (`rsnap profile`).
    #[error("reading {}", path.display())]
    Profiles {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no profile of {image} under {} (is `[profile] record = true` set, and has a container of it run for the window?)", dir.display())]
    NoProfile { image: String, dir: PathBuf },
    #[error("{image} names several profiled images: {}", images.join(", "))]
    ProfileAmbiguous { image: String, images: Vec<String> },
}

/// What a failure means for the layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Not served lazily: an ordinary snapshot instead.
    FallBack,
    /// Could be served, not now.
    Unavailable,
    /// Our own failure (mounting, bookkeeping).
    Error,
}

impl Error {
    fn verdict(&self) -> Verdict {
        match self {
            Error::NoImageRef
            | Error::NoLayerDigest
            | Error::Reference(_)
            | Error::NoTocDigest { .. }
            | Error::ExternalToc { .. } => Verdict::FallBack,
            Error::GzIndex { .. } => Verdict::FallBack,
            Error::Manifest { source, .. } | Error::Blob { source, .. } => registry(source),
            Error::Layer(e) => layer(e),
            Error::NotServed { .. } | Error::NotMounted { .. } => Verdict::Unavailable,
            Error::Mount { .. }
            | Error::Unmount { .. }
            | Error::Task { .. }
            | Error::Cache(_)
            | Error::Client(_) => Verdict::Error,
            // Never met by a Prepare: only `rsnap profile` reads profiles.
            Error::Profiles { .. } | Error::NoProfile { .. } | Error::ProfileAmbiguous { .. } => {
                Verdict::Error
            }
        }
    }
}

fn registry(e: &registry::Error) -> Verdict {
    match e.kind() {
        ErrorKind::Unreachable => Verdict::Unavailable,
        ErrorKind::Unauthorized
        | ErrorKind::NotFound
        | ErrorKind::Invalid
        | ErrorKind::DigestMismatch
        | ErrorKind::TooLarge
        | ErrorKind::Other => Verdict::FallBack,
    }
}

fn layer(e: &lazyfs::Error) -> Verdict {
    match e {
        lazyfs::Error::NotEstargz { .. }
        | lazyfs::Error::TocDigestMismatch { .. }
        | lazyfs::Error::Invalid { .. }
        | lazyfs::Error::Corrupt { .. }
        | lazyfs::Error::LayerMismatch { .. } => Verdict::FallBack,
        lazyfs::Error::Unavailable { source, .. } => fetch(source),
        lazyfs::Error::NotFound
        | lazyfs::Error::NotAFile
        | lazyfs::Error::Mount { .. }
        | lazyfs::Error::Io(_) => Verdict::Error,
    }
}

fn fetch(e: &FetchError) -> Verdict {
    match e {
        FetchError::Source(s) => source(s),
        FetchError::Timeout(_) => Verdict::Unavailable,
        FetchError::Chunk(_) => Verdict::FallBack,
    }
}

fn source(e: &SourceError) -> Verdict {
    match e {
        SourceError::Registry(r) => registry(r),
        // The blob is not what the TOC or the manifest says it is.
        SourceError::OutOfRange { .. }
        | SourceError::WrongLength { .. }
        | SourceError::RangesMismatch => Verdict::FallBack,
        SourceError::Io { .. } | SourceError::Abandoned | SourceError::Other(_) => {
            Verdict::Unavailable
        }
    }
}

impl From<Error> for RemoteFsError {
    fn from(e: Error) -> RemoteFsError {
        match e.verdict() {
            Verdict::FallBack => RemoteFsError::NotRemote(Box::new(e)),
            Verdict::Unavailable => RemoteFsError::Unavailable(Box::new(e)),
            Verdict::Error => RemoteFsError::Other(Box::new(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn reg(kind: &str) -> registry::Error {
        let url = "https://r.example/v2/x/blobs/sha256:a".to_string();
        let detail = "test".to_string();
        match kind {
            "unauthorized" => registry::Error::Unauthorized { url, detail },
            "not found" => registry::Error::NotFound { url },
            "unreachable" => registry::Error::Unreachable { url, detail },
            "5xx" => registry::Error::Server {
                url,
                status: 503,
                detail,
            },
            "invalid" => registry::Error::Invalid { url, detail },
            _ => unreachable!(),
        }
    }

    fn verdict_of(e: Error) -> &'static str {
        match RemoteFsError::from(e) {
            RemoteFsError::NotRemote(_) => "fall back",
            RemoteFsError::Unavailable(_) => "unavailable",
            RemoteFsError::Other(_) => "error",
        }
    }

    /// A registry error read through a lazy layer's open (footer/TOC reads).
    fn via_layer(e: registry::Error) -> Error {
        Error::Layer(lazyfs::Error::Unavailable {
            layer: "sha256:a".into(),
            source: FetchError::Source(SourceError::Registry(Arc::new(e))),
        })
    }

    #[test]
    fn registry_errors_mean_the_same_wherever_they_come_from() {
        for (kind, want) in [
            ("unauthorized", "fall back"),
            ("not found", "fall back"),
            ("invalid", "fall back"),
            ("unreachable", "unavailable"),
            ("5xx", "unavailable"),
        ] {
            let manifest = Error::Manifest {
                image: "r.example/x:1".into(),
                source: reg(kind),
            };
            let blob = Error::Blob {
                layer: "sha256:a".into(),
                source: reg(kind),
            };
            assert_eq!(verdict_of(manifest), want, "manifest, {kind}");
            assert_eq!(verdict_of(blob), want, "blob, {kind}");
            assert_eq!(verdict_of(via_layer(reg(kind))), want, "layer read, {kind}");
        }
    }

    #[test]
    fn format_and_label_problems_fall_back_and_timeouts_are_unavailable() {
        assert_eq!(verdict_of(Error::NoImageRef), "fall back");
        assert_eq!(
            verdict_of(Error::NoTocDigest {
                layer: "sha256:a".into()
            }),
            "fall back"
        );
        let not_estargz = lazyfs::Error::NotEstargz {
            layer: "sha256:a".into(),
            reason: lazyfs::NotEstargz::TooSmall { size: 3 },
        };
        assert_eq!(verdict_of(not_estargz.into()), "fall back");
        let timeout = lazyfs::Error::Unavailable {
            layer: "sha256:a".into(),
            source: FetchError::Timeout(std::time::Duration::from_secs(1)),
        };
        assert_eq!(verdict_of(timeout.into()), "unavailable");
        let short = lazyfs::Error::Unavailable {
            layer: "sha256:a".into(),
            source: FetchError::Source(SourceError::WrongLength {
                off: 0,
                len: 10,
                got: 3,
            }),
        };
        assert_eq!(verdict_of(short.into()), "fall back");
        assert_eq!(
            verdict_of(Error::NotServed { path: "/m".into() }),
            "unavailable"
        );
    }

    #[test]
    fn the_cause_is_kept_for_the_log() {
        let e = RemoteFsError::from(Error::Manifest {
            image: "r.example/x:1".into(),
            source: reg("unauthorized"),
        });
        let msg = e.to_string();
        assert!(msg.contains("unauthorized"), "{msg}");
        let src = std::error::Error::source(&e).expect("a source");
        let ours = src.downcast_ref::<Error>().expect("our error");
        assert!(matches!(ours, Error::Manifest { .. }));
    }
}
