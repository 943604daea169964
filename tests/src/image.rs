//! Small OCI images built in code, so no blob is checked in:
//! - [`LayerBuilder`]: a tar layer with dirs, files, symlinks, hard links,
//!   modes, owners, xattrs and OCI whiteouts, kept as a list of entries so a
//!   test can also compute what it expects to see;
//! - [`busybox_layer`]: /bin/busybox from busybox-static plus applet links,
//!   a whole runnable rootfs in ~1 MB;
//! - [`write_oci_layout`] / [`OciLayout`]: write and read an OCI image layout
//!   (oci-layout, index.json with a ref.name tag, manifest, config, blobs).

use flate2::write::GzEncoder;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const TOC_DIGEST: &str = "containerd.io/snapshot/stargz/toc.digest";
pub const UNCOMPRESSED: &str = "io.containers.estargz.uncompressed-size";

/// Fixed mtime so that the same builder always yields the same bytes.
pub const MTIME: u64 = 1_700_000_000;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    /// Written as PAX `SCHILY.xattr.NAME` records, as Docker and Go do.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    pub fn mode(mode: u32) -> Meta {
        Meta {
            mode,
            uid: 0,
            gid: 0,
            mtime: MTIME,
            xattrs: Vec::new(),
        }
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Meta {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn xattr(mut self, name: &str, value: &[u8]) -> Meta {
        self.xattrs.push((name.to_string(), value.to_vec()));
        self
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    /// Target is a path inside the layer (no leading slash).
    Hardlink(String),
    Fifo,
    CharDevice(u32, u32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Relative path inside the layer, no leading slash ("bin/sh").
    pub path: String,
    pub kind: Kind,
    pub meta: Meta,
}

/// A tar layer described entry by entry, in the order they are written.
#[derive(Clone, Debug, Default)]
pub struct LayerBuilder {
    entries: Vec<Entry>,
}

fn rel(path: &str) -> String {
    path.trim_start_matches('/').to_string()
}

impl LayerBuilder {
    pub fn new() -> LayerBuilder {
        LayerBuilder::default()
    }

    pub fn entry(&mut self, path: &str, kind: Kind, meta: Meta) -> &mut Self {
        self.entries.push(Entry {
            path: rel(path),
            kind,
            meta,
        });
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        self.entry(path, Kind::Dir, Meta::mode(mode))
    }

    pub fn file(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.entry(path, Kind::File(data.into()), Meta::mode(mode))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, Kind::Symlink(target.to_string()), Meta::mode(0o777))
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, Kind::Hardlink(rel(target)), Meta::mode(0o644))
    }

    /// OCI whiteout: deletes `path` of a lower layer (`dir/.wh.name`).
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let p = Path::new(path.trim_start_matches('/'));
        let name = p
            .file_name()
            .expect("whiteout of a named path")
            .to_string_lossy();
        let wh = match p.parent().filter(|d| !d.as_os_str().is_empty()) {
            Some(d) => format!("{}/.wh.{name}", d.display()),
            None => format!(".wh.{name}"),
        };
        self.file(&wh, Vec::new(), 0o644)
    }

    /// OCI opaque whiteout: hides everything a lower layer had in `dir`.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        let d = dir.trim_matches('/');
        let p = if d.is_empty() {
            ".wh..wh..opq".to_string()
        } else {
            format!("{d}/.wh..wh..opq")
        };
        self.file(&p, Vec::new(), 0o644)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The regular file at `path`, if this layer has one.
    pub fn file_data(&self, path: &str) -> Option<&[u8]> {
        let p = rel(path);
        self.entries
            .iter()
            .rev()
            .find(|e| e.path == p)
            .and_then(|e| match &e.kind {
                Kind::File(d) => Some(d.as_slice()),
                _ => None,
            })
    }

    /// The uncompressed tar stream.
    pub fn tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in &self.entries {
            append(&mut b, e).unwrap_or_else(|err| panic!("tar entry {}: {err}", e.path));
        }
        b.into_inner().expect("finish tar")
    }

    /// The tar stream gzip-compressed at the default level.
    pub fn tar_gz(&self) -> Vec<u8> {
        gzip(&self.tar(), 6)
    }
}

