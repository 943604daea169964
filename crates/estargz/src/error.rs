//! Every way a blob, a TOC or a tar input can be bad, as typed errors.
//!
//! `Error` is what the public functions return; the TOC validation and the
//! tar parser have their own enums so callers can match on the exact cause.

use std::io;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("blob of {0} bytes is too small to hold an eStargz footer")]
    TooSmall(u64),
    #[error("no eStargz or stargz footer: {0}")]
    BadFooter(&'static str),
    #[error("TOC offset {toc_offset} is outside the blob (TOC region must end at {limit})")]
    TocOffsetOutOfRange { toc_offset: u64, limit: u64 },
    #[error("the TOC member is {size} bytes, over the cap of {cap}")]
    TocTooLarge { size: u64, cap: u64 },
    #[error("bad TOC member: {0}")]
    BadTocMember(String),
    #[error("malformed TOC JSON: {0}")]
    TocJson(#[from] serde_json::Error),
    #[error("TOC digest is {actual}, the annotation says {expected}")]
    TocDigestMismatch { expected: String, actual: String },
    #[error("invalid TOC: {0}")]
    Toc(#[from] TocError),
    #[error("gzip: {0}")]
    Gzip(String),
    #[error("zstd: {0}")]
    Zstd(String),
    #[error(
        "zstd:chunked TOC frame says {declared} bytes, the blob holds {actual} before the footer"
    )]
    TocFrameSize { declared: u64, actual: u64 },
    #[error("chunk at blob offset {blob_offset} decompressed to fewer than {wanted} bytes")]
    ShortChunk { blob_offset: u64, wanted: u64 },
    #[error("digest mismatch at blob offset {blob_offset}: expected {expected}, got {actual}")]
    DigestMismatch {
        blob_offset: u64,
        expected: String,
        actual: String,
    },
    #[error("no such node {0}")]
    NoSuchNode(u32),
    #[error("node {0} is not a regular file")]
    NotAFile(u32),
    #[error("bad tar input: {0}")]
    Tar(#[from] TarError),
    #[error("writer option: {0}")]
    BadOption(&'static str),
    #[error("external TOC: {0}")]
    ExternalToc(String),
}

/// Why a TOC does not describe a usable layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TocError {
    #[error("TOC version {0} is not 1")]
    Version(i64),
    #[error("{count} TOC entries, over the cap of {cap}")]
    TooManyEntries { count: usize, cap: usize },
    #[error("entry name {0:?} is not a clean relative path")]
    BadName(String),
    #[error("duplicate entry {0:?}")]
    Duplicate(String),
    #[error("{0:?} is needed as a directory but is not one")]
    NotADirectory(String),
    #[error("hardlink {name:?} points to missing or unusable {target:?}")]
    BadHardlink { name: String, target: String },
    #[error("chunk entry {0:?} does not follow its regular file")]
    OrphanChunk(String),
    #[error("entry {name:?}: field {field} is out of range")]
    FieldRange { name: String, field: &'static str },
    #[error("entry {0:?}: chunk has no valid sha256 chunkDigest (legacy stargz opens only unverified, when allowed)")]
    MissingChunkDigest(String),
    #[error("file {0:?}: chunks overlap, leave gaps or do not cover its size")]
    ChunkLayout(String),
    #[error(
        "file {name:?}: chunk at blob offset {offset} is at or past the TOC offset {toc_offset}"
    )]
    ChunkOutOfRange {
        name: String,
        offset: u64,
        toc_offset: u64,
    },
    #[error(
        "file {name:?}: a chunk of {size} bytes (with its inner offset) is over the cap of {cap}"
    )]
    ChunkTooLarge { name: String, size: u64, cap: u64 },
}

/// Why a tar stream given to the writer cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TarError {
    #[error("tar stream ends inside an entry at byte {0}")]
    Truncated(u64),
    #[error("header checksum mismatch at byte {0}")]
    Checksum(u64),
    #[error("bad numeric field {field} at byte {offset}")]
    Number { offset: u64, field: &'static str },
    #[error("bad PAX record at byte {0}")]
    Pax(u64),
    #[error("extension header of {size} bytes at byte {offset} is over the cap")]
    ExtensionTooLarge { offset: u64, size: u64 },
    #[error("unsupported entry type {typeflag:?} for {name:?}")]
    Unsupported { typeflag: char, name: String },
    #[error("more than {0} entries")]
    TooManyEntries(usize),
    #[error("entry name {0:?} escapes the layer or is empty")]
    BadName(String),
}
