//! OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/ALG/HEX`),
//! described with oci-spec's types.
//!
//! Manifests and configs stay `serde_json::Value` so that a conversion keeps
//! every field it does not know about. Everything read from a layout is
//! checked against its digest; digests are validated before they become
//! paths, so a hostile index cannot point outside `blobs/`.

mod error;
mod layout;
mod parse;

pub use error::{Error, Result};
pub use layout::{BlobWriter, HashingReader, Layout};
pub use oci_spec::image::{Descriptor, Digest, MediaType};
pub use parse::{
    check_digest, parse_diff_ids, parse_digest, parse_index, parse_manifest, select_tag,
    sha256_digest, valid_tag, DescriptorExt, ManifestParts, OciRef,
};

/// Media types by name; the Docker ones are `MediaType::Other` in oci-spec.
pub mod media_types {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

    /// An image manifest or index (what a registry serves under `/manifests/`).
    pub fn is_manifest(mt: &str) -> bool {
        matches!(mt, OCI_MANIFEST | DOCKER_MANIFEST | OCI_INDEX | DOCKER_LIST)
    }
}

/// The annotation that tags an image in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Manifests, indexes and configs larger than this are refused: they are
/// read whole into memory and come from an untrusted source.
pub const MAX_JSON_BLOB: u64 = 16 << 20;
