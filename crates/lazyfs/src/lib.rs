//! A lazily fetched eStargz layer, served through FUSE.
//!
//! Layers of this crate, each using only the ones before it:
//! - `source`: [`RangeSource`], random access to a blob (registry or file).
//! - `chunk`: one chunk = one gzip member, verified against its digest;
//!   [`FetchError`]; the table of chunks in flight.
//! - `cache`: [`ChunkCache`], verified chunks by digest, in memory and on
//!   disk, capped, least recently used out first; shared by all layers.
//! - `fetch`: singleflight, coalesced ranged requests, timeouts, background
//!   priority.
//! - `tree` + `layer` (+ `open`): [`LazyLayer`], the files of a layer as
//!   overlayfs wants them (whiteouts), reads, readahead, prefetch, background
//!   fetch; no FUSE.
//! - `fuse`: [`mount`]`(layer, dir) -> `[`MountHandle`]; the only module that
//!   knows the FUSE library. `mounts`: finding FUSE mounts and clearing dead
//!   ones ([`cleanup_dead_mounts`]). `materialize`: whole files of a layer
//!   written out from verified cached chunks, for FUSE passthrough.
//!
//! Nothing is served that did not match its digest; nothing waits on the
//! network longer than the configured fetch timeout. The modules are private:
//! what other crates use is re-exported here, and nothing else is public.

mod cache;
mod chunk;
mod config;
mod error;
mod fetch;
mod fuse;
mod layer;
mod lru;
mod materialize;
mod mounts;
mod open;
mod source;
mod stats;
mod tree;

pub use cache::{CacheConfig, ChunkCache};
pub use chunk::{ChunkError, FetchError};
pub use config::{Config, ConfigError};
pub use error::{Error, NotEstargz};
pub use fuse::{mount, MountHandle};
pub use layer::{LazyLayer, PrefetchReport};
pub use mounts::{cleanup_dead_mounts, is_fuse_mounted};
pub use source::{FileSource, RangeSource, SourceError};
pub use stats::{Stats, StatsSnapshot};

#[cfg(test)]
mod fuse_tests;
#[cfg(test)]
mod layer_tests;
#[cfg(test)]
mod testutil;
