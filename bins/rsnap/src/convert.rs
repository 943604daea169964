//! `rsnap convert SRC DST`: an image to eStargz, between OCI layouts and
//! registries in any mix (`convert_io`).
//!
//! Reads the tagged manifest (OCI or Docker schema 2; from an index, the
//! host's platform or all of them), converts every distinct layer in
//! parallel (`convert_layer`), then writes the new config (diff IDs change:
//! the TOC is a tar entry), manifest and tag. Blobs are written to temp
//! files and renamed to their digest, so an interrupted run leaves the
//! destination's existing images intact.

use crate::convert_io::{Dest, Source};
use crate::convert_layer::{convert_layer, Action, Converted, LayerOptions};
use crate::oci_layout::{self as oci, Descriptor, Layout};
use anyhow::{ensure, Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Source image: oci:DIR[:TAG] (an OCI image layout) or a registry
    /// reference HOST/REPO[:TAG|@DIGEST].
    pub src: String,
    /// Destination image: oci:DIR[:TAG] (created if missing; TAG defaults to
    /// the source tag) or a registry reference HOST/REPO[:TAG].
    pub dst: String,
    /// File listing paths to prioritize (one per line, in access order);
    /// they go first in their layer, followed by the prefetch landmark.
    #[arg(long, value_name = "FILE")]
    pub prioritized_files: Option<PathBuf>,
    /// Chunk size in bytes for large files (writer default if unset).
    #[arg(long)]
    pub chunk_size: Option<u64>,
    /// gzip compression level 0-9 (writer default if unset).
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub compression_level: Option<u32>,
    /// Layers converted at the same time (default: number of CPUs).
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// From an index, convert this platform (os/arch[/variant]) instead of the host's.
    #[arg(long)]
    pub platform: Option<String>,
    /// From an index, convert every platform.
    #[arg(long, conflicts_with = "platform")]
    pub all_platforms: bool,
    #[command(flatten)]
    pub net: crate::net::NetFlags,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // Flags apply to the registries of SRC and DST (not `oci:` layouts).
    let named: Vec<String> = [&args.src, &args.dst]
        .into_iter()
        .filter(|s| !s.starts_with("oci:"))
        .filter_map(|s| registry::Reference::parse(s).ok())
        .map(|r| r.registry().to_string())
        .collect();
    let cfg = args.net.client_config(named.iter().map(String::as_str));
    let src = Source::open(&args.src, &cfg, rt.handle())?;
    let dst = Dest::open(&args.dst, &src, &cfg, rt.handle())?;
    let tag = dst
        .tag()
        .or_else(|| src.tag())
        .unwrap_or_else(|| "latest".to_string());
    let opts = LayerOptions {
        chunk_size: args.chunk_size,
        compression_level: args.compression_level,
        prioritized_files: match &args.prioritized_files {
            Some(p) => read_prioritized(p)?,
            None => Vec::new(),
        },
    };
    let root = src.root()?;
    let select = Select {
        platform: args.platform.clone(),
        all: args.all_platforms,
    };
    let images = collect_images(&src, &root, &select)?;

    // Every distinct layer once, in parallel: download (registry source),
    // convert, upload (registry destination), each layer on its own.
    let mut todo: Vec<(Descriptor, String)> = Vec::new();
    for img in &images {
        for (l, id) in img.layers.iter().zip(&img.diff_ids) {
            if !todo.iter().any(|(d, _)| d.digest == l.digest) {
                todo.push((l.clone(), id.clone()));
            }
        }
    }
    let jobs = args
        .jobs
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .clamp(1, todo.len().max(1));
    let mp = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:>19} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
    )
    .expect("static template")
    .progress_chars("=> ");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(jobs).build()?;
    let results: Vec<Result<Converted>> = pool.install(|| {
        todo.par_iter()
            .map(|(d, id)| {
                let bar = mp.add(ProgressBar::new(d.size).with_style(style.clone()));
                bar.set_prefix(short(&d.digest).to_string());
                let r = src
                    .fetch_layer(d, &bar)
                    .and_then(|()| convert_layer(src.layout(), dst.layout(), d, id, &opts, &bar))
                    .and_then(|c| {
                        bar.set_message("uploading");
                        dst.push_blob(&c.desc)?;
                        Ok(c)
                    })
                    .with_context(|| format!("layer {}", d.digest));
                bar.finish_with_message(match &r {
                    Ok(c) => format!("{:?}", c.action),
                    Err(_) => "failed".into(),
                });
                r
            })
            .collect()
    });
    let mut done: HashMap<String, Converted> = HashMap::new();
    for ((d, _), r) in todo.iter().zip(results) {
        done.insert(d.digest.clone(), r?);
    }
    let _ = mp.clear();

    let mut out_manifests = Vec::new();
    for img in &images {
        let (config, manifest) = write_image(dst.layout(), img, &done)?;
        dst.push_blob(&config)?;
        out_manifests.push(manifest);
    }
    let out = if root.is_index() {
        for m in &out_manifests {
            dst.push_manifest(m, None)?;
        }
        write_index(&src, dst.layout(), &root, out_manifests)?
    } else {
        out_manifests.pop().context("no image converted")?
    };
    dst.push_manifest(&out, Some(&tag))?;

    for (d, _) in &todo {
        let c = &done[&d.digest];
        println!(
            "{} {:>12} -> {} {:>12} {}",
            short(&d.digest),
            d.size,
            short(&c.desc.digest),
            c.desc.size,
            match c.action {
                Action::Converted => "converted",
                Action::PassedThrough => "already eStargz",
                Action::Kept => "kept (not a tar layer)",
            }
        );
    }
    let (before, after): (u64, u64) = todo.iter().fold((0, 0), |(a, b), (d, _)| {
        (a + d.size, b + done[&d.digest].desc.size)
    });
    println!(
        "{} -> {} {} ({} layers, {before} -> {after} bytes, {:.2}s)",
        args.src,
        dst.describe(&tag),
        out.digest,
        todo.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn short(d: &str) -> &str {
    &d[..d.len().min(19)]
}

fn read_prioritized(p: &std::path::Path) -> Result<Vec<String>> {
    let s = std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
    Ok(s.lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches("./")
                .trim_start_matches('/')
                .to_string()
        })
        .collect())
}

