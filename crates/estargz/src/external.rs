//! External TOC (the reference's 0.13+ `--estargz-external-toc`): the layer
//! blob holds the data members and a 46-byte footer that names no offset;
//! its TOC member (gzip of a tar holding `stargz.index.json`, the same bytes
//! an in-blob TOC member has) is a layer of a separate "TOC image" in the
//! same repository, tagged `<tag>-esgztoc`, whose layer descriptors name
//! the eStargz layer they belong to in the annotation
//! `containerd.io/snapshot/stargz/layer.digest`. The layer's own TOC digest
//! annotation verifies that TOC as usual.
//!
//! Footer, 46 bytes: a gzip member with FEXTRA whose Extra field is `SG`,
//! length 17 (LE), `STARGZEXTERNALTOC`, then an empty stored block, CRC32
//! and ISIZE (all zero).

use crate::error::{Error, Result};
use crate::tail::MAX_TOC_MEMBER;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Size of the external-TOC footer.
pub const FOOTER_SIZE: usize = 46;
/// Appended to the image's tag to name its TOC image.
pub const TOC_IMAGE_TAG_SUFFIX: &str = "-esgztoc";
/// Annotation of a TOC image layer: the digest of the eStargz layer it describes.
pub const LAYER_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/layer.digest";
/// Largest TOC image manifest we parse.
pub const MAX_MANIFEST: usize = 4 << 20;

const MAGIC: &[u8; 17] = b"STARGZEXTERNALTOC";

/// The 46 footer bytes.
pub fn write_footer() -> [u8; FOOTER_SIZE] {
    let mut f = [0u8; FOOTER_SIZE];
    f[..4].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04]);
    f[9] = 0xff;
    f[10..12].copy_from_slice(&21u16.to_le_bytes());
    f[12..14].copy_from_slice(b"SG");
    f[14..16].copy_from_slice(&17u16.to_le_bytes());
    f[16..33].copy_from_slice(MAGIC);
    f[33..38].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    f
}

/// Does `tail` (the blob's last bytes, at least 46 of them) end with an
/// external-TOC footer? Checks the gzip header and the Extra field, as
/// the reference does.
pub fn is_footer(tail: &[u8]) -> bool {
    let Some(f) = tail.len().checked_sub(FOOTER_SIZE).map(|s| &tail[s..]) else {
        return false;
    };
    f[0] == 0x1f
        && f[1] == 0x8b
        && f[2] == 8
        && f[3] & 0x04 != 0
        && f[10..12] == 21u16.to_le_bytes()
        && &f[12..14] == b"SG"
        && f[14..16] == 17u16.to_le_bytes()
        && &f[16..33] == MAGIC
}

/// Where the data of an external-TOC blob ends (every chunk lies before).
pub fn data_end(blob_size: u64) -> Result<u64> {
    blob_size
        .checked_sub(FOOTER_SIZE as u64)
        .ok_or(Error::TooSmall(blob_size))
}

/// The TOC image's tag for an image tag.
pub fn toc_image_tag(tag: &str) -> String {
    format!("{tag}{TOC_IMAGE_TAG_SUFFIX}")
}

/// A layer of a TOC image: where the TOC member of one eStargz layer is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TocLayer {
    pub digest: String,
    pub size: u64,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

#[derive(Deserialize, Serialize)]
struct Layer {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
}

