//! Where a conversion reads from and writes to: an OCI layout
//! (`oci:DIR[:TAG]`) or a registry (`HOST/REPO[:TAG]`).
//!
//! Conversion itself always runs layout to layout. A registry source is
//! mirrored on demand into a staging layout (each blob fetched once, when
//! first needed, verified); a registry destination is a staging layout whose
//! blobs are pushed as soon as they are written: layers right after their
//! conversion (so uploads overlap the conversion of other layers), then
//! configs, manifests and finally the tag.

use crate::error::{Error, Result};
use futures::StreamExt;
use indicatif::ProgressBar;
use oci_layout::{media_types, Descriptor, Layout, MediaType, OciRef, MAX_JSON_BLOB};
use serde_json::Value;
use std::io::Write;
use tokio::runtime::Handle;

/// A registry endpoint of the conversion.
pub(crate) struct Remote {
    client: registry::Client,
    reference: registry::Reference,
    rt: Handle,
    /// Keeps the staging directory alive as long as we are.
    _staging_dir: tempfile::TempDir,
}

fn remote(s: &str, cfg: &registry::ClientConfig, rt: &Handle) -> Result<(Remote, Layout)> {
    let reference =
        registry::Reference::parse(s).map_err(Error::registry(format!("image reference {s:?}")))?;
    let client = registry::Client::new(cfg.clone())
        .map_err(Error::registry("creating the registry client"))?;
    let dir = tempfile::Builder::new()
        .prefix("rsnap-convert-")
        .tempdir()
        .map_err(Error::io("creating the staging directory"))?;
    let staging = Layout::create(dir.path())?;
    Ok((
        Remote {
            client,
            reference,
            rt: rt.clone(),
            _staging_dir: dir,
        },
        staging,
    ))
}

pub(crate) enum Source {
    Layout { layout: Layout, tag: Option<String> },
    Registry { remote: Remote, staging: Layout },
}

impl Source {
    pub fn open(s: &str, cfg: &registry::ClientConfig, rt: &Handle) -> Result<Source> {
        if s.starts_with("oci:") {
            let r = OciRef::parse(s)?;
            return Ok(Source::Layout {
                layout: Layout::open(&r.dir)?,
                tag: r.tag,
            });
        }
        let (remote, staging) = remote(s, cfg, rt)?;
        Ok(Source::Registry { remote, staging })
    }

    /// The tag a destination inherits when it names none.
    pub fn tag(&self) -> Option<String> {
        match self {
            Source::Layout { tag, .. } => tag.clone(),
            Source::Registry { remote, .. } => remote.reference.tag().map(str::to_string),
        }
    }

    /// The layout holding (or about to hold) the source's blobs.
    pub fn layout(&self) -> &Layout {
        match self {
            Source::Layout { layout, .. }
            | Source::Registry {
                staging: layout, ..
            } => layout,
        }
    }

    /// The descriptor of the manifest or index the source names.
    pub fn root(&self) -> Result<Descriptor> {
        match self {
            Source::Layout { layout, tag } => Ok(layout.resolve(tag.as_deref())?),
            Source::Registry { remote, staging } => {
                let r = &remote.reference;
                let res = remote
                    .rt
                    .block_on(remote.client.resolve(r))
                    .map_err(Error::registry(format!("resolving {r}")))?;
                let mut d = staging.put_blob(&res.media_type, &res.bytes)?;
                if d.digest().as_ref() != res.digest {
                    return Err(Error::StagingChanged(r.to_string()));
                }
                d.set_media_type(MediaType::from(res.media_type.as_str()));
                Ok(d)
            }
        }
    }

    /// A manifest, index or config, verified.
    pub fn read_json_blob(&self, d: &Descriptor) -> Result<(Vec<u8>, Value)> {
        if let Source::Registry { remote, staging } = self {
            let digest = d.digest().as_ref();
            if !staging.has_blob(digest) {
                let r = &remote.reference;
                let fetching = Error::registry(format!("fetching {digest} from {r}"));
                let bytes = if media_types::is_manifest(d.media_type().as_ref()) {
                    remote
                        .rt
                        .block_on(remote.client.resolve(&r.with_digest(digest)))
                        .map(|res| res.bytes)
                } else {
                    remote
                        .rt
                        .block_on(remote.client.fetch_blob_bytes(r, digest, MAX_JSON_BLOB))
                }
                .map_err(fetching)?;
                staging.put_blob(d.media_type().as_ref(), &bytes)?;
            }
        }
        Ok(self.layout().read_json_blob(d)?)
    }

