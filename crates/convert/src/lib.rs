//! Converting an image to eStargz, between OCI layouts and registries in
//! any mix.
//!
//! Reads the tagged manifest (OCI or Docker schema 2; from an index, the
//! host's platform, a chosen one, or all of them), converts every distinct
//! layer in parallel, then writes the new config (diff IDs change: the TOC is
//! a tar entry), manifest and tag. Blobs are written to temp files and
//! renamed to their digest, so an interrupted run leaves the destination's
//! existing images intact.

mod endpoint;
mod error;
mod image;
pub mod index;
mod layer;

pub use error::{Error, Result};
pub use layer::{Action, Converted, LayerOptions, ANN_TOC_DIGEST, ANN_UNCOMPRESSED_SIZE};
pub use oci_layout::Descriptor;

use endpoint::{Dest, Source};
use indicatif::ProgressBar;
use oci_layout::DescriptorExt;
use rayon::prelude::*;
use std::collections::HashMap;
use tokio::runtime::Handle;

/// Which manifests of an index to convert (a lone manifest is always converted).
#[derive(Clone, Debug, Default)]
pub enum Platforms {
    /// The first one for the host's platform.
    #[default]
    Host,
    /// The first one for this platform.
    Only(registry::Platform),
    /// Every one.
    All,
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub layer: LayerOptions,
    /// Layers converted at the same time (default: number of CPUs).
    pub jobs: Option<usize>,
    pub platforms: Platforms,
}

/// One distinct source layer and what it became.
#[derive(Debug)]
pub struct LayerReport {
    pub source: Descriptor,
    pub converted: Converted,
}

#[derive(Debug)]
pub struct Report {
    pub layers: Vec<LayerReport>,
    /// The manifest (or index) published at the destination.
    pub root: Descriptor,
    /// The destination and tag, for messages.
    pub destination: String,
    /// With `LayerOptions::external_toc`: the TOC image published next to
    /// the image (`<tag>-esgztoc`), for messages.
    pub toc_image: Option<String>,
}

/// Convert `src` to `dst` (each `oci:DIR[:TAG]` or a registry reference).
/// `bar` gives the progress bar of a layer (e.g. `ProgressBar::hidden()`);
/// registry calls run on `rt` and block.
pub fn convert(
    src: &str,
    dst: &str,
    cfg: &registry::ClientConfig,
    rt: &Handle,
    opts: &Options,
    bar: &(dyn Fn(&Descriptor) -> ProgressBar + Sync),
) -> Result<Report> {
    let src = Source::open(src, cfg, rt)?;
    let root = src.root()?;
    let images = image::collect_images(&src, &root, &opts.platforms)?;
    convert_images(&src, &root, &images, dst, cfg, rt, opts, bar)
}

/// One image of a source, opened (manifest and config read and verified)
/// so that a caller can look at it and its layers before converting it
/// with [`convert_image`] (the layers are downloaded once).
pub struct SourceImage {
    src: Source,
    root: Descriptor,
    image: image::Image,
}

impl SourceImage {
    /// Open `src` (`oci:DIR[:TAG]` or a registry reference); from an index,
    /// the platform `platforms` picks (`All` picks the first manifest).
    pub fn open(
        src: &str,
        cfg: &registry::ClientConfig,
        rt: &Handle,
        platforms: &Platforms,
    ) -> Result<SourceImage> {
        let src = Source::open(src, cfg, rt)?;
        let root = src.root()?;
        let image = image::collect_images(&src, &root, platforms)?
            .into_iter()
            .next()
            .ok_or(Error::NoImage)?;
        Ok(SourceImage { src, root, image })
    }

    /// The digest of the image manifest (not of an index above it).
    pub fn manifest_digest(&self) -> String {
        self.image.desc.digest().to_string()
    }

    /// The image config (`config.Env`, `config.Entrypoint`, ...).
    pub fn config(&self) -> &serde_json::Value {
        &self.image.config
    }

    /// The layers, bottom first.
    pub fn layers(&self) -> &[Descriptor] {
        &self.image.layers
    }

    /// The config's diff IDs, one per layer.
    pub fn diff_ids(&self) -> &[String] {
        &self.image.diff_ids
    }

    /// The local path of layer `d`'s blob, downloading it first from a
    /// registry (verified). A layout's blob is read as it is on disk: the
    /// caller checks its digest while reading it.
    pub fn layer_blob(&self, d: &Descriptor, bar: &ProgressBar) -> Result<std::path::PathBuf> {
        self.src.fetch_layer(d, bar)?;
        Ok(self.src.layout().blob_path(d.digest().as_ref())?)
    }
}

/// Convert an opened image to `dst`, as [`convert`] does.
pub fn convert_image(
    src: &SourceImage,
    dst: &str,
    cfg: &registry::ClientConfig,
    rt: &Handle,
    opts: &Options,
    bar: &(dyn Fn(&Descriptor) -> ProgressBar + Sync),
) -> Result<Report> {
    let images = [src.image.clone()];
    convert_images(&src.src, &src.root, &images, dst, cfg, rt, opts, bar)
}

