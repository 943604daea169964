//! From what was opened to what each layer puts first: accesses (inodes)
//! mapped to their layer and path, a record turned into the per-layer
//! prioritized lists of the conversion, and `--prefetch-list` paths and
//! globs added to the layer whose copy the rootfs shows.

use crate::error::{Error, Result};
use crate::fanotify::Access;
use crate::record::{LayerRecord, Record, VERSION};
use crate::rootfs::InodeTable;
use crate::unpack::{topmost, Listing};
use std::collections::{HashMap, HashSet};

/// The record of a run over `layers` (digests, bottom first).
pub(crate) fn record_of(
    image: &str,
    layers: &[String],
    table: &InodeTable,
    accesses: &[Access],
) -> Record {
    // An image may list one layer twice: the record has it once.
    let mut distinct: Vec<&String> = Vec::new();
    for d in layers {
        if !distinct.contains(&d) {
            distinct.push(d);
        }
    }
    let slot = |i: usize| distinct.iter().position(|d| **d == layers[i]).unwrap_or(0);
    let mut files: Vec<Vec<String>> = vec![Vec::new(); distinct.len()];
    for a in accesses {
        let Some(names) = table.get(&a.ino) else {
            // Created by the workload (upper dir) or not a layer file.
            tracing::debug!(link = %a.link, "opened file not in any layer");
            continue;
        };
        // Hard links share an inode: prefer the name the opener used.
        let (layer, path) = names
            .iter()
            .find(|(_, p)| a.link.ends_with(&format!("/{p}")))
            .unwrap_or(&names[0]);
        let f = &mut files[slot(*layer)];
        if !f.contains(path) {
            f.push(path.clone());
        }
    }
    Record {
        version: VERSION,
        image: image.to_string(),
        layers: distinct
            .into_iter()
            .zip(files)
            .map(|(d, files)| LayerRecord {
                digest: d.clone(),
                files,
            })
            .collect(),
    }
}

/// One `--prefetch-list` line: a literal path or a glob.
enum Want {
    Path(String),
    Glob(glob::Pattern),
}

/// Parse a prefetch list: one path or glob per line, `#` comments and
/// blank lines skipped, leading `/` optional.
fn parse_prefetch(list: &str) -> Result<Vec<Want>> {
    list.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let p = l.trim_start_matches('/');
            if p.contains(['*', '?', '[']) {
                glob::Pattern::new(p)
                    .map(Want::Glob)
                    .map_err(|source| Error::Glob {
                        pattern: l.to_string(),
                        source,
                    })
            } else {
                Ok(Want::Path(p.trim_end_matches('/').to_string()))
            }
        })
        .collect()
}

/// The per-layer lists (every layer has one, maybe empty: an empty list
/// gives the no-prefetch landmark): the record's files, then the prefetch
/// list's matches in the layer that has them.
pub(crate) fn layer_lists(
    layers: &[String],
    record: &Record,
    prefetch: Option<(&str, &[Listing])>,
) -> Result<HashMap<String, Vec<String>>> {
    for l in &record.layers {
        if !layers.contains(&l.digest) {
            tracing::warn!(layer = %l.digest, "the record names a layer the image does not have; ignored");
        }
    }
    let mut lists: Vec<Vec<String>> = layers
        .iter()
        .map(|d| record.files(d).map(<[String]>::to_vec).unwrap_or_default())
        .collect();
    if let Some((text, listings)) = prefetch {
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        let mut have: Vec<HashSet<String>> =
            lists.iter().map(|l| l.iter().cloned().collect()).collect();
        let mut add = |i: usize, p: &str| {
            if have[i].insert(p.to_string()) {
                lists[i].push(p.to_string());
            }
        };
        for w in parse_prefetch(text)? {
            match w {
                Want::Path(p) => match topmost(listings, &p) {
                    Some(i) => add(i, &p),
                    None => tracing::warn!(path = %p, "prefetch-list path not in the image"),
                },
                Want::Glob(g) => {
                    for (i, l) in listings.iter().enumerate() {
                        for f in &l.files {
                            if g.matches_with(f, opts) && topmost(listings, f) == Some(i) {
                                add(i, f);
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(layers.iter().cloned().zip(lists).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(files: &[&str]) -> Listing {
        Listing {
            files: files.iter().map(|s| s.to_string()).collect(),
            file_set: files.iter().map(|s| s.to_string()).collect(),
            ..Listing::default()
        }
    }

    #[test]
    fn maps_accesses_to_layers_in_order() {
        let layers = ["sha256:a".to_string(), "sha256:b".to_string()];
        let mut t = InodeTable::new();
        t.insert(1, vec![(0, "bin/sh".into())]);
        t.insert(2, vec![(1, "lib/x".into()), (1, "lib/y".into())]);
        t.insert(3, vec![(1, "etc/conf".into())]);
        let acc = |ino, link: &str| Access {
            ino,
            link: link.into(),
        };
        let r = record_of(
            "sha256:i",
            &layers,
            &t,
            &[
                acc(3, ""),
                acc(1, "/x/bin/sh"),
                acc(2, "/m/lib/y"),
                acc(9, "/new"),
            ],
        );
        assert_eq!(r.layers[0].files, ["bin/sh"]);
        assert_eq!(r.layers[1].files, ["etc/conf", "lib/y"]);
    }

    #[test]
    fn adds_prefetch_paths_and_globs_to_their_layer() {
        let layers = ["sha256:a".to_string(), "sha256:b".to_string()];
        let listings = [
            listing(&["usr/lib/a.so", "usr/lib/b.so", "etc/x", "etc/sub/y"]),
            listing(&["usr/lib/b.so", "data"]),
        ];
        let record = Record {
            version: VERSION,
            image: "sha256:i".into(),
            layers: vec![LayerRecord {
                digest: "sha256:b".into(),
                files: vec!["data".into()],
            }],
        };
        let list = "# comment\n/usr/lib/*.so\netc/x\n\nnot/there\n";
        let l = layer_lists(&layers, &record, Some((list, &listings))).unwrap();
        assert_eq!(l["sha256:a"], ["usr/lib/a.so", "etc/x"]);
        assert_eq!(l["sha256:b"], ["data", "usr/lib/b.so"]);
        // `*` does not cross `/`.
        let l = layer_lists(&layers, &record, Some(("etc/*", &listings))).unwrap();
        assert_eq!(l["sha256:a"], ["etc/x"]);
        assert!(layer_lists(&layers, &record, Some(("[", &listings))).is_err());
        let l = layer_lists(&layers, &record, None).unwrap();
        assert!(l["sha256:a"].is_empty());
    }
}
