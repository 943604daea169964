//! A lazily fetched eStargz layer, served through FUSE.
//!
//! Layers of this crate, each using only the ones before it:
//! - `source`: [`RangeSource`], random access to a blob (registry or file).
//! - `chunk`: one chunk = one gzip member, verified against its digest;
//!   [`FetchError`].
//! - `cache`: [`ChunkCache`], verified chunks by digest, in memory and on
//!   disk, capped, least recently used out first; shared by all layers.
//! - `scheduler`: [`Scheduler`], shared by all layers like the cache: the
//!   chunks in flight (singleflight), foreground/background priority,
//!   concurrency limits, the fetch timeout.
//! - `fetch`: one layer's requests: coalesced spans, multi-range requests,
//!   answers decoded and settled chunk by chunk.
//! - `readahead`: adaptive readahead windows.
//! - `tree` + `layer` (+ `open`): [`LazyLayer`], the files of a layer as
//!   overlayfs wants them (whiteouts), reads, readahead, prefetch, background
//!   fetch; no FUSE.
//! - `fuse`: [`mount`]`(layer, dir) -> `[`MountHandle`]; the only module that
//!   knows the FUSE library. `mounts`: finding FUSE mounts and clearing dead
//!   ones ([`cleanup_dead_mounts`]). `handover`: the fd store that keeps
//!   mounts' FUSE connections alive across daemon processes ([`adopt`]
//!   serves one again); `inflight`: requests read and not yet answered.
//!   `materialize`: whole files of a layer written out from verified cached
//!   chunks, for FUSE passthrough. `decoder`: [`MemberDecoder`], for layers
//!   whose chunks are not gzip members (plain gzip served through an index).
//!   `metrics`: latency histograms, bounded failures and cache figures
//!   across layers, for the daemon's endpoint.
//!
//! Nothing is served that did not match its digest; nothing waits on the
//! network longer than the configured fetch timeout. The modules are private:
//! what other crates use is re-exported here, and nothing else is public.

mod cache;
mod chunk;
mod config;
mod decoder;
mod error;
mod fetch;
mod fuse;
pub mod handover;
mod inflight;
mod layer;
mod lru;
mod materialize;
mod metrics;
mod mounts;
mod open;
mod readahead;
mod scheduler;
mod source;
mod stats;
mod tree;

pub use cache::{CacheConfig, ChunkCache};
pub use chunk::{ChunkError, FetchError};
pub use config::{Config, ConfigError};
pub use decoder::MemberDecoder;
pub use error::{Error, NotEstargz};
pub use fuse::{adopt, mount, MountHandle};
pub use inflight::{in_flight, persist_in as persist_in_flight, wait_drained};
pub use layer::{BlobCheck, LazyLayer, OpenObserver, PrefetchReport};
pub use metrics::{CacheFigures, FetchFigures, HistogramSnapshot, LATENCY_BUCKETS};
pub use mounts::{cleanup_dead_mounts, is_fuse_mounted};
pub use open::{external_toc_bytes, TocBytes};
pub use scheduler::{FetchVia, Scheduler};
pub use source::{FileSource, RangeSource, SourceError};
pub use stats::{Stats, StatsSnapshot};

#[cfg(test)]
mod fuse_tests;
#[cfg(test)]
mod handover_tests;
#[cfg(test)]
mod layer_tests;
#[cfg(test)]
mod readpath_tests;
#[cfg(test)]
mod testutil;
#[cfg(test)]
mod unverified_tests;