#[allow(clippy::too_many_arguments)]
fn convert_images(
    src: &Source,
    root: &Descriptor,
    images: &[image::Image],
    dst: &str,
    cfg: &registry::ClientConfig,
    rt: &Handle,
    opts: &Options,
    bar: &(dyn Fn(&Descriptor) -> ProgressBar + Sync),
) -> Result<Report> {
    let dst = Dest::open(dst, src, cfg, rt)?;
    let tag = dst
        .tag()
        .or_else(|| src.tag())
        .unwrap_or_else(|| "latest".to_string());

    // Every distinct layer once, in parallel: download (registry source),
    // convert, upload (registry destination), each layer on its own.
    let mut todo: Vec<(&Descriptor, &str)> = Vec::new();
    for img in images {
        for (l, id) in img.layers.iter().zip(&img.diff_ids) {
            if !todo.iter().any(|(d, _)| d.digest() == l.digest()) {
                todo.push((l, id));
            }
        }
    }
    let jobs = opts
        .jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .clamp(1, todo.len().max(1));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build()
        .map_err(Error::Pool)?;
    let results: Vec<Result<Converted>> = pool.install(|| {
        todo.par_iter()
            .map(|&(d, id)| {
                let bar = bar(d);
                let r = convert_one(src, &dst, d, id, &opts.layer, &bar);
                bar.finish_with_message(match &r {
                    Ok(c) => format!("{:?}", c.action),
                    Err(_) => "failed".into(),
                });
                r.map_err(|e| Error::Layer {
                    digest: d.digest().to_string(),
                    source: Box::new(e),
                })
            })
            .collect()
    });
    let mut done: HashMap<String, Converted> = HashMap::new();
    let mut layers = Vec::new();
    for ((d, _), r) in todo.iter().zip(results) {
        let c = r?;
        done.insert(d.digest().to_string(), c.clone());
        layers.push(LayerReport {
            source: (*d).clone(),
            converted: c,
        });
    }

    let mut out_manifests = Vec::new();
    for img in images {
        let (config, manifest) = image::write_image(dst.layout(), img, &done)?;
        dst.push_blob(&config)?;
        out_manifests.push(manifest);
    }
    let out = if root.is_index() {
        for m in &out_manifests {
            dst.push_manifest(m, None)?;
        }
        image::write_index(src, dst.layout(), root, out_manifests)?
    } else {
        out_manifests.pop().ok_or(Error::NoImage)?
    };
    dst.push_manifest(&out, Some(&tag))?;
    let toc_image = write_toc_image(&dst, &tag, &layers)?;
    Ok(Report {
        layers,
        root: out,
        destination: dst.describe(&tag),
        toc_image,
    })
}

/// The TOC image of the converted layers that keep their TOC outside
/// (as the reference lays it out: an empty `{}` config, one gzip layer per
/// TOC annotated with its eStargz layer's digest, sorted by digest),
/// published as `<tag>-esgztoc`. `None` if no layer has one.
fn write_toc_image(dst: &Dest, tag: &str, layers: &[LayerReport]) -> Result<Option<String>> {
    let tocs: Vec<(String, u64, String)> = layers
        .iter()
        .filter_map(|l| {
            let t = l.converted.toc_layer.as_ref()?;
            Some((
                t.digest().to_string(),
                t.size(),
                l.converted.desc.digest().to_string(),
            ))
        })
        .collect();
    if tocs.is_empty() {
        return Ok(None);
    }
    let mt = oci_layout::media_types::OCI_CONFIG;
    let config = dst.layout().put_blob(mt, b"{}")?;
    dst.push_blob(&config)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci_layout::media_types::OCI_MANIFEST,
        "config": config,
        "layers": estargz::external::toc_image_layers(&tocs),
    });
    let desc = dst.layout().put_blob(
        oci_layout::media_types::OCI_MANIFEST,
        manifest.to_string().as_bytes(),
    )?;
    let toc_tag = estargz::external::toc_image_tag(tag);
    dst.push_manifest(&desc, Some(&toc_tag))?;
    Ok(Some(dst.describe(&toc_tag)))
}

/// Download (if remote), convert, upload (if remote) one layer.
fn convert_one(
    src: &Source,
    dst: &Dest,
    d: &Descriptor,
    diff_id: &str,
    opts: &LayerOptions,
    bar: &ProgressBar,
) -> Result<Converted> {
    src.fetch_layer(d, bar)?;
    let c = layer::convert_layer(src.layout(), dst.layout(), d, diff_id, opts, bar)?;
    bar.set_message("uploading");
    dst.push_blob(&c.desc)?;
    if let Some(t) = &c.toc_layer {
        dst.push_blob(t)?;
    }
    Ok(c)
}

/// A prioritized-files list: one path per line, in access order; blank
/// lines and `#` comments skipped, leading `/` and `./` dropped.
pub fn parse_prioritized(list: &str) -> Vec<String> {
    list.lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches("./")
                .trim_start_matches('/')
                .to_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_prioritized_list() {
        assert_eq!(
            super::parse_prioritized("/bin/sh\n\n# comment\n./etc/passwd\nusr/lib/x\n"),
            ["bin/sh", "etc/passwd", "usr/lib/x"]
        );
    }
}
