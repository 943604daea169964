//! What can go wrong optimizing an image.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Convert(#[from] convert::Error),
    #[error(transparent)]
    Record(#[from] crate::record::RecordError),
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the profiling period must be at least one second (got 0)")]
    PeriodZero,
    #[error("the image has no Entrypoint or Cmd: give a command after `--`")]
    NoCommand,
    #[error("command {command:?} not found in the image (PATH={path})")]
    CommandNotFound { command: String, path: String },
    #[error("user {0:?} of the image config is not in the image's /etc/passwd or /etc/group")]
    User(String),
    #[error("--mount {0:?}: expected SRC:DST[:ro] with absolute paths and an existing SRC")]
    BadMount(String),
    #[error("--env {0:?}: expected KEY=VALUE")]
    BadEnv(String),
    #[error("--prefetch-list pattern {pattern:?}")]
    Glob {
        pattern: String,
        #[source]
        source: glob::PatternError,
    },
    #[error("layer {digest} has media type {media_type}, which optimize cannot unpack")]
    LayerType { digest: String, media_type: String },
    #[error("layer {digest}: the blob hashes to {got}")]
    LayerDigest { digest: String, got: String },
    #[error("layer {digest} uncompresses to {got}, but the config's diff ID is {want}")]
    DiffId {
        digest: String,
        got: String,
        want: String,
    },
    #[error("the destination {dst:?} is not writable")]
    Destination {
        dst: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mounting the rootfs overlay at {0}")]
    Mount(PathBuf, #[source] std::io::Error),
    #[error("fanotify ({what}; needs root)")]
    Fanotify {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("runc {what} failed: {detail}")]
    Runc { what: String, detail: String },
    #[error("the workload {0} (its output is above); no image written")]
    Workload(String),
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}
