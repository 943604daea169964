//! The record of a profiling run: for one image, per layer, the files the
//! workload opened or executed whose topmost layer it is, in first-access
//! order. Saved by `--record-out`, read back by `--reuse-record` (so it is
//! untrusted input: every field is checked).

use serde::{Deserialize, Serialize};

/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Records larger than this are refused (a profile lists paths, not data).
pub const MAX_RECORD: usize = 64 << 20;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub version: u32,
    /// The image manifest's digest.
    pub image: String,
    /// Bottom layer first, as in the manifest.
    pub layers: Vec<LayerRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerRecord {
    /// The source layer's digest.
    pub digest: String,
    /// Layer-relative paths (no leading slash), first access first.
    pub files: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the record is not valid JSON of the expected shape")]
    Json(#[source] serde_json::Error),
    #[error("record version {0} (this rsnap reads version {VERSION})")]
    Version(u32),
    #[error("the record is over {MAX_RECORD} bytes")]
    TooLarge,
    #[error("{0:?} is not a sha256 digest")]
    Digest(String),
    #[error("layer {0} appears twice in the record")]
    DuplicateLayer(String),
    #[error("path {0:?} is not a clean layer-relative path")]
    Path(String),
}

impl Record {
    /// Parse and check a record.
    pub fn parse(bytes: &[u8]) -> Result<Record, RecordError> {
        if bytes.len() > MAX_RECORD {
            return Err(RecordError::TooLarge);
        }
        let r: Record = serde_json::from_slice(bytes).map_err(RecordError::Json)?;
        if r.version != VERSION {
            return Err(RecordError::Version(r.version));
        }
        check_digest(&r.image)?;
        let mut seen = std::collections::HashSet::new();
        for l in &r.layers {
            check_digest(&l.digest)?;
            if !seen.insert(l.digest.as_str()) {
                return Err(RecordError::DuplicateLayer(l.digest.clone()));
            }
            for p in &l.files {
                if !clean_path(p) {
                    return Err(RecordError::Path(p.clone()));
                }
            }
        }
        Ok(r)
    }

    /// The record as pretty JSON (what `--record-out` writes).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a record serializes");
        s.push('\n');
        s
    }

    /// The files of layer `digest`, if the record has it.
    pub fn files(&self, digest: &str) -> Option<&[String]> {
        self.layers
            .iter()
            .find(|l| l.digest == digest)
            .map(|l| l.files.as_slice())
    }
}

fn check_digest(d: &str) -> Result<(), RecordError> {
    match d.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(())
        }
        _ => Err(RecordError::Digest(d.to_string())),
    }
}

/// Relative, no empty, `.` or `..` component, no NUL, not too long.
pub(crate) fn clean_path(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 4096
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn sample() -> Record {
        Record {
            version: VERSION,
            image: digest('a'),
            layers: vec![
                LayerRecord {
                    digest: digest('b'),
                    files: vec!["bin/busybox".into(), "etc/passwd".into()],
                },
                LayerRecord {
                    digest: digest('c'),
                    files: vec![],
                },
            ],
        }
    }

    #[test]
    fn round_trips() {
        let r = sample();
        assert_eq!(Record::parse(r.to_json().as_bytes()).unwrap(), r);
        assert_eq!(r.files(&digest('b')).unwrap().len(), 2);
        assert!(r.files(&digest('d')).is_none());
    }

    #[test]
    fn rejects_bad_records() {
        let bad = |f: &dyn Fn(&mut Record)| {
            let mut r = sample();
            f(&mut r);
            Record::parse(r.to_json().as_bytes()).unwrap_err()
        };
        assert!(matches!(bad(&|r| r.version = 2), RecordError::Version(2)));
        assert!(matches!(
            bad(&|r| r.image = "sha256:x".into()),
            RecordError::Digest(_)
        ));
        assert!(matches!(
            bad(&|r| r.layers[1].digest = digest('b')),
            RecordError::DuplicateLayer(_)
        ));
        for p in ["/etc/passwd", "a/../b", "a//b", "./a", "", "a/"] {
            assert!(
                matches!(
                    bad(&|r| r.layers[0].files.push(p.into())),
                    RecordError::Path(_)
                ),
                "{p:?}"
            );
        }
        assert!(matches!(Record::parse(b"{"), Err(RecordError::Json(_))));
        assert!(matches!(
            Record::parse(br#"{"version":1,"image":"x","layers":[],"extra":1}"#),
            Err(RecordError::Json(_))
        ));
    }
}
