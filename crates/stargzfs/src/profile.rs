//! Profiles of real runs (opt-in, `[profile] record = true`): per image, the
//! files containers open in their first seconds, per layer, in first-open
//! order. Paths and layer digests only, never file contents; bounded by a
//! cap of files per image and of images held.
//!
//! The window of an image starts at the first open of any of its files
//! (a container starting; pulling opens nothing) and lasts `window`; then
//! the profile is written to `ROOT/profiles/<sha256 of the image
//! reference>.json` ([`SavedProfile`]) and recording for that image stops
//! until the daemon restarts. [`list_profiles`] and [`find_profile`] read
//! them back; `rsnap profile export` turns one into an `rsnap optimize`
//! record.

use crate::error::Error;
use lazyfs::{LazyLayer, OpenObserver};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tracing::{info, warn};

/// Format version of [`SavedProfile`].
pub const PROFILE_VERSION: u32 = 1;

/// How the recorder is bounded.
#[derive(Debug, Clone)]
pub struct ProfileConfig {
    /// Files opened this long after an image's first open are not recorded.
    pub window: Duration,
    /// At most this many files per image (the rest is dropped, noted).
    pub max_files: usize,
    /// At most this many images recorded at once (the oldest is dropped).
    pub max_images: usize,
}

impl Default for ProfileConfig {
    fn default() -> Self {
        ProfileConfig {
            window: Duration::from_secs(10),
            max_files: 10_000,
            max_images: 64,
        }
    }
}

/// What is written per image (and read by `rsnap profile`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedProfile {
    pub version: u32,
    /// The image reference the layers were mounted for.
    pub image: String,
    pub window_sec: u64,
    /// Files were dropped at the cap.
    pub truncated: bool,
    /// Bottom layer first (as the image lists them), then any others.
    pub layers: Vec<SavedLayer>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLayer {
    pub digest: String,
    /// Layer-relative paths, first open first.
    pub files: Vec<String>,
}

