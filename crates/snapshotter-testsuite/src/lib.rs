//! A conformance suite for snapshotters, modelled on containerd's
//! `snapshots/testsuite`: the same cases run in-process against
//! [`Snapshotter`] and over a socket against any snapshots.v1 server
//! (our daemon), through the small [`Api`] trait.
//!
//! Test code only (a dev-dependency, never published): cases panic on a
//! violation. Cases that mount need root (see [`can_mount`]); each case uses
//! its own key prefix so all can share one instance.

mod cases;
mod mount;

pub use cases::*;
pub use mount::{mount_all, MountGuard};

use async_trait::async_trait;
use snapshotter::client::Client;
use snapshotter::proto::containerd::services::snapshots::v1 as pb;
use snapshotter::service::status;
use snapshotter::{Info, Kind, Labels, Mount, Snapshotter, Usage};
use std::time::SystemTime;

/// The outcome classes containerd distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Unavailable,
    Other,
}

pub type ApiResult<T> = Result<T, (Code, String)>;

fn code(s: tonic::Status) -> (Code, String) {
    let c = match s.code() {
        tonic::Code::NotFound => Code::NotFound,
        tonic::Code::AlreadyExists => Code::AlreadyExists,
        tonic::Code::FailedPrecondition => Code::FailedPrecondition,
        tonic::Code::InvalidArgument => Code::InvalidArgument,
        tonic::Code::Unavailable => Code::Unavailable,
        _ => Code::Other,
    };
    (c, s.message().to_string())
}

#[async_trait]
pub trait Api: Send + Sync {
    async fn prepare(&self, key: &str, parent: &str, labels: &Labels) -> ApiResult<Vec<Mount>>;
    async fn view(&self, key: &str, parent: &str, labels: &Labels) -> ApiResult<Vec<Mount>>;
    async fn mounts(&self, key: &str) -> ApiResult<Vec<Mount>>;
    async fn commit(&self, name: &str, key: &str, labels: &Labels) -> ApiResult<()>;
    async fn remove(&self, key: &str) -> ApiResult<()>;
    async fn stat(&self, key: &str) -> ApiResult<Info>;
    async fn update(&self, name: &str, labels: &Labels, paths: &[&str]) -> ApiResult<Info>;
    async fn list(&self, filters: &[&str]) -> ApiResult<Vec<Info>>;
    async fn usage(&self, key: &str) -> ApiResult<Usage>;
    async fn cleanup(&self) -> ApiResult<()>;
}

/// In-process: errors go through the same mapping as the gRPC service.
#[async_trait]
impl Api for Snapshotter {
    async fn prepare(&self, key: &str, parent: &str, labels: &Labels) -> ApiResult<Vec<Mount>> {
        snapshotter::service::prepared(Snapshotter::prepare(self, key, parent, labels).await)
            .map_err(code)
    }
    async fn view(&self, key: &str, parent: &str, labels: &Labels) -> ApiResult<Vec<Mount>> {
        Snapshotter::view(self, key, parent, labels)
            .await
            .map_err(|e| code(status(e)))
    }
    async fn mounts(&self, key: &str) -> ApiResult<Vec<Mount>> {
        Snapshotter::mounts(self, key)
            .await
            .map_err(|e| code(status(e)))
    }
    async fn commit(&self, name: &str, key: &str, labels: &Labels) -> ApiResult<()> {
        Snapshotter::commit(self, name, key, labels)
            .await
            .map_err(|e| code(status(e)))
    }
    async fn remove(&self, key: &str) -> ApiResult<()> {
        Snapshotter::remove(self, key)
            .await
            .map_err(|e| code(status(e)))
    }
    async fn stat(&self, key: &str) -> ApiResult<Info> {
        Snapshotter::stat(self, key)
            .await
            .map_err(|e| code(status(e)))
    }
    async fn update(&self, name: &str, labels: &Labels, paths: &[&str]) -> ApiResult<Info> {
        let info = Info {
            name: name.into(),
            parent: String::new(),
            kind: Kind::Active,
            labels: labels.clone(),
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
        };
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        Snapshotter::update(self, &info, &paths)
            .await
            .map_err(|e| code(status(e)))
    }
    async fn list(&self, filters: &[&str]) -> ApiResult<Vec<Info>> {
        let f: Vec<String> = filters.iter().map(|p| p.to_string()).collect();
        Snapshotter::list(self, &f)
            .await
            .map_err(|e| code(status(e)))
    }
    async fn usage(&self, key: &str) -> ApiResult<Usage> {
        Snapshotter::usage(self, key)
            .await
            .map_err(|e| code(status(e)))
    }
    async fn cleanup(&self) -> ApiResult<()> {
        Snapshotter::cleanup(self)
            .await
            .map_err(|e| code(status(e)))
    }
}

/// Over gRPC (any snapshots.v1 server). The client is cheap to clone.
pub struct GrpcApi(pub Client);

