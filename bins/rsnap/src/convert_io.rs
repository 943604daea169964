//! Where `rsnap convert` reads from and writes to: an OCI layout
//! (`oci:DIR[:TAG]`) or a registry (`HOST/REPO[:TAG]`).
//!
//! Conversion itself always runs layout to layout. A registry source is
//! mirrored on demand into a staging layout (each blob fetched once, when
//! first needed, verified); a registry destination is a staging layout whose
//! blobs are pushed as soon as they are written: layers right after their
//! conversion (so uploads overlap the conversion of other layers), then
//! configs, manifests and finally the tag.

use crate::oci_layout::{self as oci, Descriptor, Layout, OciRef, MAX_JSON_BLOB};
use anyhow::{ensure, Context, Result};
use futures::StreamExt;
use indicatif::ProgressBar;
use serde_json::Value;
use std::io::Write;
use tokio::runtime::Handle;

/// A registry endpoint of the conversion.
pub struct Remote {
    client: registry::Client,
    reference: registry::Reference,
    rt: Handle,
    /// Keeps the staging directory alive as long as we are.
    _staging_dir: tempfile::TempDir,
}

fn remote(s: &str, cfg: &registry::ClientConfig, rt: &Handle) -> Result<(Remote, Layout)> {
    let reference =
        registry::Reference::parse(s).with_context(|| format!("image reference {s:?}"))?;
    let client = registry::Client::new(cfg.clone()).context("creating the registry client")?;
    let dir = tempfile::Builder::new()
        .prefix("rsnap-convert-")
        .tempdir()
        .context("staging dir")?;
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

pub enum Source {
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
            Source::Layout { layout, tag } => layout.resolve(tag.as_deref()),
            Source::Registry { remote, staging } => {
                let r = &remote.reference;
                let res = remote
                    .rt
                    .block_on(remote.client.resolve(r))
                    .with_context(|| format!("resolving {r}"))?;
                let mut d = staging.put_blob(&res.media_type, &res.bytes)?;
                ensure!(
                    d.digest == res.digest,
                    "{r}: manifest digest changed while staging"
                );
                d.media_type = res.media_type;
                Ok(d)
            }
        }
    }

    /// A manifest, index or config, verified.
    pub fn read_json_blob(&self, d: &Descriptor) -> Result<(Vec<u8>, Value)> {
        if let Source::Registry { remote, staging } = self {
            if !staging.has_blob(&d.digest) {
                let r = &remote.reference;
                let bytes = if is_manifest_type(&d.media_type) {
                    remote
                        .rt
                        .block_on(remote.client.resolve(&r.with_digest(&d.digest)))?
                        .bytes
                } else {
                    remote.rt.block_on(remote.client.fetch_blob_bytes(
                        r,
                        &d.digest,
                        MAX_JSON_BLOB,
                    ))?
                };
                staging.put_blob(&d.media_type, &bytes)?;
            }
        }
        self.layout().read_json_blob(d)
    }

    /// Make sure layer `d` is in `layout()` (downloading it if needed).
    pub fn fetch_layer(&self, d: &Descriptor, bar: &ProgressBar) -> Result<()> {
        let Source::Registry { remote, staging } = self else {
            return Ok(());
        };
        if staging.has_blob(&d.digest) {
            return Ok(());
        }
        bar.set_message("downloading");
        let r = &remote.reference;
        let mut w = staging.blob_writer()?;
        remote
            .rt
            .block_on(async {
                let mut s = remote.client.fetch_blob_stream(r, &d.digest).await?;
                // The stream ends in an error if the digest did not match, and
                // the writer only becomes a blob on commit below.
                while let Some(chunk) = s.next().await {
                    let chunk = chunk?;
                    w.write_all(&chunk)?;
                    bar.inc(chunk.len() as u64);
                }
                anyhow::Ok(())
            })
            .with_context(|| format!("downloading {}", d.digest))?;
        let (digest, size) = w.commit()?;
        ensure!(
            digest == d.digest && size == d.size,
            "layer {} downloaded as {digest} ({size} bytes)",
            d.digest
        );
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

fn is_manifest_type(mt: &str) -> bool {
    matches!(
        mt,
        oci::MT_OCI_MANIFEST | oci::MT_DOCKER_MANIFEST | oci::MT_OCI_INDEX | oci::MT_DOCKER_LIST
    )
}

pub enum Dest {
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
        ensure!(
            remote.reference.digest().is_none(),
            "{s:?}: a destination needs a tag, not a digest"
        );
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
        let path = staging.blob_path(&d.digest)?;
        let opts = registry::PushOptions {
            mount_from: mount_from.clone(),
            chunk_size: None,
        };
        let r = remote.reference.repo_only();
        remote
            .rt
            .block_on(remote.client.push_blob_file(&r, &d.digest, &path, &opts))
            .with_context(|| format!("pushing {} to {}", d.digest, remote.reference))?;
        Ok(())
    }

    /// Publish a manifest or index: by digest (`tag` None) or under `tag`.
    pub fn push_manifest(&self, d: &Descriptor, tag: Option<&str>) -> Result<()> {
        match self {
            Dest::Layout { layout, .. } => match tag {
                Some(t) => layout.set_tag(t, d.clone()),
                None => Ok(()),
            },
            Dest::Registry {
                remote, staging, ..
            } => {
                let (bytes, _) = staging.read_json_blob(d)?;
                let r = match tag {
                    Some(t) => remote.reference.repo_only().with_tag(t),
                    None => remote.reference.repo_only().with_digest(&d.digest),
                };
                remote
                    .rt
                    .block_on(remote.client.push_manifest(&r, &d.media_type, bytes.into()))
                    .with_context(|| format!("pushing manifest {} to {r}", d.digest))?;
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
