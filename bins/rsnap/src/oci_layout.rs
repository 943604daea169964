//! An OCI image layout on disk (`oci-layout`, `index.json`, `blobs/ALG/HEX`).
//!
//! Manifests and configs stay `serde_json::Value` so that a conversion keeps
//! every field it does not know about. Everything read from a layout is
//! checked against its digest; digests are validated before they become
//! paths, so a hostile index cannot point outside `blobs/`.

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MT_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const MT_DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const MT_DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Manifests, indexes and configs larger than this are refused: they are
/// read whole into memory and come from an untrusted source.
pub const MAX_JSON_BLOB: u64 = 16 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Value>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: String, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
            urls: None,
        }
    }

    pub fn is_index(&self) -> bool {
        self.media_type == MT_OCI_INDEX || self.media_type == MT_DOCKER_LIST
    }
}

/// `sha256:` and 64 lowercase hex digits; anything else is refused.
pub fn check_digest(d: &str) -> Result<&str> {
    let hex = d
        .strip_prefix("sha256:")
        .with_context(|| format!("unsupported digest {d:?} (only sha256)"))?;
    ensure!(
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "malformed digest {d:?}"
    );
    Ok(hex)
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The manifests an index lists (index.json or an image index blob).
pub fn parse_index(idx: &Value) -> Result<Vec<Descriptor>> {
    ensure!(idx.is_object(), "index is not a JSON object");
    let ms: Vec<Descriptor> =
        serde_json::from_value(idx["manifests"].clone()).context("index: bad manifests list")?;
    for m in &ms {
        check_digest(&m.digest)?;
    }
    Ok(ms)
}

/// The manifest tagged `tag` (`org.opencontainers.image.ref.name`), or the
/// only one when `tag` is `None`.
pub fn select_tag(ms: Vec<Descriptor>, tag: Option<&str>) -> Result<Descriptor> {
    match tag {
        Some(t) => {
            let mut hits = ms
                .into_iter()
                .filter(|m| m.annotations.get(REF_NAME).map(String::as_str) == Some(t));
            let d = hits
                .next()
                .with_context(|| format!("no image tagged {t:?}"))?;
            ensure!(hits.next().is_none(), "tag {t:?} names two images");
            Ok(d)
        }
        None => match ms.len() {
            1 => Ok(ms.into_iter().next().expect("one element")),
            0 => bail!("the layout holds no image"),
            n => bail!("the layout holds {n} images: name one with oci:DIR:TAG"),
        },
    }
}

/// What a conversion needs from an image manifest; digests are validated.
#[derive(Debug)]
pub struct ManifestParts {
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

pub fn parse_manifest(m: &Value) -> Result<ManifestParts> {
    ensure!(m.is_object(), "manifest is not a JSON object");
    let config: Descriptor =
        serde_json::from_value(m["config"].clone()).context("manifest: bad config descriptor")?;
    let layers: Vec<Descriptor> =
        serde_json::from_value(m["layers"].clone()).context("manifest: bad layers")?;
    check_digest(&config.digest)?;
    for l in &layers {
        check_digest(&l.digest)?;
    }
    Ok(ManifestParts { config, layers })
}

/// `rootfs.diff_ids` of an image config, one valid digest per layer.
pub fn parse_diff_ids(config: &Value, layers: usize) -> Result<Vec<String>> {
    ensure!(
        config.is_object() && config["rootfs"].is_object(),
        "config has no rootfs object"
    );
    let ids: Vec<String> = serde_json::from_value(config["rootfs"]["diff_ids"].clone())
        .context("config: bad rootfs.diff_ids")?;
    ensure!(
        ids.len() == layers,
        "manifest has {layers} layers but config has {} diff IDs",
        ids.len()
    );
    for d in &ids {
        check_digest(d)?;
    }
    Ok(ids)
}

/// `oci:DIR[:TAG]`.
#[derive(Debug, PartialEq)]
pub struct OciRef {
    pub dir: PathBuf,
    pub tag: Option<String>,
}

impl OciRef {
    pub fn parse(s: &str) -> Result<OciRef> {
        let Some(rest) = s.strip_prefix("oci:") else {
            bail!("{s:?}: only OCI layouts (oci:DIR[:TAG]) are supported so far");
        };
        ensure!(!rest.is_empty(), "{s:?}: missing directory");
        // A tag never contains '/', so "oci:a:b/c" is the directory "a:b/c".
        match rest.rsplit_once(':') {
            Some((dir, tag)) if !tag.contains('/') && !dir.is_empty() => {
                ensure!(valid_tag(tag), "{s:?}: invalid tag {tag:?}");
                Ok(OciRef {
                    dir: dir.into(),
                    tag: Some(tag.to_string()),
                })
            }
            _ => Ok(OciRef {
                dir: rest.into(),
                tag: None,
            }),
        }
    }
}

/// The OCI distribution spec's tag grammar: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !t.starts_with(['.', '-'])
}

pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn open(dir: &Path) -> Result<Layout> {
        let marker = dir.join("oci-layout");
        let b = std::fs::read(&marker)
            .with_context(|| format!("{} is not an OCI layout", dir.display()))?;
        let v: Value = serde_json::from_slice(&b).context("oci-layout is not JSON")?;
        ensure!(
            v["imageLayoutVersion"] == "1.0.0",
            "unsupported imageLayoutVersion in {}",
            marker.display()
        );
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    /// Open the layout at `dir`, creating an empty one if there is none.
    pub fn create(dir: &Path) -> Result<Layout> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("create {}", dir.display()))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        if !dir.join("index.json").exists() {
            let idx = json!({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": []});
            write_atomic(&dir.join("index.json"), &serde_json::to_vec(&idx)?)?;
        }
        Layout::open(dir)
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join("blobs/sha256").join(check_digest(digest)?))
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    pub fn index(&self) -> Result<Value> {
        let p = self.dir.join("index.json");
        let f = std::fs::File::open(&p).with_context(|| format!("open {}", p.display()))?;
        let mut b = Vec::new();
        f.take(MAX_JSON_BLOB + 1).read_to_end(&mut b)?;
        ensure!(b.len() as u64 <= MAX_JSON_BLOB, "index.json is too large");
        serde_json::from_slice(&b).context("index.json is not valid JSON")
    }

    /// The descriptor tagged `tag` in index.json, or the only one if `tag`
    /// is `None`.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Descriptor> {
        select_tag(parse_index(&self.index()?)?, tag)
            .with_context(|| format!("in {}", self.dir.display()))
    }

    /// A small blob (manifest, index, config), read whole and verified.
    pub fn read_json_blob(&self, d: &Descriptor) -> Result<(Vec<u8>, Value)> {
        ensure!(
            d.size <= MAX_JSON_BLOB,
            "{} is too large ({} bytes)",
            d.digest,
            d.size
        );
        let p = self.blob_path(&d.digest)?;
        let f = std::fs::File::open(&p).with_context(|| format!("open blob {}", d.digest))?;
        let mut b = Vec::new();
        f.take(MAX_JSON_BLOB + 1).read_to_end(&mut b)?;
        ensure!(
            b.len() as u64 == d.size,
            "blob {} has {} bytes, descriptor says {}",
            d.digest,
            b.len(),
            d.size
        );
        ensure!(
            sha256_digest(&b) == d.digest,
            "blob {} does not match its digest",
            d.digest
        );
        let v =
            serde_json::from_slice(&b).with_context(|| format!("blob {} is not JSON", d.digest))?;
        Ok((b, v))
    }

    /// Store `data` (if not already there) and describe it.
    pub fn put_blob(&self, media_type: &str, data: &[u8]) -> Result<Descriptor> {
        let mut w = self.blob_writer()?;
        w.write_all(data)?;
        let (digest, size) = w.commit()?;
        Ok(Descriptor::new(media_type, digest, size))
    }

    /// A temp file in `blobs/sha256` that becomes the blob named by its
    /// digest on `commit`.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let file = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(self.dir.join("blobs/sha256"))
            .context("create temp blob")?;
        Ok(BlobWriter {
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            size: 0,
            dir: self.dir.clone(),
        })
    }

    /// Point `tag` at `desc` in index.json (other entries are kept).
    pub fn set_tag(&self, tag: &str, mut desc: Descriptor) -> Result<()> {
        let mut idx = self.index()?;
        ensure!(idx.is_object(), "index.json is not an object");
        let ms = idx["manifests"]
            .as_array_mut()
            .context("index.json: manifests is not a list")?;
        ms.retain(|m| m["annotations"][REF_NAME] != tag);
        desc.annotations
            .insert(REF_NAME.to_string(), tag.to_string());
        ms.push(serde_json::to_value(desc)?);
        write_atomic(&self.dir.join("index.json"), &serde_json::to_vec(&idx)?)
    }
}

