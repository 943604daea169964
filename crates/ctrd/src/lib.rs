//! A lazy pull into containerd through a remote snapshotter, as
//! ctr-remote's `rpull` does: the image from the registry ([`fetch_image`]),
//! the containerd calls with namespace and lease ([`Containerd`]), and the
//! unpack that asks the snapshotter to mount each layer remotely ([`pull`]).

mod client;
mod error;
mod image;
mod unpack;

pub use client::{Containerd, Prepared};
pub use error::{Error, Result};
pub use image::{chain_ids, fetch_image, ImageParts};
pub use unpack::{pull, Pulled};
