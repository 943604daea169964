//! The names the remote-snapshot protocol is spoken in: the labels
//! containerd, CRI, nerdctl and ctr-remote put on a Prepare, the label a
//! remote snapshot is committed with, and the layer annotations of eStargz
//! images. No dependencies, so that clients (a CLI, a test, a converter) can
//! use the names without compiling the gRPC service or the metadata store.

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
    /// Where the list of all the image's layer digests may be.
    pub const LAYERS_KEYS: [&str; 2] = [STARGZ_LAYERS, CRI_LAYERS];
}

/// Label prefixes that carry image facts a remote mount needs: CRI/nerdctl
/// and ctr-remote spellings.
pub const REMOTE_LABEL_PREFIXES: [&str; 2] = [
    "containerd.io/snapshot/cri.",
    "containerd.io/snapshot/remote/stargz.",
];

/// Annotations of an eStargz layer's descriptor in the image manifest.
/// containerd's unpacker also passes them to Prepare as labels.
pub mod annotations {
    /// The digest of the layer's TOC: what makes the TOC trustworthy.
    pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
    /// The size of the layer's uncompressed tar stream.
    pub const UNCOMPRESSED_SIZE: &str = "io.containers.estargz.uncompressed-size";
    /// zstd:chunked: `sha256:<hex>` of the compressed TOC (the zstd frame
    /// inside the TOC's skippable frame). What podman/buildah verify with.
    pub const ZSTD_CHUNKED_MANIFEST_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
    /// zstd:chunked: `offset:compressed:uncompressed:type` of the TOC frame.
    pub const ZSTD_CHUNKED_MANIFEST_POSITION: &str = "io.containers.zstd-chunked.manifest-position";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cover_the_fact_labels() {
        for k in labels::REF_KEYS
            .iter()
            .chain(&labels::DIGEST_KEYS)
            .chain(&labels::LAYERS_KEYS)
        {
            assert!(
                REMOTE_LABEL_PREFIXES.iter().any(|p| k.starts_with(p)),
                "{k}"
            );
        }
        assert!(!REMOTE_LABEL_PREFIXES
            .iter()
            .any(|p| LABEL_TARGET_REF.starts_with(p) || annotations::TOC_DIGEST.starts_with(p)));
    }
}
