//! Domain types of the snapshot API, independent of gRPC.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Label keys and values are arbitrary strings; kept ordered so that
/// listings and stored records are deterministic.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Read-only view of a parent; cannot be committed.
    View,
    /// Writable snapshot with an upper dir; can be committed.
    Active,
    /// Immutable; may be the parent of others.
    Committed,
}

impl Kind {
    /// The spelling containerd's filters use (`kind==active`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub name: String,
    /// Empty when the snapshot has no parent (containerd's convention).
    pub parent: String,
    pub kind: Kind,
    pub labels: Labels,
    pub created: SystemTime,
    pub updated: SystemTime,
}

/// One mount for containerd to perform, in the shape of mount(2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Filesystem type: `overlay` or `bind`.
    pub fs_type: String,
    pub source: String,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of disk used (allocated blocks, hard links counted once).
    pub size: i64,
    pub inodes: i64,
}

/// What a Prepare came to. Only the gRPC face turns the last two into
/// containerd's `AlreadyExists` answer ("the layer is there, skip unpacking").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prepared {
    /// An active snapshot to unpack into: an ordinary Prepare, or a remote
    /// one that fell back.
    Active(Vec<Mount>),
    /// The layer was mounted remotely and committed as `target`.
    Mounted { target: String },
    /// The Prepare's target snapshot exists already (committed before, or
    /// by a concurrent Prepare).
    AlreadyThere { target: String },
}
