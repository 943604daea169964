//! The library without the CLI: a small OCI layout built here is converted
//! to another layout, and the result is checked from the bytes on disk
//! (annotations, diff IDs, TOC), plus a corrupt input that must be refused.

use convert::{Action, Options, ANN_TOC_DIGEST, ANN_UNCOMPRESSED_SIZE};
use indicatif::ProgressBar;
use oci_layout::{media_types as mt, Descriptor, DescriptorExt, Layout};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use std::io::{Read, Write};
use std::path::Path;

fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn layer_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in [
        ("etc/hello", &b"hello world\n"[..]),
        ("bin/app", &[7u8; 70_000][..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, body).unwrap();
    }
    b.into_inner().unwrap()
}

/// A layout with one gzip layer tagged `v1`; `diff_id` overrides the config's.
fn source_layout(dir: &Path, diff_id: Option<String>) -> (Vec<u8>, Descriptor) {
    let l = Layout::create(dir).unwrap();
    let tar = layer_tar();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let gz = gz.finish().unwrap();
    let layer = l.put_blob(mt::OCI_LAYER_GZIP, &gz).unwrap();
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [diff_id.unwrap_or_else(|| sha(&tar))]},
        "config": {"Cmd": ["/bin/app"]}
    });
    let config = l
        .put_blob(mt::OCI_CONFIG, config.to_string().as_bytes())
        .unwrap();
    let manifest = json!({
        "schemaVersion": 2, "mediaType": mt::OCI_MANIFEST,
        "config": config, "layers": [layer],
        "annotations": {"kept": "yes"}
    });
    let m = l
        .put_blob(mt::OCI_MANIFEST, manifest.to_string().as_bytes())
        .unwrap();
    l.set_tag("v1", m).unwrap();
    (tar, layer)
}

fn run(src: &Path, dst: &Path) -> convert::Result<convert::Report> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    convert::convert(
        &format!("oci:{}:v1", src.display()),
        &format!("oci:{}:v1-esgz", dst.display()),
        &registry::ClientConfig::default(),
        rt.handle(),
        &Options::default(),
        &|_| ProgressBar::hidden(),
    )
}

#[test]
fn converts_a_layout_to_estargz_with_annotations_and_diff_ids() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (tar, src_layer) = source_layout(src.path(), None);
    let report = run(src.path(), dst.path()).unwrap();
    assert_eq!(report.layers.len(), 1);
    assert_eq!(report.layers[0].source.digest(), src_layer.digest());
    assert_eq!(report.layers[0].converted.action, Action::Converted);

    // Read the result back from disk only.
    let out = Layout::open(dst.path()).unwrap();
    let root = out.resolve(Some("v1-esgz")).unwrap();
    assert_eq!(root.digest(), report.root.digest());
    let (_, manifest) = out.read_json_blob(&root).unwrap();
    assert_eq!(
        manifest["annotations"]["kept"], "yes",
        "unknown fields kept"
    );
    let parts = oci_layout::parse_manifest(&manifest).unwrap();
    let (_, config) = out.read_json_blob(&parts.config).unwrap();
    assert_eq!(config["config"]["Cmd"][0], "/bin/app");
    let diff_ids = oci_layout::parse_diff_ids(&config, 1).unwrap();
    let layer = &parts.layers[0];
    assert_eq!(layer.media_type().as_ref(), mt::OCI_LAYER_GZIP);
    assert_ne!(layer.digest(), src_layer.digest(), "the blob was rewritten");

    // The diff ID is the digest of the new blob uncompressed.
    let path = out.blob_path(layer.digest().as_ref()).unwrap();
    let blob = std::fs::read(&path).unwrap();
    let mut new_tar = Vec::new();
    flate2::read::MultiGzDecoder::new(&blob[..])
        .read_to_end(&mut new_tar)
        .unwrap();
    assert_eq!(diff_ids[0], sha(&new_tar));
    assert_ne!(diff_ids[0], sha(&tar), "the TOC entry changes the tar");
    assert_eq!(
        layer.annotation(ANN_UNCOMPRESSED_SIZE),
        Some(new_tar.len().to_string().as_str())
    );

    // The TOC digest annotation opens the blob, and the files are there.
    let toc = layer
        .annotation(ANN_TOC_DIGEST)
        .expect("TOC digest annotation");
    let f = std::fs::File::open(&path).unwrap();
    let opened = estargz::reader::open(f, blob.len() as u64, Some(toc)).unwrap();
    let names: Vec<_> = opened.toc.entries.iter().map(|e| e.name.clone()).collect();
    assert!(names.iter().any(|n| n == "etc/hello"), "{names:?}");
    assert!(names.iter().any(|n| n == "bin/app"), "{names:?}");

    // Converting the result again passes it through unchanged.
    let again = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r2 = convert::convert(
        &format!("oci:{}:v1-esgz", dst.path().display()),
        &format!("oci:{}:v2", again.path().display()),
        &registry::ClientConfig::default(),
        rt.handle(),
        &Options::default(),
        &|_| ProgressBar::hidden(),
    )
    .unwrap();
    assert_eq!(r2.layers[0].converted.action, Action::PassedThrough);
    assert_eq!(r2.layers[0].converted.desc.digest(), layer.digest());
    assert_eq!(r2.layers[0].converted.diff_id, diff_ids[0]);
}

#[test]
fn a_wrong_diff_id_is_refused_and_nothing_is_tagged() {
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    source_layout(src.path(), Some(sha(b"not the layer")));
    let err = run(src.path(), dst.path()).unwrap_err();
    let convert::Error::Layer { source, .. } = &err else {
        panic!("want a layer error, got {err:?}");
    };
    assert!(
        matches!(**source, convert::Error::DiffId { .. }),
        "{source:?}"
    );
    let out = Layout::open(dst.path()).unwrap();
    assert!(matches!(
        out.resolve(Some("v1-esgz")),
        Err(oci_layout::Error::NoSuchTag(_))
    ));
}
