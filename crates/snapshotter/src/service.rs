//! The gRPC face: containerd's snapshots.v1 service over [`Snapshotter`].
//! Only conversions live here; [`status`] is the one place errors become
//! gRPC codes. The `snapshotter` field of requests is ignored: this server
//! is one snapshotter.

use crate::error::Error;
use crate::proto::containerd::services::snapshots::v1 as pb;
use crate::proto::containerd::types as pbt;
use crate::snapshotter::Snapshotter;
use crate::types::{Info, Kind, Labels, Mount, Prepared};
use pb::snapshots_server::Snapshots;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// How many infos one List reply message carries.
const LIST_BATCH: usize = 100;

pub struct SnapshotService {
    inner: Arc<Snapshotter>,
}

impl SnapshotService {
    pub fn new(inner: Arc<Snapshotter>) -> Self {
        SnapshotService { inner }
    }

    pub fn into_server(self) -> pb::snapshots_server::SnapshotsServer<Self> {
        pb::snapshots_server::SnapshotsServer::new(self)
    }
}

/// The mapping containerd's errdefs expects (`errdefs.FromGRPC`).
pub fn status(e: Error) -> Status {
    let msg = e.to_string();
    match e {
        Error::NotFound(_) => Status::not_found(msg),
        Error::AlreadyExists(_) => Status::already_exists(msg),
        Error::FailedPrecondition(_) => Status::failed_precondition(msg),
        Error::InvalidArgument(_) => Status::invalid_argument(msg),
        Error::Unavailable { .. } | Error::ShuttingDown => Status::unavailable(msg),
        Error::Store(_) | Error::Io { .. } | Error::Remote(_) => Status::internal(msg),
    }
}

/// containerd's answer to a Prepare: a layer that is already there (mounted
/// remotely just now, or before) is `AlreadyExists`, which its unpacker
/// reads as "skip this layer".
pub fn prepared(r: crate::Result<Prepared>) -> Result<Vec<Mount>, Status> {
    match r.map_err(status)? {
        Prepared::Active(m) => Ok(m),
        Prepared::Mounted { target } | Prepared::AlreadyThere { target } => {
            Err(status(Error::AlreadyExists(target)))
        }
    }
}

fn labels(m: HashMap<String, String>) -> Labels {
    m.into_iter().collect()
}

fn mounts(ms: Vec<Mount>) -> Vec<pbt::Mount> {
    ms.into_iter()
        .map(|m| pbt::Mount {
            r#type: m.fs_type,
            source: m.source,
            target: String::new(),
            options: m.options,
        })
        .collect()
}

fn kind_to_pb(k: Kind) -> pb::Kind {
    match k {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    }
}

pub fn info_to_pb(i: Info) -> pb::Info {
    pb::Info {
        name: i.name,
        parent: i.parent,
        kind: kind_to_pb(i.kind) as i32,
        created_at: Some(i.created.into()),
        updated_at: Some(i.updated.into()),
        labels: i.labels.into_iter().collect(),
    }
}

type ListStream =
    Pin<Box<dyn futures::Stream<Item = Result<pb::ListSnapshotsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Snapshots for SnapshotService {
    async fn prepare(
        &self,
        r: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = r.into_inner();
        let m = prepared(
            self.inner
                .prepare(&r.key, &r.parent, &labels(r.labels))
                .await,
        )?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn view(
        &self,
        r: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = r.into_inner();
        let m = self
            .inner
            .view(&r.key, &r.parent, &labels(r.labels))
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn mounts(
        &self,
        r: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let m = self
            .inner
            .mounts(&r.into_inner().key)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(&self, r: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = r.into_inner();
        self.inner
            .commit(&r.name, &r.key, &labels(r.labels))
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn remove(&self, r: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        self.inner
            .remove(&r.into_inner().key)
            .await
            .map_err(status)?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        r: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let i = self.inner.stat(&r.into_inner().key).await.map_err(status)?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(info_to_pb(i)),
        }))
    }

    async fn update(
        &self,
        r: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = r.into_inner();
        let i = r
            .info
            .ok_or_else(|| Status::invalid_argument("update without info"))?;
        let info = Info {
            name: i.name,
            parent: i.parent,
            kind: Kind::Active, // ignored: only labels are mutable
            labels: labels(i.labels),
            created: std::time::UNIX_EPOCH,
            updated: std::time::UNIX_EPOCH,
        };
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let out = self.inner.update(&info, &paths).await.map_err(status)?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(info_to_pb(out)),
        }))
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        r: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<ListStream>, Status> {
        let infos = self
            .inner
            .list(&r.into_inner().filters)
            .await
            .map_err(status)?;
        let mut batches = Vec::new();
        let mut it = infos.into_iter().map(info_to_pb).peekable();
        while it.peek().is_some() {
            batches.push(Ok(pb::ListSnapshotsResponse {
                info: it.by_ref().take(LIST_BATCH).collect(),
            }));
        }
        Ok(Response::new(Box::pin(futures::stream::iter(batches))))
    }

    async fn usage(
        &self,
        r: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let u = self
            .inner
            .usage(&r.into_inner().key)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, _: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        self.inner.cleanup().await.map_err(status)?;
        Ok(Response::new(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_active_prepare_has_mounts_and_a_layer_that_is_there_is_already_exists() {
        let m = vec![Mount {
            fs_type: "bind".into(),
            source: "/s".into(),
            options: vec![],
        }];
        assert_eq!(prepared(Ok(Prepared::Active(m.clone()))).unwrap(), m);
        for p in [
            Prepared::Mounted {
                target: "c1".into(),
            },
            Prepared::AlreadyThere {
                target: "c1".into(),
            },
        ] {
            let s = prepared(Ok(p)).unwrap_err();
            assert_eq!(s.code(), tonic::Code::AlreadyExists);
            assert!(s.message().contains("c1"), "{}", s.message());
        }
        let e = prepared(Err(Error::NotFound("p".into()))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
    }
}
