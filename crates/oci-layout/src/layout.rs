//! A layout directory: open or create it, read verified blobs, write blobs
//! atomically (temp file, then rename to the digest), tag images.

use crate::error::{Error, Result};
use crate::parse::{check_digest, parse_digest, parse_index, select_tag, sha256_digest};
use crate::{media_types as mt, DescriptorExt, MAX_JSON_BLOB, REF_NAME};
use oci_spec::image::{Descriptor, MediaType};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub struct Layout {
    pub dir: PathBuf,
}

impl Layout {
    pub fn open(dir: &Path) -> Result<Layout> {
        let marker = dir.join("oci-layout");
        let b = std::fs::read(&marker).map_err(|e| Error::NotALayout(dir.to_path_buf(), e))?;
        let v: Value = serde_json::from_slice(&b).map_err(|source| Error::FileJson {
            path: marker.clone(),
            source,
        })?;
        if v["imageLayoutVersion"] != "1.0.0" {
            return Err(Error::LayoutVersion(marker));
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
        })
    }

    /// Open the layout at `dir`, creating an empty one if there is none.
    pub fn create(dir: &Path) -> Result<Layout> {
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).map_err(Error::io(&blobs))?;
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(Error::io(&marker))?;
        }
        if !dir.join("index.json").exists() {
            let idx = json!({"schemaVersion": 2, "mediaType": mt::OCI_INDEX, "manifests": []});
            write_atomic(&dir.join("index.json"), idx.to_string().as_bytes())?;
        }
        Layout::open(dir)
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.blob_dir().join(check_digest(digest)?))
    }

    pub fn blob_dir(&self) -> PathBuf {
        self.dir.join("blobs/sha256")
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).map(|p| p.is_file()).unwrap_or(false)
    }

    pub fn index(&self) -> Result<Value> {
        let p = self.dir.join("index.json");
        let b = read_capped(&p)?;
        if b.len() as u64 > MAX_JSON_BLOB {
            return Err(Error::TooLarge {
                what: "index.json".into(),
                size: b.len() as u64,
            });
        }
        serde_json::from_slice(&b).map_err(|source| Error::FileJson { path: p, source })
    }

    /// The descriptor tagged `tag` in index.json, or the only one if `tag`
    /// is `None`.
    pub fn resolve(&self, tag: Option<&str>) -> Result<Descriptor> {
        select_tag(parse_index(&self.index()?)?, tag)
    }

    /// A small blob (manifest, index, config), read whole and verified.
    pub fn read_json_blob(&self, d: &Descriptor) -> Result<(Vec<u8>, Value)> {
        let digest = d.digest().to_string();
        if d.size() > MAX_JSON_BLOB {
            return Err(Error::TooLarge {
                what: digest,
                size: d.size(),
            });
        }
        let p = self.blob_path(&digest)?;
        let b = read_capped(&p)?;
        if b.len() as u64 != d.size() {
            return Err(Error::SizeMismatch {
                digest,
                got: b.len() as u64,
                want: d.size(),
            });
        }
        let got = sha256_digest(&b);
        if got != digest {
            return Err(Error::DigestMismatch { digest, got });
        }
        let v = serde_json::from_slice(&b).map_err(|source| Error::FileJson { path: p, source })?;
        Ok((b, v))
    }

    /// Store `data` (if not already there) and describe it.
    pub fn put_blob(&self, media_type: &str, data: &[u8]) -> Result<Descriptor> {
        let mut w = self.blob_writer()?;
        w.write_all(data).map_err(Error::io(self.blob_dir()))?;
        let (digest, size) = w.commit()?;
        Ok(Descriptor::new(
            MediaType::from(media_type),
            size,
            parse_digest(&digest)?,
        ))
    }

    /// A temp file in `blobs/sha256` that becomes the blob named by its
    /// digest on `commit`.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        let file = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(self.blob_dir())
            .map_err(Error::io(self.blob_dir()))?;
        Ok(BlobWriter {
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            size: 0,
            dir: self.blob_dir(),
        })
    }

    /// Point `tag` at `desc` in index.json (other entries are kept).
    pub fn set_tag(&self, tag: &str, mut desc: Descriptor) -> Result<()> {
        let mut idx = self.index()?;
        let Some(ms) = idx
            .as_object_mut()
            .and_then(|o| o.get_mut("manifests"))
            .and_then(Value::as_array_mut)
        else {
            return Err(Error::NotAnObject("index.json manifests"));
        };
        ms.retain(|m| m["annotations"][REF_NAME] != tag);
        desc.insert_annotation(REF_NAME, tag.to_string());
        ms.push(serde_json::to_value(desc).expect("a descriptor serializes"));
        write_atomic(&self.dir.join("index.json"), idx.to_string().as_bytes())
    }
}

/// At most `MAX_JSON_BLOB + 1` bytes of `p` (one more tells "too large").
fn read_capped(p: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(p).map_err(Error::io(p))?;
    let mut b = Vec::new();
    f.take(MAX_JSON_BLOB + 1)
        .read_to_end(&mut b)
        .map_err(Error::io(p))?;
    Ok(b)
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
        let hex = hex::encode(self.hasher.finalize());
        let dest = self.dir.join(&hex);
        let io = Error::io(&dest);
        let tmp = self.file.into_inner().map_err(|e| io(e.into_error()))?;
        tmp.as_file().sync_data().map_err(Error::io(tmp.path()))?;
        let digest = format!("sha256:{hex}");
        if dest.exists() {
            // Same digest, same bytes: keep the existing file.
            return Ok((digest, self.size));
        }
        persist(tmp, &dest)?;
        Ok((digest, self.size))
    }
}

/// Rename `tmp` to `dest`, readable by all (like any blob).
fn persist(tmp: tempfile::NamedTempFile, dest: &Path) -> Result<()> {
    let io = || Error::io(dest);
    let f = tmp.persist(dest).map_err(|e| io()(e.error))?;
    let mut perm = f.metadata().map_err(io())?.permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o644);
    f.set_permissions(perm).map_err(io())
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io = || Error::io(path);
    let mut t = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io())?;
    t.write_all(data).map_err(io())?;
    t.as_file().sync_data().map_err(io())?;
    persist(t, path)
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
    fn blobs_tags_and_verification() {
        let d = tempfile::tempdir().unwrap();
        let l = Layout::create(d.path()).unwrap();
        let desc = l.put_blob(mt::OCI_CONFIG, br#"{"a":1}"#).unwrap();
        assert_eq!(desc.digest().to_string(), sha256_digest(br#"{"a":1}"#));
        let (_, v) = l.read_json_blob(&desc).unwrap();
        assert_eq!(v["a"], 1);
        l.set_tag("v1", desc.clone()).unwrap();
        l.set_tag("v1", desc.clone()).unwrap();
        l.set_tag("v2", desc.clone()).unwrap();
        assert_eq!(l.index().unwrap()["manifests"].as_array().unwrap().len(), 2);
        assert_eq!(l.resolve(Some("v2")).unwrap().digest(), desc.digest());
        assert!(matches!(l.resolve(None), Err(Error::ManyImages(2))));
        assert!(matches!(l.resolve(Some("nope")), Err(Error::NoSuchTag(_))));
        // A tampered blob is refused.
        let p = l.blob_path(desc.digest().as_ref()).unwrap();
        std::fs::write(p, br#"{"a":2}"#).unwrap();
        assert!(matches!(
            l.read_json_blob(&desc),
            Err(Error::DigestMismatch { .. })
        ));
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
