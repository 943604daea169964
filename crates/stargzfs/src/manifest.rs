//! The image manifest as all of an image's Prepares share it: fetched once
//! and answered from the registry client's memory for `RECENT`. Both the
//! opener (TOC digests, layer sizes) and the gzip index lookup (the
//! referrers' subject) ask for it.

use crate::error::Error;
use registry::Reference;

/// How long a manifest (and a referrers list) answers the Prepares of an
/// image's other layers: containerd prepares them one after another, each
/// after the one below is there, which for a layer pulled in full can take
/// a while.
pub(crate) const RECENT: std::time::Duration = std::time::Duration::from_secs(30);

/// The image manifest, from memory if it was fetched moments ago.
pub(crate) async fn recent(
    client: &registry::Client,
    image: &Reference,
) -> Result<registry::Manifest, Error> {
    client
        .fetch_manifest_recent(image, RECENT)
        .await
        .map_err(|source| Error::Manifest {
            image: image.to_string(),
            source,
        })
}
