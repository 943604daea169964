//! `rsnap toc BLOB [--verify] [--toc-digest D]`: print the TOC of an eStargz
//! (or zstd:chunked) blob as JSON; optionally check the TOC against its digest and every
//! chunk against its `chunkDigest` (non-zero exit on the first mismatch).

use anyhow::{Context, Result};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// An eStargz, legacy stargz or zstd:chunked layer blob.
    pub blob: PathBuf,
    /// Fetch, decompress and check every chunk of every file.
    #[arg(long)]
    pub verify: bool,
    /// Check the TOC against this digest (the layer's
    /// containerd.io/snapshot/stargz/toc.digest annotation).
    #[arg(long, value_name = "DIGEST")]
    pub toc_digest: Option<String>,
    /// Print only a summary (TOC digest, entries, chunks), not the JSON.
    #[arg(long, short)]
    pub quiet: bool,
    /// Accept chunks without a chunkDigest (legacy CRFS stargz); they are
    /// decompressed by --verify but cannot be checked.
    #[arg(long)]
    pub allow_no_verification: bool,
}

pub fn run(args: Args) -> Result<()> {
    let file =
        std::fs::File::open(&args.blob).with_context(|| format!("open {}", args.blob.display()))?;
    let size = file.metadata()?.len();
    let opts = estargz::IndexOptions {
        unverified_key: args.allow_no_verification.then(String::new),
        ..Default::default()
    };
    let layer = estargz::reader::open_with(file, size, args.toc_digest.as_deref(), &opts)
        .with_context(|| {
            format!(
                "{} is not a valid eStargz or zstd:chunked blob",
                args.blob.display()
            )
        })?;
    if !args.quiet {
        let mut out = std::io::stdout().lock();
        out.write_all(&layer.toc.to_json())?;
        out.write_all(b"\n")?;
    }
    let chunks = layer.index.all_chunks().count();
    let unverified = layer.index.unverified_chunks();
    if unverified > 0 {
        eprintln!(
            "{unverified} of {chunks} chunks carry no digest (legacy stargz{}): they cannot be verified",
            if layer.footer.legacy { ", 47-byte footer" } else { "" }
        );
    }
    if args.verify {
        for (id, c) in layer.index.all_chunks() {
            layer.read_chunk(c).with_context(|| {
                format!(
                    "{}: chunk at file offset {} failed verification",
                    layer.index.name_of(id),
                    c.file_offset
                )
            })?;
        }
    }
    eprintln!(
        "toc digest {}{}; {} entries, {} chunks{} ({})",
        layer.toc_digest,
        if args.toc_digest.is_some() {
            " (matches)"
        } else {
            ""
        },
        layer.toc.entries.len(),
        chunks,
        match (args.verify, unverified) {
            (false, _) => "",
            (true, 0) => ", all verified",
            (true, _) => ", all with a digest verified, the others decompressed",
        },
        layer.footer.compression
    );
    Ok(())
}