/// One image manifest as read from the source.
struct Image {
    /// The descriptor that pointed at it (platform kept for indexes).
    desc: Descriptor,
    manifest: Value,
    config_desc: Descriptor,
    config: Value,
    layers: Vec<Descriptor>,
    diff_ids: Vec<String>,
}

struct Select {
    platform: Option<String>,
    all: bool,
}

fn host_platform() -> (String, String) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux".to_string(), arch.to_string())
}

fn platform_matches(p: &Value, want: &str) -> bool {
    let mut parts = want.split('/');
    let (os, arch, variant) = (parts.next(), parts.next(), parts.next());
    Some(p["os"].as_str().unwrap_or("")) == os
        && Some(p["architecture"].as_str().unwrap_or("")) == arch
        && variant.is_none_or(|v| p["variant"].as_str() == Some(v))
}

fn collect_images(src: &Source, root: &Descriptor, sel: &Select) -> Result<Vec<Image>> {
    if !root.is_index() {
        return Ok(vec![read_image(src, root)?]);
    }
    let (_, idx) = src.read_json_blob(root)?;
    let ms = oci::parse_index(&idx)?;
    let want = sel.platform.clone().unwrap_or_else(|| {
        let (os, arch) = host_platform();
        format!("{os}/{arch}")
    });
    let chosen: Vec<&Descriptor> = ms
        .iter()
        .filter(|m| !m.is_index())
        .filter(|m| {
            sel.all
                || m.platform
                    .as_ref()
                    .is_some_and(|p| platform_matches(p, &want))
        })
        .collect();
    ensure!(
        !chosen.is_empty(),
        "the index has no manifest for {want} (use --platform or --all-platforms)"
    );
    // Without --all-platforms, the first match wins (as containerd does).
    let chosen = if sel.all {
        chosen
    } else {
        chosen[..1].to_vec()
    };
    chosen.into_iter().map(|d| read_image(src, d)).collect()
}