/// The file the profile of `image` is kept in, under the daemon's root.
pub fn profile_path(root: &Path, image: &str) -> PathBuf {
    let h: String = Sha256::digest(image.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    profiles_dir(root).join(format!("{h}.json"))
}

/// Where every profile is kept.
pub fn profiles_dir(root: &Path) -> PathBuf {
    root.join("profiles")
}

#[derive(Default)]
struct ImageProfile {
    /// The image's layers as the labels list them (bottom first).
    order: Vec<String>,
    layers: HashMap<String, (HashSet<u64>, Vec<String>)>,
    started: Option<Instant>,
    total: usize,
    truncated: bool,
    done: bool,
    /// When recording for it began (the oldest is dropped at the cap).
    born: u64,
}

/// Records opens of the layers it is attached to.
pub struct Recorder {
    cfg: ProfileConfig,
    root: PathBuf,
    rt: Handle,
    images: Mutex<HashMap<String, ImageProfile>>,
    births: std::sync::atomic::AtomicU64,
}

struct LayerObserver {
    rec: Arc<Recorder>,
    image: String,
}

impl OpenObserver for LayerObserver {
    fn opened(&self, layer: &LazyLayer, ino: u64) {
        self.rec.opened(&self.image, layer, ino);
    }
}

impl Recorder {
    pub fn new(root: &Path, cfg: ProfileConfig, rt: Handle) -> Arc<Recorder> {
        Arc::new(Recorder {
            cfg,
            root: root.to_path_buf(),
            rt,
            images: Mutex::new(HashMap::new()),
            births: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Record the opens of `layer`, a layer of `image` whose layers are
    /// `order` (bottom first; may be empty when the labels do not list them).
    pub fn attach(self: &Arc<Self>, layer: &LazyLayer, image: &str, order: Vec<String>) {
        {
            let mut images = self.images.lock();
            if !images.contains_key(image) && images.len() >= self.cfg.max_images {
                let oldest = images
                    .iter()
                    .min_by_key(|(_, p)| p.born)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    images.remove(&k);
                }
            }
            let born = self
                .births
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = images
                .entry(image.to_string())
                .or_insert_with(|| ImageProfile {
                    born,
                    ..Default::default()
                });
            if p.order.is_empty() {
                p.order = order;
            }
        }
        layer.observe_opens(Arc::new(LayerObserver {
            rec: self.clone(),
            image: image.to_string(),
        }));
    }

    fn opened(self: &Arc<Self>, image: &str, layer: &LazyLayer, ino: u64) {
        let now = Instant::now();
        let mut images = self.images.lock();
        let Some(p) = images.get_mut(image) else {
            return;
        };
        if p.done {
            return;
        }
        let first = p.started.is_none();
        let started = *p.started.get_or_insert(now);
        if now.duration_since(started) > self.cfg.window {
            return;
        }
        let (seen, files) = p.layers.entry(layer.digest().to_string()).or_default();
        if seen.contains(&ino) {
            return;
        }
        if p.total >= self.cfg.max_files {
            p.truncated = true;
        } else if let Some(path) = layer.path_of_inode(ino) {
            seen.insert(ino);
            files.push(path);
            p.total += 1;
        }
        drop(images);
        if first {
            let (me, image, window) = (self.clone(), image.to_string(), self.cfg.window);
            self.rt.spawn(async move {
                tokio::time::sleep(window).await;
                me.finish(&image).await;
            });
        }
    }

    /// The window of `image` is over: keep its profile on disk.
    async fn finish(&self, image: &str) {
        let saved = {
            let mut images = self.images.lock();
            let Some(p) = images.get_mut(image) else {
                return;
            };
            p.done = true;
            let mut digests: Vec<String> = p
                .order
                .iter()
                .filter(|d| p.layers.contains_key(*d))
                .cloned()
                .collect();
            let mut rest: Vec<String> = p
                .layers
                .keys()
                .filter(|d| !p.order.contains(d))
                .cloned()
                .collect();
            rest.sort();
            digests.extend(rest);
            SavedProfile {
                version: PROFILE_VERSION,
                image: image.to_string(),
                window_sec: self.cfg.window.as_secs(),
                truncated: p.truncated,
                layers: digests
                    .into_iter()
                    .map(|d| {
                        let files = p.layers[&d].1.clone();
                        SavedLayer { digest: d, files }
                    })
                    .collect(),
            }
        };
        let path = profile_path(&self.root, image);
        let files: usize = saved.layers.iter().map(|l| l.files.len()).sum();
        let res = tokio::task::spawn_blocking(move || write_atomic(&path, &saved))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        match res {
            Ok(()) => info!(image, files, "profile of the image's first seconds kept"),
            Err(e) => warn!(image, error = %e, "cannot keep the image's profile"),
        }
    }
}

fn write_atomic(path: &Path, p: &SavedProfile) -> std::io::Result<()> {
    let dir = path.parent().expect("a profile path has a parent");
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec_pretty(p)?)?;
    std::fs::rename(&tmp, path)
}

/// Every readable profile under the daemon's `root`, sorted by image
/// (unreadable ones are skipped with a warning).
pub fn list_profiles(root: &Path) -> Result<Vec<(PathBuf, SavedProfile)>, Error> {
    let dir = profiles_dir(root);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(Error::Profiles { path: dir, source }),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let path = e.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        match SavedProfile::read(&path) {
            Ok(p) => out.push((path, p)),
            Err(err) => warn!(file = %path.display(), error = %err, "skipping a profile"),
        }
    }
    out.sort_by(|a, b| a.1.image.cmp(&b.1.image));
    Ok(out)
}

/// The profile of `image` under the daemon's `root`: its exact reference,
/// else the one profile whose reference contains it.
pub fn find_profile(root: &Path, image: &str) -> Result<SavedProfile, Error> {
    let exact = profile_path(root, image);
    if exact.exists() {
        return SavedProfile::read(&exact).map_err(|source| Error::Profiles {
            path: exact,
            source,
        });
    }
    let mut hits: Vec<_> = list_profiles(root)?
        .into_iter()
        .filter(|(_, p)| p.image.contains(image))
        .collect();
    match hits.len() {
        1 => Ok(hits.remove(0).1),
        0 => Err(Error::NoProfile {
            image: image.to_string(),
            dir: profiles_dir(root),
        }),
        _ => Err(Error::ProfileAmbiguous {
            image: image.to_string(),
            images: hits.into_iter().map(|(_, p)| p.image).collect(),
        }),
    }
}

impl SavedProfile {
    /// How many files it lists, over all layers.
    pub fn files(&self) -> usize {
        self.layers.iter().map(|l| l.files.len()).sum()
    }

    /// Read a kept profile (untrusted as any file: shape checked by serde;
    /// `rsnap` checks paths and digests when it makes a record of it).
    pub fn read(path: &Path) -> std::io::Result<SavedProfile> {
        let bytes = std::fs::read(path)?;
        if bytes.len() > 64 << 20 {
            return Err(std::io::Error::other("profile file too large"));
        }
        let p: SavedProfile = serde_json::from_slice(&bytes)?;
        if p.version != PROFILE_VERSION {
            return Err(std::io::Error::other(format!(
                "profile version {} (this build reads {PROFILE_VERSION})",
                p.version
            )));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_is_found_by_a_unique_part_of_its_reference() {
        let root = tempfile::tempdir().unwrap();
        for image in ["reg.example/app:v1", "reg.example/other:v1"] {
            let p = SavedProfile {
                version: PROFILE_VERSION,
                image: image.into(),
                window_sec: 10,
                truncated: false,
                layers: vec![],
            };
            write_atomic(&profile_path(root.path(), image), &p).unwrap();
        }
        assert_eq!(
            find_profile(root.path(), "reg.example/app:v1")
                .unwrap()
                .image,
            "reg.example/app:v1"
        );
        assert_eq!(
            find_profile(root.path(), "app:v1").unwrap().image,
            "reg.example/app:v1"
        );
        assert!(matches!(
            find_profile(root.path(), "reg.example"),
            Err(Error::ProfileAmbiguous { .. })
        ));
        assert!(matches!(
            find_profile(root.path(), "nothing"),
            Err(Error::NoProfile { .. })
        ));
        let listed: Vec<_> = list_profiles(root.path())
            .unwrap()
            .into_iter()
            .map(|(_, p)| p.image)
            .collect();
        assert_eq!(listed, ["reg.example/app:v1", "reg.example/other:v1"]);
    }
}
