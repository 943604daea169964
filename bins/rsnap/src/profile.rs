//! `rsnap profile list|export`: the profiles of real runs the daemon keeps
//! (`[profile] record = true`: per image, the files containers opened in
//! their first seconds), and one of them written as an `rsnap optimize`
//! record, for `rsnap optimize --reuse-record`.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// The images the daemon kept a profile of, with their file counts.
    List {
        /// The daemon's state directory.
        #[arg(long, default_value = "/var/lib/remote-snapshotter")]
        root: PathBuf,
    },
    /// Write an image's profile as an optimize record (JSON).
    Export {
        /// The image reference as the daemon mounted it (a unique part of
        /// it is enough, e.g. `app:v1`).
        image: String,
        /// Where to write the record.
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
        /// The daemon's state directory.
        #[arg(long, default_value = "/var/lib/remote-snapshotter")]
        root: PathBuf,
        /// The image manifest's digest for the record; asked of the
        /// registry when not given.
        #[arg(long, value_name = "sha256:...")]
        image_digest: Option<String>,
        #[command(flatten)]
        net_flags: crate::net::NetFlags,
    },
}

pub fn run(args: Args) -> Result<()> {
    match args.cmd {
        Cmd::List { root } => {
            for (_, p) in profiles(&root)? {
                let files: usize = p.layers.iter().map(|l| l.files.len()).sum();
                let cut = if p.truncated { " (truncated)" } else { "" };
                println!("{}\t{} layers\t{files} files{cut}", p.image, p.layers.len());
            }
            Ok(())
        }
        Cmd::Export {
            image,
            output,
            root,
            image_digest,
            net_flags,
        } => {
            let p = find(&root, &image)?;
            let digest = match image_digest {
                Some(d) => d,
                None => manifest_digest(&p.image, &net_flags).with_context(|| {
                    format!(
                        "resolving {} (give --image-digest when the registry is not reachable)",
                        p.image
                    )
                })?,
            };
            let record = to_record(&p, &digest)?;
            std::fs::write(&output, record.to_json())
                .with_context(|| format!("writing {}", output.display()))?;
            let files: usize = record.layers.iter().map(|l| l.files.len()).sum();
            eprintln!(
                "{}: {} layers, {files} files -> {}",
                p.image,
                record.layers.len(),
                output.display()
            );
            Ok(())
        }
    }
}

/// Every readable profile under `root` (unreadable ones are skipped with a
/// warning).
fn profiles(root: &Path) -> Result<Vec<(PathBuf, stargzfs::SavedProfile)>> {
    let dir = stargzfs::profiles_dir(root);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match stargzfs::SavedProfile::read(&path) {
            Ok(p) => out.push((path, p)),
            Err(err) => tracing::warn!(file = %path.display(), error = %err, "skipping a profile"),
        }
    }
    out.sort_by(|a, b| a.1.image.cmp(&b.1.image));
    Ok(out)
}

/// The profile of `image`: its exact reference, else the one profile
/// whose reference contains it.
fn find(root: &Path, image: &str) -> Result<stargzfs::SavedProfile> {
    let exact = stargzfs::profile_path(root, image);
    if exact.exists() {
        return stargzfs::SavedProfile::read(&exact)
            .with_context(|| format!("reading {}", exact.display()));
    }
    let mut hits: Vec<_> = profiles(root)?
        .into_iter()
        .filter(|(_, p)| p.image.contains(image))
        .collect();
    match hits.len() {
        1 => Ok(hits.remove(0).1),
        0 => bail!(
            "no profile of {image} under {} (is `[profile] record = true` set, and has a container of it run for the window?)",
            stargzfs::profiles_dir(root).display()
        ),
        _ => bail!(
            "{image} names several profiled images: {}",
            hits.iter()
                .map(|(_, p)| p.image.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The profile as an optimize record, checked as `--reuse-record` will
/// check it (digests, clean paths).
fn to_record(p: &stargzfs::SavedProfile, image_digest: &str) -> Result<optimize::Record> {
    let r = optimize::Record {
        version: optimize::record::VERSION,
        image: image_digest.to_string(),
        layers: p
            .layers
            .iter()
            .map(|l| optimize::LayerRecord {
                digest: l.digest.clone(),
                files: l.files.clone(),
            })
            .collect(),
    };
    Ok(optimize::Record::parse(r.to_json().as_bytes())?)
}

fn manifest_digest(image: &str, net: &crate::net::NetFlags) -> Result<String> {
    let r = registry::Reference::parse(image)?;
    let cfg = net.client_config([r.registry()]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let client = registry::Client::new(cfg)?;
    let m = rt.block_on(client.fetch_manifest(&r))?;
    Ok(m.resolved.digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn a_profile_becomes_a_checked_record() {
        let p = stargzfs::SavedProfile {
            version: stargzfs::PROFILE_VERSION,
            image: "reg.example/app:v1".into(),
            window_sec: 10,
            truncated: false,
            layers: vec![stargzfs::SavedLayer {
                digest: digest('b'),
                files: vec!["bin/sh".into(), "lib/ld-musl.so.1".into()],
            }],
        };
        let r = to_record(&p, &digest('a')).unwrap();
        assert_eq!(r.image, digest('a'));
        assert_eq!(
            r.files(&digest('b')).unwrap(),
            ["bin/sh", "lib/ld-musl.so.1"]
        );
        let mut bad = p.clone();
        bad.layers[0].files.push("../etc/passwd".into());
        assert!(to_record(&bad, &digest('a')).is_err());
        assert!(to_record(&p, "latest").is_err());
    }

    #[test]
    fn export_finds_a_profile_by_a_unique_part_of_its_reference() {
        let root = tempfile::tempdir().unwrap();
        for image in ["reg.example/app:v1", "reg.example/other:v1"] {
            let p = stargzfs::SavedProfile {
                version: stargzfs::PROFILE_VERSION,
                image: image.into(),
                window_sec: 10,
                truncated: false,
                layers: vec![],
            };
            let path = stargzfs::profile_path(root.path(), image);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, serde_json::to_vec(&p).unwrap()).unwrap();
        }
        assert_eq!(
            find(root.path(), "reg.example/app:v1").unwrap().image,
            "reg.example/app:v1"
        );
        assert_eq!(
            find(root.path(), "app:v1").unwrap().image,
            "reg.example/app:v1"
        );
        assert!(find(root.path(), "reg.example").is_err(), "ambiguous");
        assert!(find(root.path(), "nothing").is_err());
    }
}