/// Writes a blob while hashing it; nothing appears under its final name
/// until `commit`, and a dropped writer leaves nothing behind.
pub struct BlobWriter {
    file: std::io::BufWriter<tempfile::NamedTempFile>,
    hasher: Sha256,
    size: u64,
    dir: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Rename to `blobs/sha256/HEX`; returns (digest, size).
    pub fn commit(self) -> Result<(String, u64)> {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        let tmp = self.file.into_inner().map_err(|e| e.into_error())?;
        tmp.as_file().sync_data()?;
        let dest = self.dir.join("blobs/sha256").join(&digest[7..]);
        if dest.exists() {
            // Same digest, same bytes: keep the existing file.
            return Ok((digest, self.size));
        }
        let f = tmp.persist(&dest).map_err(|e| e.error)?;
        let mut perm = f.metadata()?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
        f.set_permissions(perm)?;
        Ok((digest, self.size))
    }
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().context("path has no parent")?;
    let mut t = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    t.write_all(data)?;
    t.as_file().sync_data()?;
    let f = t.persist(path).map_err(|e| e.error)?;
    let mut perm = f.metadata()?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    f.set_permissions(perm)?;
    Ok(())
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    /// Read the rest (so the digest covers the whole stream) and finish.
    pub fn finish(mut self) -> std::io::Result<(String, u64)> {
        std::io::copy(&mut self, &mut std::io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_validated_before_becoming_paths() {
        let h = "a".repeat(64);
        assert!(check_digest(&format!("sha256:{h}")).is_ok());
        for bad in [
            "sha256:../../etc/passwd".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha512:{h}"),
            format!("sha256:{}", "a".repeat(63)),
            h.clone(),
        ] {
            assert!(check_digest(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn blobs_tags_and_verification() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::create(d.path()).unwrap();
        let desc = l.put_blob(MT_OCI_CONFIG, br#"{"a":1}"#).unwrap();
        assert_eq!(desc.digest, sha256_digest(br#"{"a":1}"#));
        let (_, v) = l.read_json_blob(&desc).unwrap();
        assert_eq!(v["a"], 1);
        l.set_tag("v1", desc.clone()).unwrap();
        l.set_tag("v1", desc.clone()).unwrap();
        l.set_tag("v2", desc.clone()).unwrap();
        assert_eq!(l.index().unwrap()["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(l.resolve(Some("v2")).unwrap().digest, desc.digest);
        assert!(l.resolve(None).is_err(), "two images, no tag");
        assert!(l.resolve(Some("nope")).is_err());
        // A tampered blob is refused.
        std::fs::write(l.blob_path(&desc.digest).unwrap(), br#"{"a":2}"#).unwrap();
        assert!(l.read_json_blob(&desc).is_err());
        // No temp files are left behind.
        let left: Vec<_> = std::fs::read_dir(d.path().join("blobs/sha256"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp"))
            .collect();
        assert!(left.is_empty());
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::create(d.path()).unwrap();
        let mut w = l.blob_writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(
            std::fs::read_dir(d.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn hashing_reader_counts_everything() {
        let r = HashingReader::new(&b"hello"[..]);
        assert_eq!(r.finish().unwrap(), (sha256_digest(b"hello"), 5));
    }
}