fn read_image(src: &Source, desc: &Descriptor) -> Result<Image> {
    ensure!(
        desc.media_type == oci::MT_OCI_MANIFEST || desc.media_type == oci::MT_DOCKER_MANIFEST,
        "unsupported manifest media type {:?}",
        desc.media_type
    );
    let (_, manifest) = src.read_json_blob(desc)?;
    let oci::ManifestParts {
        config: config_desc,
        layers,
    } = oci::parse_manifest(&manifest)?;
    let (_, config) = src.read_json_blob(&config_desc)?;
    let diff_ids = oci::parse_diff_ids(&config, layers.len())?;
    Ok(Image {
        desc: desc.clone(),
        manifest,
        config_desc,
        config,
        layers,
        diff_ids,
    })
}

/// Write the converted config and manifest; returns both descriptors.
fn write_image(
    dst: &Layout,
    img: &Image,
    done: &HashMap<String, Converted>,
) -> Result<(Descriptor, Descriptor)> {
    let conv: Vec<&Converted> = img.layers.iter().map(|l| &done[&l.digest]).collect();
    let mut config = img.config.clone();
    config["rootfs"]["diff_ids"] = conv
        .iter()
        .map(|c| Value::from(c.diff_id.clone()))
        .collect();
    let config_bytes = serde_json::to_vec(&config)?;
    let config_mt = if img.config_desc.media_type == oci::MT_DOCKER_CONFIG {
        oci::MT_OCI_CONFIG
    } else {
        img.config_desc.media_type.as_str()
    };
    let mut config_desc = dst.put_blob(config_mt, &config_bytes)?;
    config_desc.annotations = img.config_desc.annotations.clone();

    let mut manifest = img.manifest.clone();
    manifest["mediaType"] = oci::MT_OCI_MANIFEST.into();
    manifest["config"] = serde_json::to_value(&config_desc)?;
    manifest["layers"] = serde_json::to_value(conv.iter().map(|c| &c.desc).collect::<Vec<_>>())?;
    let mut desc = dst.put_blob(oci::MT_OCI_MANIFEST, &serde_json::to_vec(&manifest)?)?;
    desc.platform = img.desc.platform.clone();
    Ok((config_desc, desc))
}

fn write_index(
    src: &Source,
    dst: &Layout,
    root: &Descriptor,
    manifests: Vec<Descriptor>,
) -> Result<Descriptor> {
    let (_, mut idx) = src.read_json_blob(root)?;
    idx["mediaType"] = oci::MT_OCI_INDEX.into();
    idx["manifests"] = serde_json::to_value(manifests)?;
    dst.put_blob(oci::MT_OCI_INDEX, &serde_json::to_vec(&idx)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci_layout::OciRef;

    #[test]
    fn parses_oci_refs() {
        let r = OciRef::parse("oci:/tmp/x:v1").unwrap();
        assert_eq!(
            r,
            OciRef {
                dir: "/tmp/x".into(),
                tag: Some("v1".into())
            }
        );
        let r = OciRef::parse("oci:/tmp/x").unwrap();
        assert_eq!(
            r,
            OciRef {
                dir: "/tmp/x".into(),
                tag: None
            }
        );
        let r = OciRef::parse("oci:rel/a:b/c").unwrap();
        assert_eq!(
            r,
            OciRef {
                dir: "rel/a:b/c".into(),
                tag: None
            }
        );
        assert!(OciRef::parse("docker.io/library/busybox").is_err());
        assert!(OciRef::parse("oci:").is_err());
        assert!(OciRef::parse("oci:/x:bad tag").is_err());
    }

    #[test]
    fn matches_platforms() {
        let p = serde_json::json!({"os": "linux", "architecture": "arm", "variant": "v7"});
        assert!(platform_matches(&p, "linux/arm"));
        assert!(platform_matches(&p, "linux/arm/v7"));
        assert!(!platform_matches(&p, "linux/arm/v6"));
        assert!(!platform_matches(&p, "linux/amd64"));
    }

    #[test]
    fn reads_prioritized_list() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("list");
        std::fs::write(&p, "/bin/sh\n\n# comment\n./etc/passwd\nusr/lib/x\n").unwrap();
        assert_eq!(
            read_prioritized(&p).unwrap(),
            ["bin/sh", "etc/passwd", "usr/lib/x"]
        );
    }
}
