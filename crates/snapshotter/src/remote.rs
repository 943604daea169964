//! THE plug-in point for lazily mounted layers.
//!
//! The snapshotter knows nothing of eStargz, registries or FUSE: it hands a
//! [`RemoteFs`] an empty directory and the labels containerd sent with the
//! layer, and the implementation mounts the layer's read-only contents there.
//! The daemon wires in the eStargz implementation (`stargzfs`); tests use
//! fakes.

use crate::types::Labels;
use async_trait::async_trait;
use std::path::Path;

// The names live in `snapshot-labels` (no dependencies); these paths stay
// for code written against this crate.
pub use snapshot_labels::{
    labels, LABEL_REMOTE, LABEL_REMOTE_VALUE, LABEL_TARGET_REF, REMOTE_LABEL_PREFIXES,
};

/// The cause of a [`RemoteFsError`], in the implementation's own error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a [`RemoteFs`] could not mount or serve a layer. The variant is the
/// decision the snapshotter acts on; the source says what happened.
#[derive(Debug, thiserror::Error)]
pub enum RemoteFsError {
    /// The layer is not one this filesystem can serve lazily (e.g. not
    /// eStargz, or the registry refuses us). The snapshotter falls back to
    /// an ordinary snapshot.
    #[error("not a remote layer: {0}")]
    NotRemote(#[source] BoxError),
    /// The layer could be remote but cannot be reached now (network,
    /// registry failing). Fallback at prepare; retried on check.
    #[error("remote layer unavailable: {0}")]
    Unavailable(#[source] BoxError),
    #[error("{0}")]
    Other(#[source] BoxError),
}

impl RemoteFsError {
    /// The counter and log word for a Prepare that falls back on this error.
    pub fn fallback_reason(&self) -> FallbackReason {
        match self {
            RemoteFsError::NotRemote(_) => FallbackReason::NotRemote,
            RemoteFsError::Unavailable(_) => FallbackReason::Unavailable,
            RemoteFsError::Other(_) => FallbackReason::Error,
        }
    }
}

/// Why a remote Prepare fell back to an ordinary snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// The filesystem does not serve this layer lazily.
    NotRemote,
    /// The layer's source cannot be reached now.
    Unavailable,
    /// Mounting or committing failed otherwise.
    Error,
}

impl std::fmt::Display for FallbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FallbackReason::NotRemote => "not remote",
            FallbackReason::Unavailable => "unavailable",
            FallbackReason::Error => "error",
        })
    }
}

/// A filesystem that mounts image layers lazily.
///
/// Calls for one mount point never overlap: the snapshotter serialises them.
#[async_trait]
pub trait RemoteFs: Send + Sync {
    /// Mounts the layer described by `labels` read-only at `mountpoint`
    /// (an existing empty directory).
    async fn mount(&self, mountpoint: &Path, labels: &Labels) -> Result<(), RemoteFsError>;
    /// Returns Ok if the layer at `mountpoint` is still being served.
    async fn check(&self, mountpoint: &Path, labels: &Labels) -> Result<(), RemoteFsError>;
    /// Unmounts `mountpoint` and forgets the layer.
    async fn unmount(&self, mountpoint: &Path) -> Result<(), RemoteFsError>;
    /// Mount points this filesystem serves already, although this process
    /// did not mount them (handed over by a previous process): at open the
    /// snapshotter does not detach them, and its restoring `mount` call for
    /// them must succeed without a new mount.
    async fn kept_mounts(&self) -> Vec<std::path::PathBuf> {
        Vec::new()
    }
    /// Whether `mount` would serve layer `layer` of image `image` lazily,
    /// as far as is known without mounting it (from answers the registry
    /// gave moments ago): callers that fetch layers ahead of their Prepare
    /// leave such layers alone. Default: `false`.
    async fn can_mount(&self, _image: &str, _layer: &str) -> bool {
        false
    }
    /// Fills `dir` (an empty directory beside the new snapshot's contents)
    /// with the whole layer, verified, as containerd's applier would on an
    /// overlay of `lowers` (the parent layers' contents, nearest first):
    /// called when `mount` fell back, so the snapshotter can commit the
    /// layer itself rather than leave the pull to containerd. On an error
    /// `dir` may hold anything; the snapshotter removes it. Default:
    /// [`Unpack::Declined`].
    async fn unpack(
        &self,
        _dir: &Path,
        _lowers: &[std::path::PathBuf],
        _labels: &Labels,
    ) -> Result<Unpack, RemoteFsError> {
        Ok(Unpack::Declined)
    }
}

/// What [`RemoteFs::unpack`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unpack {
    /// `dir` holds the verified layer: commit it.
    Done,
    /// Not done here (not configured, a layer type it cannot unpack):
    /// containerd pulls and applies the layer as usual.
    Declined,
}

/// Whether a Prepare asks for a remote snapshot: it names a target and
/// carries at least one image-fact label.
pub fn is_remote_request(labels: &Labels) -> Option<&str> {
    let target = labels.get(LABEL_TARGET_REF)?;
    let facts = labels
        .keys()
        .any(|k| REMOTE_LABEL_PREFIXES.iter().any(|p| k.starts_with(p)));
    (facts && !target.is_empty()).then_some(target.as_str())
}

/// A `RemoteFs` that never mounts anything: every layer falls back to an
/// ordinary snapshot. The daemon's default until a real one is wired in.
pub struct NoRemoteFs;

#[async_trait]
impl RemoteFs for NoRemoteFs {
    async fn mount(&self, _: &Path, _: &Labels) -> Result<(), RemoteFsError> {
        Err(RemoteFsError::NotRemote(
            "no remote filesystem configured".into(),
        ))
    }
    async fn check(&self, _: &Path, _: &Labels) -> Result<(), RemoteFsError> {
        Err(RemoteFsError::Other(
            "no remote filesystem configured".into(),
        ))
    }
    async fn unmount(&self, _: &Path) -> Result<(), RemoteFsError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn remote_request_needs_target_and_facts() {
        assert_eq!(is_remote_request(&l(&[(LABEL_TARGET_REF, "c1")])), None);
        assert_eq!(
            is_remote_request(&l(&[("containerd.io/snapshot/cri.layer-digest", "d")])),
            None
        );
        let cri = l(&[
            (LABEL_TARGET_REF, "c1"),
            ("containerd.io/snapshot/cri.layer-digest", "d"),
        ]);
        assert_eq!(is_remote_request(&cri), Some("c1"));
        let stargz = l(&[
            (LABEL_TARGET_REF, "c2"),
            ("containerd.io/snapshot/remote/stargz.digest", "d"),
        ]);
        assert_eq!(is_remote_request(&stargz), Some("c2"));
    }
}
