//! `rsnap profile list|export`: the profiles of real runs the daemon keeps
//! (`[profile] record = true`: per image, the files containers opened in
//! their first seconds), and one of them written as an `rsnap optimize`
//! record, for `rsnap optimize --reuse-record`.

use anyhow::{Context, Result};
use std::path::PathBuf;

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
            for (_, p) in stargzfs::list_profiles(&root)? {
                let cut = if p.truncated { " (truncated)" } else { "" };
                println!(
                    "{}\t{} layers\t{} files{cut}",
                    p.image,
                    p.layers.len(),
                    p.files()
                );
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
            let p = stargzfs::find_profile(&root, &image)?;
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
}
