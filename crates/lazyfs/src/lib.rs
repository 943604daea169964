//! A lazily fetched eStargz layer, served through FUSE.
//!
//! Layers of this crate, each using only the ones before it:
//! - [`source`]: `RangeSource`, random access to a blob (registry or file).
//! - [`cache`]: `ChunkCache`, verified chunks by digest, in memory and on
//!   disk, capped, least recently used out first; shared by all layers.
//! - `chunk` + [`fetch`]: one chunk = one gzip member, verified against its
//!   digest; singleflight, coalesced ranged requests, timeouts, background
//!   priority.
//! - `tree` + [`layer`]: `LazyLayer`, the files of a layer as overlayfs wants
//!   them (whiteouts), reads, readahead, prefetch, background fetch; no FUSE.
//! - [`fuse`]: `mount(layer, dir) -> MountHandle`; the only module that
//!   knows the FUSE library. [`mounts`]: mount table helpers.
//!
//! Nothing is served that did not match its digest; nothing waits on the
//! network longer than the configured fetch timeout.

pub mod cache;
mod chunk;
pub mod config;
mod error;
pub mod fetch;
pub mod fuse;
pub mod layer;
mod lru;
pub mod mounts;
pub mod open;
pub mod source;
pub mod stats;
pub mod tree;

pub use cache::{CacheConfig, ChunkCache};
pub use config::Config;
pub use error::{Error, NotEstargz};
pub use fetch::FetchError;
pub use fuse::{mount, MountHandle};
pub use layer::{LazyLayer, PrefetchReport};
pub use mounts::cleanup_dead_mounts;
pub use source::{FileSource, RangeSource, SourceError};
pub use stats::{FetchClass, Stats, StatsSnapshot};

#[cfg(test)]
mod fuse_tests;
#[cfg(test)]
mod layer_tests;
#[cfg(test)]
mod testutil;