fn from_pb_mounts(ms: Vec<snapshotter::proto::containerd::types::Mount>) -> Vec<Mount> {
    ms.into_iter()
        .map(|m| Mount {
            fs_type: m.r#type,
            source: m.source,
            options: m.options,
        })
        .collect()
}

fn from_pb_info(i: Option<pb::Info>) -> ApiResult<Info> {
    let i = i.ok_or((Code::Other, "reply without info".to_string()))?;
    let t = |t: Option<prost_types::Timestamp>| {
        t.and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    let kind = match pb::Kind::try_from(i.kind) {
        Ok(pb::Kind::View) => Kind::View,
        Ok(pb::Kind::Active) => Kind::Active,
        Ok(pb::Kind::Committed) => Kind::Committed,
        _ => return Err((Code::Other, format!("unknown kind {}", i.kind))),
    };
    Ok(Info {
        name: i.name,
        parent: i.parent,
        kind,
        labels: i.labels.into_iter().collect(),
        created: t(i.created_at),
        updated: t(i.updated_at),
    })
}

fn hm(l: &Labels) -> std::collections::HashMap<String, String> {
    l.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

#[async_trait]
impl Api for GrpcApi {
    async fn prepare(&self, key: &str, parent: &str, labels: &Labels) -> ApiResult<Vec<Mount>> {
        let r = pb::PrepareSnapshotRequest {
            snapshotter: "remote".into(),
            key: key.into(),
            parent: parent.into(),
            labels: hm(labels),
        };
        Ok(from_pb_mounts(
            self.0
                .clone()
                .prepare(r)
                .await
                .map_err(code)?
                .into_inner()
                .mounts,
        ))
    }
    async fn view(&self, key: &str, parent: &str, labels: &Labels) -> ApiResult<Vec<Mount>> {
        let r = pb::ViewSnapshotRequest {
            snapshotter: "remote".into(),
            key: key.into(),
            parent: parent.into(),
            labels: hm(labels),
        };
        Ok(from_pb_mounts(
            self.0
                .clone()
                .view(r)
                .await
                .map_err(code)?
                .into_inner()
                .mounts,
        ))
    }
    async fn mounts(&self, key: &str) -> ApiResult<Vec<Mount>> {
        let r = pb::MountsRequest {
            snapshotter: "remote".into(),
            key: key.into(),
        };
        Ok(from_pb_mounts(
            self.0
                .clone()
                .mounts(r)
                .await
                .map_err(code)?
                .into_inner()
                .mounts,
        ))
    }
    async fn commit(&self, name: &str, key: &str, labels: &Labels) -> ApiResult<()> {
        let r = pb::CommitSnapshotRequest {
            snapshotter: "remote".into(),
            name: name.into(),
            key: key.into(),
            labels: hm(labels),
        };
        self.0.clone().commit(r).await.map_err(code)?;
        Ok(())
    }
    async fn remove(&self, key: &str) -> ApiResult<()> {
        let r = pb::RemoveSnapshotRequest {
            snapshotter: "remote".into(),
            key: key.into(),
        };
        self.0.clone().remove(r).await.map_err(code)?;
        Ok(())
    }
    async fn stat(&self, key: &str) -> ApiResult<Info> {
        let r = pb::StatSnapshotRequest {
            snapshotter: "remote".into(),
            key: key.into(),
        };
        from_pb_info(
            self.0
                .clone()
                .stat(r)
                .await
                .map_err(code)?
                .into_inner()
                .info,
        )
    }
    async fn update(&self, name: &str, labels: &Labels, paths: &[&str]) -> ApiResult<Info> {
        let info = pb::Info {
            name: name.into(),
            labels: hm(labels),
            ..Default::default()
        };
        let mask = (!paths.is_empty()).then(|| prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        });
        let r = pb::UpdateSnapshotRequest {
            snapshotter: "remote".into(),
            info: Some(info),
            update_mask: mask,
        };
        from_pb_info(
            self.0
                .clone()
                .update(r)
                .await
                .map_err(code)?
                .into_inner()
                .info,
        )
    }
    async fn list(&self, filters: &[&str]) -> ApiResult<Vec<Info>> {
        let r = pb::ListSnapshotsRequest {
            snapshotter: "remote".into(),
            filters: filters.iter().map(|f| f.to_string()).collect(),
        };
        let mut stream = self.0.clone().list(r).await.map_err(code)?.into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.message().await.map_err(code)? {
            for i in batch.info {
                out.push(from_pb_info(Some(i))?);
            }
        }
        Ok(out)
    }
    async fn usage(&self, key: &str) -> ApiResult<Usage> {
        let r = pb::UsageRequest {
            snapshotter: "remote".into(),
            key: key.into(),
        };
        let u = self.0.clone().usage(r).await.map_err(code)?.into_inner();
        Ok(Usage {
            size: u.size,
            inodes: u.inodes,
        })
    }
    async fn cleanup(&self) -> ApiResult<()> {
        self.0
            .clone()
            .cleanup(pb::CleanupRequest {
                snapshotter: "remote".into(),
            })
            .await
            .map_err(code)?;
        Ok(())
    }
}