fn valid_sha256(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// The TOC layer for eStargz layer `layer_digest` in a TOC image manifest
/// (JSON). Refuses a manifest that names the layer twice, or with a
/// malformed digest or size, rather than picking one.
pub fn find_toc_layer(manifest: &[u8], layer_digest: &str) -> Result<TocLayer> {
    let bad = |m: String| Error::ExternalToc(m);
    if manifest.len() > MAX_MANIFEST {
        return Err(bad(format!(
            "TOC image manifest of {} bytes",
            manifest.len()
        )));
    }
    let m: Manifest =
        serde_json::from_slice(manifest).map_err(|e| bad(format!("TOC image manifest: {e}")))?;
    let mut found: Option<TocLayer> = None;
    for l in &m.layers {
        let names = l
            .annotations
            .as_ref()
            .and_then(|a| a.get(LAYER_DIGEST_ANNOTATION))
            .is_some_and(|d| d == layer_digest);
        if !names {
            continue;
        }
        if found.is_some() {
            return Err(bad(format!("TOC image lists layer {layer_digest} twice")));
        }
        if !valid_sha256(&l.digest) {
            return Err(bad(format!(
                "TOC layer digest {:?} is not sha256",
                l.digest
            )));
        }
        let size = u64::try_from(l.size)
            .ok()
            .filter(|&s| s <= MAX_TOC_MEMBER)
            .ok_or_else(|| bad(format!("TOC layer size {} is out of range", l.size)))?;
        found = Some(TocLayer {
            digest: l.digest.clone(),
            size,
        });
    }
    found.ok_or_else(|| bad(format!("the TOC image has no TOC for layer {layer_digest}")))
}

/// The layers of a TOC image for `(TOC blob digest, size, eStargz layer
/// digest)`, sorted by digest as the reference writes them, as JSON
/// descriptors (gzip layer media type).
pub fn toc_image_layers(tocs: &[(String, u64, String)]) -> serde_json::Value {
    let mut layers: Vec<Layer> = tocs
        .iter()
        .map(|(digest, size, layer)| Layer {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: digest.clone(),
            size: *size as i64,
            annotations: Some(BTreeMap::from([(
                LAYER_DIGEST_ANNOTATION.to_string(),
                layer.clone(),
            )])),
        })
        .collect();
    layers.sort_by(|a, b| a.digest.cmp(&b.digest));
    layers.dedup_by(|a, b| a.digest == b.digest && a.annotations == b.annotations);
    serde_json::to_value(layers).expect("plain JSON")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn footer_is_an_empty_gzip_member_with_the_magic() {
        let f = write_footer();
        assert!(is_footer(&f));
        let mut longer = vec![7u8; 100];
        longer.extend_from_slice(&f);
        assert!(is_footer(&longer));
        let mut gz = flate2::read::GzDecoder::new(&f[..]);
        let mut out = Vec::new();
        gz.read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(
            gz.header().unwrap().extra().unwrap(),
            b"SG\x11\x00STARGZEXTERNALTOC"
        );
        // Not an in-blob footer, and the in-blob footers are not this.
        assert!(crate::parse_footer(&f).is_err());
        assert!(!is_footer(&crate::write_footer(5)));
        let mut bad = f;
        bad[20] = b'x';
        assert!(!is_footer(&bad));
        assert!(!is_footer(&f[..45]));
    }

    #[test]
    fn finds_the_toc_layer_and_refuses_ambiguity() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let layers = toc_image_layers(&[(d('b'), 10, d('1')), (d('a'), 20, d('2'))]);
        assert_eq!(layers[0]["digest"], d('a'));
        let m = serde_json::json!({"schemaVersion": 2, "layers": layers});
        let bytes = serde_json::to_vec(&m).unwrap();
        assert_eq!(
            find_toc_layer(&bytes, &d('1')).unwrap(),
            TocLayer {
                digest: d('b'),
                size: 10
            }
        );
        assert!(matches!(
            find_toc_layer(&bytes, &d('3')),
            Err(Error::ExternalToc(_))
        ));
        let twice = serde_json::json!({"layers": [m["layers"][0], m["layers"][0]]});
        let err = find_toc_layer(&serde_json::to_vec(&twice).unwrap(), &d('2')).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        let mut neg = m.clone();
        neg["layers"][1]["size"] = (-1).into();
        assert!(find_toc_layer(&serde_json::to_vec(&neg).unwrap(), &d('1')).is_err());
        let mut trav = m;
        trav["layers"][1]["digest"] = "sha256:../../x".into();
        assert!(find_toc_layer(&serde_json::to_vec(&trav).unwrap(), &d('1')).is_err());
        assert!(find_toc_layer(b"not json", &d('1')).is_err());
    }
}
