//! containerd snapshot semantics for a remote snapshotter.
//!
//! Layers, bottom up (each uses only the ones above it in this list):
//! - [`types`], [`error`]: domain types (Info, Kind, Mount, Usage) and the
//!   one error enum whose variants are containerd's outcomes.
//! - [`store`]: crash-safe metadata in redb, one write transaction per call.
//! - [`layout`]: directories under the root, ordered against the store so a
//!   crash leaves only orphan directories, which start-up removes.
//! - [`filter`], [`mounts`], [`usage`]: List filters, overlay/bind mounts
//!   (the specs handed to containerd, and [`OverlayMount`] for mounting a
//!   read-only overlay here), disk usage.
//! - [`core`]: the local snapshot contract (prepare/view/commit/remove/...).
//! - [`remote`]: **the plug-in point**, trait [`RemoteFs`], through which
//!   lazily fetched layers are mounted. This crate never depends on the
//!   filesystem that implements it.
//! - [`snapshotter`]: [`Snapshotter`] = core + the remote-snapshot protocol
//!   (mount on Prepare or fall back, check and refresh, restore after
//!   restart) + [`Metrics`]; a Prepare's outcome is a [`Prepared`].
//! - [`service`], [`server`]: the containerd snapshots.v1 gRPC service on a
//!   unix socket; [`proto`] also has the generated client.

pub mod client;
pub mod core;
pub mod error;
pub mod filter;
pub mod layout;
pub mod metrics;
pub mod mounts;
pub mod remote;
pub mod server;
pub mod service;
pub mod snapshotter;
pub mod store;
pub mod types;
pub mod usage;

/// Code generated from containerd's vendored protos (server and client).
pub mod proto {
    pub mod containerd {
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        pub mod services {
            pub mod snapshots {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
        }
    }
}

pub use error::{Error, Result};
pub use metrics::{Metrics, MetricsSnapshot};
pub use mounts::OverlayMount;
pub use remote::{FallbackReason, NoRemoteFs, RemoteFs, RemoteFsError, Unpack};
pub use snapshotter::Snapshotter;
pub use types::{Info, Kind, Labels, Mount, Prepared, Usage};