fn append(b: &mut tar::Builder<Vec<u8>>, e: &Entry) -> std::io::Result<()> {
    if !e.meta.xattrs.is_empty() {
        let keys: Vec<(String, &[u8])> = e
            .meta
            .xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
            .collect();
        b.append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.meta.mode);
    h.set_uid(e.meta.uid);
    h.set_gid(e.meta.gid);
    h.set_mtime(e.meta.mtime);
    h.set_size(0);
    let path = match e.kind {
        Kind::Dir => format!("{}/", e.path.trim_end_matches('/')),
        _ => e.path.clone(),
    };
    match &e.kind {
        Kind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            b.append_data(&mut h, path, std::io::empty())
        }
        Kind::File(data) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data.as_slice())
        }
        Kind::Symlink(t) => {
            h.set_entry_type(tar::EntryType::Symlink);
            b.append_link(&mut h, path, t)
        }
        Kind::Hardlink(t) => {
            h.set_entry_type(tar::EntryType::Link);
            b.append_link(&mut h, path, t)
        }
        Kind::Fifo => {
            h.set_entry_type(tar::EntryType::Fifo);
            b.append_data(&mut h, path, std::io::empty())
        }
        Kind::CharDevice(major, minor) => {
            h.set_entry_type(tar::EntryType::Char);
            h.set_device_major(*major)?;
            h.set_device_minor(*minor)?;
            b.append_data(&mut h, path, std::io::empty())
        }
    }
}

/// The applets linked in [`busybox_layer`]: enough for tests to inspect files.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "sh",
    "cat",
    "sha256sum",
    "md5sum",
    "ls",
    "echo",
    "stat",
    "find",
    "wc",
    "head",
    "tail",
    "readlink",
    "test",
    "true",
    "false",
    "env",
    "du",
    "mkdir",
    "id",
    "grep",
    "cmp",
    "dd",
    "xargs",
    "sort",
    "uname",
    "date",
    "sleep",
    "rm",
    "cp",
    "mv",
    "touch",
    "getfattr",
    "od",
    "hexdump",
    "tr",
    "cut",
    "seq",
    "printf",
    "uniq",
    "basename",
    "dirname",
    "ln",
    "chmod",
];

/// A runnable rootfs: /bin/busybox (static) and links for [`BUSYBOX_APPLETS`],
/// plus the usual top-level directories and /etc/passwd, /etc/group.
pub fn busybox_layer() -> LayerBuilder {
    let busybox = std::fs::read("/bin/busybox").expect("read /bin/busybox (busybox-static)");
    let mut l = LayerBuilder::new();
    for d in [
        "bin", "etc", "tmp", "proc", "sys", "dev", "root", "var", "usr",
    ] {
        let mode = if d == "tmp" { 0o1777 } else { 0o755 };
        l.dir(d, mode);
    }
    l.file("bin/busybox", busybox, 0o755);
    for a in BUSYBOX_APPLETS {
        l.symlink(&format!("bin/{a}"), "busybox");
    }
    l.file(
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n",
        0o644,
    );
    l.file("etc/group", "root:x:0:\nnogroup:x:65534:\n", 0o644);
    l
}

/// Deterministic, incompressible bytes (xorshift64*), for multi-chunk files.
/// Distinct seeds give distinct bytes: the seed goes through a bijective
/// mix first (a plain `seed | 1` made seeds 2k and 2k+1 equal).
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = splitmix64(seed);
    if x == 0 {
        x = 0x9e37_79b9_7f4a_7c15; // xorshift's one forbidden state
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

/// Decompress every member of a (multi-member) gzip stream.
pub fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

pub fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b])
}

