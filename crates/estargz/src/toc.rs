//! `stargz.index.json`: the TOC as JSON, field for field as the spec and the
//! Go reference name them.
//!
//! Fields are declared in the Go reference's order and empty ones are omitted
//! (Go's `omitempty`), so `to_json` writes what the reference writes for the
//! same entries: tab indentation, HTML-sensitive characters escaped.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::io;

/// Name of the TOC tar entry.
pub const TOC_TAR_NAME: &str = "stargz.index.json";
/// Landmark after the prioritized files.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// Landmark saying there are no prioritized files.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// The single byte a landmark file holds.
pub const LANDMARK_CONTENTS: u8 = 0x0f;
/// Descriptor annotation holding the TOC digest.
pub use snapshot_labels::annotations::TOC_DIGEST as TOC_DIGEST_ANNOTATION;
/// Descriptor annotation holding the uncompressed size.
pub use snapshot_labels::annotations::UNCOMPRESSED_SIZE as UNCOMPRESSED_SIZE_ANNOTATION;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toc {
    pub version: i64,
    #[serde(default, deserialize_with = "null_as_default")]
    pub entries: Vec<TocEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EntryType {
    Dir,
    #[default]
    Reg,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
    Chunk,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// One TOC entry. Numbers are `i64` as in Go so that any value the
/// reference can write parses; `Index` range-checks them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TocEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: i64,
    /// RFC3339, UTC; empty means zero or unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub modtime: String,
    #[serde(rename = "linkName", default, skip_serializing_if = "String::is_empty")]
    pub link_name: String,
    /// tar header mode (permission bits, maybe type bits too).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mode: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub uid: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gid: i64,
    #[serde(rename = "userName", default, skip_serializing_if = "String::is_empty")]
    pub user_name: String,
    #[serde(
        rename = "groupName",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub group_name: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub offset: i64,
    #[serde(rename = "innerOffset", default, skip_serializing_if = "is_zero")]
    pub inner_offset: i64,
    #[serde(rename = "devMajor", default, skip_serializing_if = "is_zero")]
    pub dev_major: i64,
    #[serde(rename = "devMinor", default, skip_serializing_if = "is_zero")]
    pub dev_minor: i64,
    /// Old writers recorded it; the reference computes it at read time.
    #[serde(rename = "NumLink", default, skip_serializing_if = "is_zero")]
    pub num_link: i64,
    /// Values are base64 in JSON, as Go encodes `[]byte`.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "ser_xattrs",
        deserialize_with = "de_xattrs"
    )]
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Whole-file digest of a `reg` entry.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(rename = "chunkOffset", default, skip_serializing_if = "is_zero")]
    pub chunk_offset: i64,
    /// Zero on the last (or only) chunk: up to the end of the file.
    #[serde(rename = "chunkSize", default, skip_serializing_if = "is_zero")]
    pub chunk_size: i64,
    #[serde(
        rename = "chunkDigest",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub chunk_digest: String,
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn ser_xattrs<S: Serializer>(x: &BTreeMap<String, Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine;
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(Some(x.len()))?;
    for (k, v) in x {
        m.serialize_entry(k, &base64::engine::general_purpose::STANDARD.encode(v))?;
    }
    m.end()
}

fn de_xattrs<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<u8>>, D::Error> {
    use base64::Engine;
    let raw: Option<BTreeMap<String, Option<String>>> = Option::deserialize(d)?;
    let mut out = BTreeMap::new();
    for (k, v) in raw.unwrap_or_default() {
        let bytes = match v {
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(serde::de::Error::custom)?,
            None => Vec::new(),
        };
        out.insert(k, bytes);
    }
    Ok(out)
}

impl Toc {
    /// Parse TOC JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Toc, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The JSON the Go reference writes for this TOC
    /// (`json.MarshalIndent(toc, "", "\t")`).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::with_formatter(&mut out, GoFormatter::new());
        // Serialising plain structs into a Vec cannot fail.
        self.serialize(&mut ser).expect("TOC serialises");
        out
    }
}

/// serde_json's pretty printer with tabs, plus Go's escaping of `<`, `>`,
/// `&`, U+2028 and U+2029 so the TOC digest matches the reference's.
struct GoFormatter {
    inner: serde_json::ser::PrettyFormatter<'static>,
}

impl GoFormatter {
    fn new() -> Self {
        GoFormatter {
            inner: serde_json::ser::PrettyFormatter::with_indent(b"\t"),
        }
    }
}

macro_rules! delegate {
    ($($name:ident($($arg:ident: $t:ty),*);)*) => {$(
        fn $name<W: ?Sized + io::Write>(&mut self, w: &mut W $(, $arg: $t)*) -> io::Result<()> {
            self.inner.$name(w $(, $arg)*)
        }
    )*};
}

impl serde_json::ser::Formatter for GoFormatter {
    delegate! {
        begin_array();
        end_array();
        begin_array_value(first: bool);
        end_array_value();
        begin_object();
        end_object();
        begin_object_key(first: bool);
        begin_object_value();
        end_object_value();
    }

    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            let esc = match c {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            w.write_all(&fragment.as_bytes()[start..i])?;
            w.write_all(esc.as_bytes())?;
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }
}

/// A tar mtime (seconds) as the TOC's `modtime` (RFC 3339, UTC); empty for
/// 0, as the reference writes it.
pub fn format_modtime(secs: i64) -> String {
    if secs == 0 {
        return String::new();
    }
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}