    /// Make sure layer `d` is in `layout()` (downloading it if needed).
    pub fn fetch_layer(&self, d: &Descriptor, bar: &ProgressBar) -> Result<()> {
        let Source::Registry { remote, staging } = self else {
            return Ok(());
        };
        let digest = d.digest().as_ref();
        if staging.has_blob(digest) {
            return Ok(());
        }
        bar.set_message("downloading");
        let r = &remote.reference;
        let mut w = staging.blob_writer()?;
        let what = || format!("downloading {digest}");
        remote.rt.block_on(async {
            let mut s = remote
                .client
                .fetch_blob_stream(r, digest)
                .await
                .map_err(Error::registry(what()))?;
            // The stream ends in an error if the digest did not match, and
            // the writer only becomes a blob on commit below.
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(Error::registry(what()))?;
                w.write_all(&chunk).map_err(Error::io(what()))?;
                bar.inc(chunk.len() as u64);
            }
            Ok::<_, Error>(())
        })?;
        let (got, size) = w.commit()?;
        if got != digest || size != d.size() {
            return Err(Error::Download {
                digest: digest.to_string(),
                got,
                size,
            });
        }
        bar.set_position(0);
        bar.set_message("");
        Ok(())
    }

    fn registry_repo(&self) -> Option<&registry::Reference> {
        match self {
            Source::Registry { remote, .. } => Some(&remote.reference),
            Source::Layout { .. } => None,
        }
    }
}

pub(crate) enum Dest {
    Layout {
        layout: Layout,
        tag: Option<String>,
    },
    Registry {
        remote: Remote,
        staging: Layout,
        mount_from: Vec<String>,
        /// Whether the reference named a tag (else the source's is used).
        explicit_tag: bool,
    },
}

/// Does a registry reference name a tag (`host:port/repo:tag`)?
fn names_tag(s: &str) -> bool {
    let last = s.rsplit('/').next().unwrap_or(s);
    last.contains(':') && !s.contains('@')
}

impl Dest {
    pub fn open(s: &str, src: &Source, cfg: &registry::ClientConfig, rt: &Handle) -> Result<Dest> {
        if s.starts_with("oci:") {
            let r = OciRef::parse(s)?;
            return Ok(Dest::Layout {
                layout: Layout::create(&r.dir)?,
                tag: r.tag,
            });
        }
        let (remote, staging) = remote(s, cfg, rt)?;
        if remote.reference.digest().is_some() {
            return Err(Error::DestinationDigest(s.to_string()));
        }
        // Same registry: unchanged blobs are mounted, not uploaded again.
        let mount_from = src
            .registry_repo()
            .filter(|r| r.registry() == remote.reference.registry())
            .map(|r| vec![r.repository().to_string()])
            .unwrap_or_default();
        Ok(Dest::Registry {
            remote,
            staging,
            mount_from,
            explicit_tag: names_tag(s),
        })
    }

    /// Where converted blobs are written.
    pub fn layout(&self) -> &Layout {
        match self {
            Dest::Layout { layout, .. }
            | Dest::Registry {
                staging: layout, ..
            } => layout,
        }
    }

    /// The tag named by the destination, if any.
    pub fn tag(&self) -> Option<String> {
        match self {
            Dest::Layout { tag, .. } => tag.clone(),
            Dest::Registry {
                remote,
                explicit_tag: true,
                ..
            } => remote.reference.tag().map(str::to_string),
            Dest::Registry { .. } => None,
        }
    }

    /// A blob of `layout()` is complete: upload it (registry destinations).
    pub fn push_blob(&self, d: &Descriptor) -> Result<()> {
        let Dest::Registry {
            remote,
            staging,
            mount_from,
            ..
        } = self
        else {
            return Ok(());
        };
        let digest = d.digest().as_ref();
        let path = staging.blob_path(digest)?;
        let opts = registry::PushOptions {
            mount_from: mount_from.clone(),
            chunk_size: None,
        };
        let r = remote.reference.repo_only();
        remote
            .rt
            .block_on(remote.client.push_blob_file(&r, digest, &path, &opts))
            .map_err(Error::registry(format!(
                "pushing {digest} to {}",
                remote.reference
            )))?;
        Ok(())
    }

    /// Publish a manifest or index: by digest (`tag` None) or under `tag`.
    pub fn push_manifest(&self, d: &Descriptor, tag: Option<&str>) -> Result<()> {
        match self {
            Dest::Layout { layout, .. } => match tag {
                Some(t) => Ok(layout.set_tag(t, d.clone())?),
                None => Ok(()),
            },
            Dest::Registry {
                remote, staging, ..
            } => {
                let (bytes, _) = staging.read_json_blob(d)?;
                let digest = d.digest().as_ref();
                let r = match tag {
                    Some(t) => remote.reference.repo_only().with_tag(t),
                    None => remote.reference.repo_only().with_digest(digest),
                };
                remote
                    .rt
                    .block_on(remote.client.push_manifest(
                        &r,
                        d.media_type().as_ref(),
                        bytes.into(),
                    ))
                    .map_err(Error::registry(format!("pushing manifest {digest} to {r}")))?;
                Ok(())
            }
        }
    }

    /// How to name the result in messages.
    pub fn describe(&self, tag: &str) -> String {
        match self {
            Dest::Layout { layout, .. } => format!("oci:{}:{tag}", layout.dir.display()),
            Dest::Registry { remote, .. } => remote.reference.repo_only().with_tag(tag).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tells_whether_a_reference_names_a_tag() {
        assert!(super::names_tag("127.0.0.1:5000/a/b:v1"));
        assert!(!super::names_tag("127.0.0.1:5000/a/b"));
        assert!(!super::names_tag("127.0.0.1:5000/a/b@sha256:00"));
        assert!(super::names_tag("busybox:1"));
        assert!(!super::names_tag("busybox"));
    }
}