/// "sha256:<hex>" of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// The `rsnap` binary of this workspace (`RSNAP` overrides). Integration
/// tests of the e2e package cannot build it themselves (cargo holds the
/// build lock while tests run); `cargo test --workspace` builds it.
pub fn rsnap_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("RSNAP") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> -> target/<profile>/rsnap
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join("rsnap");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p rsnap` (or `cargo test --workspace`) first",
        bin.display()
    );
    bin
}

/// Run `rsnap ARGS...`, returning (success, stdout, stderr).
pub fn rsnap(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(rsnap_bin())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run rsnap");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `rsnap ARGS...`, panicking with its stderr on failure; returns stdout.
pub fn rsnap_ok(args: &[&str]) -> String {
    let (ok, out, err) = rsnap(args);
    assert!(ok, "rsnap {args:?} failed:\n{err}");
    out
}

/// Every layer of `tag` in `dir`: eStargz media type and annotations, a blob
/// that real gzip+tar accept, diff ID and uncompressed size that match, and
/// a TOC whose chunks all verify. Returns the TOC of each layer.
pub fn check_estargz_layout(dir: &Path, tag: Option<&str>) -> Vec<Value> {
    let lay = OciLayout::open(dir);
    let m = lay.manifest(tag);
    let c = lay.config(tag);
    let mut tocs = Vec::new();
    for (i, l) in m["layers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        let digest = l["digest"].as_str().unwrap();
        let blob = lay.blob(digest);
        assert_eq!(l["size"].as_u64().unwrap(), blob.len() as u64);
        let tar = gunzip(&blob);
        assert_eq!(
            c["rootfs"]["diff_ids"][i],
            sha256_digest(&tar),
            "diff ID of layer {i}"
        );
        let ann = &l["annotations"];
        assert_eq!(ann[UNCOMPRESSED].as_str().unwrap(), tar.len().to_string());
        let path = lay.blob_path(digest);
        // Real tools accept the blob as an ordinary tar.gz.
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("gunzip -c {} | tar t >/dev/null", path.display()))
            .status()
            .unwrap();
        assert!(st.success(), "gunzip | tar t rejected layer {i}");
        let toc_digest = ann[TOC_DIGEST].as_str().expect("toc.digest annotation");
        let p = path.to_str().unwrap();
        let toc = rsnap_ok(&["toc", "--verify", "--toc-digest", toc_digest, p]);
        tocs.push(serde_json::from_str(&toc).expect("TOC JSON"));
    }
    tocs
}

/// What [`write_oci_layout`] wrote.
#[derive(Clone, Debug)]
pub struct OciImage {
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
    pub diff_ids: Vec<String>,
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Write an image into the OCI layout `dir` (created if needed; an existing
/// index.json keeps its other tags). `layers` are tar or tar.gz blobs, base
/// first; the media type follows the bytes. `cmd` becomes the config's Cmd.
pub fn write_oci_layout(dir: &Path, tag: &str, layers: Vec<Vec<u8>>, cmd: &[&str]) -> OciImage {
    let layout = OciLayout::create(dir);
    let mut descs = Vec::new();
    let mut layer_digests = Vec::new();
    let mut diff_ids = Vec::new();
    for blob in &layers {
        let (mt, diff_id) = if is_gzip(blob) {
            (MT_LAYER_GZIP, sha256_digest(&gunzip(blob)))
        } else {
            (MT_LAYER_TAR, sha256_digest(blob))
        };
        let digest = layout.put_blob(blob);
        descs.push(json!({"mediaType": mt, "digest": digest, "size": blob.len()}));
        layer_digests.push(digest);
        diff_ids.push(diff_id);
    }
    let config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {"Env": ["PATH=/bin:/usr/bin"], "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| json!({"created_by": "e2e::image"})).collect::<Vec<_>>(),
    });
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let config_digest = layout.put_blob(&config_bytes);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": config_bytes.len()},
        "layers": descs,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).unwrap();
    let manifest_digest = layout.put_blob(&manifest_bytes);
    layout.set_tag(
        tag,
        &manifest_digest,
        manifest_bytes.len() as u64,
        MT_MANIFEST,
    );
    OciImage {
        manifest_digest,
        config_digest,
        layer_digests,
        diff_ids,
    }
}

/// An OCI image layout directory, for writing test inputs and reading outputs.
pub struct OciLayout {
    pub dir: PathBuf,
}

impl OciLayout {
    pub fn open(dir: &Path) -> OciLayout {
        OciLayout {
            dir: dir.to_path_buf(),
        }
    }

    pub fn create(dir: &Path) -> OciLayout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        if !dir.join("index.json").exists() {
            let idx = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []});
            std::fs::write(dir.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
        }
        OciLayout::open(dir)
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').expect("digest has algorithm");
        self.dir.join("blobs").join(alg).join(hex)
    }

    pub fn put_blob(&self, data: &[u8]) -> String {
        let d = sha256_digest(data);
        std::fs::write(self.blob_path(&d), data).unwrap();
        d
    }

    /// Read a blob and check it matches its digest.
    pub fn blob(&self, digest: &str) -> Vec<u8> {
        let data = std::fs::read(self.blob_path(digest))
            .unwrap_or_else(|e| panic!("blob {digest} in {}: {e}", self.dir.display()));
        assert_eq!(
            sha256_digest(&data),
            digest,
            "blob content does not match its name"
        );
        data
    }

    pub fn json(&self, digest: &str) -> Value {
        serde_json::from_slice(&self.blob(digest)).expect("blob is JSON")
    }

    pub fn index(&self) -> Value {
        let b = std::fs::read(self.dir.join("index.json")).expect("read index.json");
        serde_json::from_slice(&b).expect("index.json is JSON")
    }

    /// Descriptor of the manifest tagged `tag` (or the only one if `None`).
    pub fn manifest_desc(&self, tag: Option<&str>) -> Value {
        let idx = self.index();
        let ms = idx["manifests"].as_array().cloned().unwrap_or_default();
        match tag {
            Some(t) => ms
                .into_iter()
                .find(|m| m["annotations"][REF_NAME] == t)
                .unwrap_or_else(|| panic!("no tag {t} in {}", self.dir.display())),
            None => {
                assert_eq!(ms.len(), 1, "expected exactly one manifest");
                ms.into_iter().next().unwrap()
            }
        }
    }

    pub fn manifest(&self, tag: Option<&str>) -> Value {
        let d = self.manifest_desc(tag);
        self.json(d["digest"].as_str().expect("digest"))
    }

    pub fn config(&self, tag: Option<&str>) -> Value {
        let m = self.manifest(tag);
        self.json(m["config"]["digest"].as_str().expect("config digest"))
    }

    /// Point `tag` at a manifest, replacing any previous holder of the tag.
    pub fn set_tag(&self, tag: &str, digest: &str, size: u64, media_type: &str) {
        let mut idx = self.index();
        let ms = idx["manifests"].as_array_mut().expect("manifests array");
        ms.retain(|m| m["annotations"][REF_NAME] != tag);
        ms.push(json!({
            "mediaType": media_type, "digest": digest, "size": size,
            "annotations": {REF_NAME: tag},
        }));
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec(&idx).unwrap(),
        )
        .unwrap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_round_trips_through_tar() {
        let mut l = LayerBuilder::new();
        l.dir("a", 0o750)
            .file("a/f", "hello", 0o640)
            .entry(
                "a/x",
                Kind::File(b"x".to_vec()),
                Meta::mode(0o600).owner(1000, 1001).xattr("user.k", b"v"),
            )
            .symlink("a/s", "f")
            .hardlink("a/h", "a/f")
            .whiteout("a/gone")
            .opaque("b")
            .file(&format!("long/{}", "n".repeat(150)), "long", 0o644);
        let tar = gunzip(&l.tar_gz());
        let mut ar = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().into_owned();
            let mode = e.header().mode().unwrap();
            let ty = e.header().entry_type();
            if p == "a/x" {
                assert_eq!(e.header().uid().unwrap(), 1000);
                assert_eq!(e.header().gid().unwrap(), 1001);
                let pax = e.pax_extensions().unwrap().expect("pax header");
                let kv: Vec<_> = pax
                    .map(|x| x.unwrap())
                    .map(|x| (x.key().unwrap().to_string(), x.value_bytes().to_vec()))
                    .collect();
                assert_eq!(kv, vec![("SCHILY.xattr.user.k".to_string(), b"v".to_vec())]);
            }
            if p == "a/s" {
                assert_eq!(e.link_name().unwrap().unwrap().to_string_lossy(), "f");
            }
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            seen.push((p, mode, ty, data));
        }
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names[..7],
            [
                "a/",
                "a/f",
                "a/x",
                "a/s",
                "a/h",
                "a/.wh.gone",
                "b/.wh..wh..opq"
            ]
        );
        assert_eq!(names[7].len(), 155);
        assert_eq!(seen[1].1, 0o640);
        assert_eq!(seen[1].3, b"hello");
        assert_eq!(seen[4].2, tar::EntryType::Link);
        assert_eq!(l.file_data("/a/f"), Some(&b"hello"[..]));
    }

    #[test]
    fn layout_has_tags_diff_ids_and_valid_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = LayerBuilder::new();
        l.file("x", "1", 0o644);
        let gz = l.tar_gz();
        let plain = l.tar();
        let img = write_oci_layout(
            dir.path(),
            "v1",
            vec![gz.clone(), plain.clone()],
            &["/bin/sh"],
        );
        write_oci_layout(dir.path(), "v2", vec![gz.clone()], &["/bin/true"]);
        let lay = OciLayout::open(dir.path());
        assert_eq!(lay.index()["manifests"].as_array().unwrap().len(), 2);
        let m = lay.manifest(Some("v1"));
        assert_eq!(m["layers"][0]["mediaType"], MT_LAYER_GZIP);
        assert_eq!(m["layers"][1]["mediaType"], MT_LAYER_TAR);
        let c = lay.config(Some("v1"));
        assert_eq!(c["rootfs"]["diff_ids"][0], sha256_digest(&plain));
        assert_eq!(c["rootfs"]["diff_ids"][1], sha256_digest(&plain));
        assert_eq!(img.diff_ids[0], img.diff_ids[1]);
        assert_eq!(lay.blob(&img.layer_digests[0]), gz);
        assert_eq!(lay.config(Some("v2"))["config"]["Cmd"][0], "/bin/true");
        // Re-tagging replaces, never duplicates.
        write_oci_layout(dir.path(), "v2", vec![plain], &["/bin/true"]);
        assert_eq!(lay.index()["manifests"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn pseudo_random_is_deterministic_and_incompressible() {
        let a = pseudo_random(1 << 16, 7);
        assert_eq!(a, pseudo_random(1 << 16, 7));
        assert_ne!(a, pseudo_random(1 << 16, 8));
        assert_ne!(a, pseudo_random(1 << 16, 6));
        assert!(gzip(&a, 6).len() > a.len() * 99 / 100);
    }
}
