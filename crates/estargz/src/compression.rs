//! How a layer's chunks are compressed: a property of the layer, known from
//! its footer, carried by its `Index` and by each `Chunk` so that
//! `decompress_chunk` can pick the decoder without more context.

/// The compression of a layer's chunks and TOC.
///
/// Each variant has its own footer/TOC parser and chunk decoder; code that
/// dispatches on it matches exhaustively, so a new variant (an indexed plain
/// gzip layer, say) is added by adding arms, not by changing existing ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// eStargz (and legacy stargz): one gzip member per chunk, the TOC a
    /// tar entry in a gzip member, the 51-byte (47-byte) gzip footer.
    #[default]
    Gzip,
    /// zstd:chunked: one zstd frame per chunk, the TOC a zstd frame inside a
    /// skippable frame, the 40-byte footer in a skippable frame.
    Zstd,
}

impl Compression {
    /// The name users type (`rsnap convert --compression`) and logs show.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "estargz",
            Compression::Zstd => "zstd-chunked",
        }
    }

    /// Parse a user's name for it (`estargz`/`gzip`, `zstd-chunked`/`zstd:chunked`).
    pub fn parse(s: &str) -> Option<Compression> {
        match s {
            "estargz" | "gzip" => Some(Compression::Gzip),
            "zstd-chunked" | "zstd:chunked" | "zstdchunked" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The OCI layer media type of a blob in this format.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
