//! Kubernetes pull secrets for lazy pulls. The kubelet gives the
//! credentials of an `imagePullSecret` only to the CRI image service it
//! pulls through; containerd's CRI plugin uses them for its own requests and
//! never hands them to a snapshotter. [`ImageServiceProxy`] serves
//! `runtime.v1.ImageService` on a unix socket of its own (the kubelet's
//! `--image-service-endpoint`), forwards every call to containerd's socket,
//! and records the `AuthConfig` of each `PullImage` in a [`Keychain`] under
//! the image's host and repository, before forwarding it, so that the
//! snapshotter can fetch that image's layers while containerd pulls it.
//!
//! Layers: [`reference`] (image reference -> host, repository),
//! [`credentials`] (one registry's secret, never printed),
//! [`keychain`] (what was learnt, with its expiry), [`store`] (the
//! keychain on disk, to survive restarts), [`proxy`] (the gRPC service).

pub mod credentials;
pub mod keychain;
pub mod proxy;
pub mod reference;
pub mod store;

pub use credentials::Credentials;
pub use keychain::{Expiry, Keychain};
pub use proxy::{connect_upstream, serve, ImageServiceProxy, ProxyError};
pub use store::{Store, StoreError};
