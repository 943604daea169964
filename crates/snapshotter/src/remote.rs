//! THE plug-in point for lazily mounted layers.
//!
//! The snapshotter knows nothing of eStargz, registries or FUSE: it hands a
//! [`RemoteFs`] an empty directory and the labels containerd sent with the
//! layer, and the implementation mounts the layer's read-only contents there.
//! The daemon wires in the lazyfs-backed implementation; tests use fakes.

use crate::types::Labels;
use async_trait::async_trait;
use std::path::Path;

/// The label containerd's unpacker sets to the chain id the prepared
/// snapshot will be committed as.
pub const LABEL_TARGET_REF: &str = "containerd.io/snapshot.ref";
/// Marks a committed snapshot whose contents are a remote mount (the same
/// key and value as stargz-snapshotter, so tools that look for it work).
pub const LABEL_REMOTE: &str = "containerd.io/snapshot/remote";
pub const LABEL_REMOTE_VALUE: &str = "remote snapshot";
/// The image facts of a layer, as ctr-remote's rpull (`remote/stargz.*`)
/// and CRI/nerdctl (`cri.*`) spell them. Clients set both spellings;
/// the daemon accepts either.
pub mod labels {
    pub const STARGZ_REF: &str = "containerd.io/snapshot/remote/stargz.reference";
    pub const STARGZ_DIGEST: &str = "containerd.io/snapshot/remote/stargz.digest";
    pub const STARGZ_LAYERS: &str = "containerd.io/snapshot/remote/stargz.layers";
    pub const CRI_REF: &str = "containerd.io/snapshot/cri.image-ref";
    pub const CRI_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
    pub const CRI_LAYERS: &str = "containerd.io/snapshot/cri.image-layers";
    /// Where the image reference may be, in order of preference.
    pub const REF_KEYS: [&str; 2] = [STARGZ_REF, CRI_REF];
    /// Where the layer digest may be, in order of preference.
    pub const DIGEST_KEYS: [&str; 2] = [STARGZ_DIGEST, CRI_DIGEST];
}

/// Label prefixes that carry image facts a remote mount needs: CRI/nerdctl
/// and ctr-remote spellings.
pub const REMOTE_LABEL_PREFIXES: [&str; 2] = [
    "containerd.io/snapshot/cri.",
    "containerd.io/snapshot/remote/stargz.",
];

#[derive(Debug, thiserror::Error)]
pub enum RemoteFsError {
    /// The layer is not one this filesystem can serve lazily (e.g. not
    /// eStargz). The snapshotter falls back to an ordinary snapshot.
    #[error("not a remote layer: {0}")]
    NotRemote(String),
    /// The layer could be remote but cannot be reached now (network,
    /// authorization). Fallback at prepare; retried on check.
    #[error("remote layer unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Other(String),
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
