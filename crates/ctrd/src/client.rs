//! The containerd API calls a lazy pull needs, with the namespace and the
//! lease carried on every request (so garbage collection cannot take content
//! or snapshots between our calls).

use crate::error::{Error, Result};
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    ApplyRequest, CreateImageRequest, CreateRequest as CreateLeaseRequest,
    DeleteRequest as DeleteLeaseRequest, GetImageRequest, Image, InfoRequest, UpdateImageRequest,
    WriteAction, WriteContentRequest,
};
use containerd_client::tonic::{Code, Request};
use containerd_client::types::{Descriptor, Mount};
use std::collections::HashMap;

pub struct Containerd {
    client: containerd_client::Client,
    namespace: String,
    lease: Option<String>,
}

/// What `Prepare` said about a layer.
pub enum Prepared {
    /// The snapshotter mounted the layer remotely and committed it (AlreadyExists).
    Remote,
    /// An ordinary active snapshot: apply the layer into these mounts, then commit.
    Active(Vec<Mount>),
}

impl Containerd {
    pub async fn connect(address: &str, namespace: &str) -> Result<Self> {
        let client = containerd_client::Client::from_path(address)
            .await
            .map_err(|source| Error::Connect {
                address: address.to_string(),
                source,
            })?;
        Ok(Containerd {
            client,
            namespace: namespace.to_string(),
            lease: None,
        })
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        let md = req.metadata_mut();
        if let Ok(v) = self.namespace.parse() {
            md.insert("containerd-namespace", v);
        }
        if let Some(lease) = self.lease.as_ref().and_then(|l| l.parse().ok()) {
            md.insert("containerd-lease", lease);
        }
        req
    }

    /// A lease that expires by itself if we die mid-pull.
    pub async fn begin_lease(&mut self) -> Result<()> {
        let expire = chrono::Utc::now() + chrono::Duration::hours(1);
        let id = format!(
            "rsnap-pull-{}-{}",
            std::process::id(),
            expire.timestamp_nanos_opt().unwrap_or(0)
        );
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), expire.to_rfc3339())]);
        self.client
            .leases()
            .create(self.req(CreateLeaseRequest {
                id: id.clone(),
                labels,
            }))
            .await
            .map_err(Error::rpc("creating a lease"))?;
        self.lease = Some(id);
        Ok(())
    }

    pub async fn end_lease(&mut self) -> Result<()> {
        if let Some(id) = self.lease.take() {
            self.client
                .leases()
                .delete(self.req(DeleteLeaseRequest { id, sync: false }))
                .await
                .map_err(Error::rpc("deleting the lease"))?;
        }
        Ok(())
    }

    pub async fn has_content(&self, digest: &str) -> Result<bool> {
        match self
            .client
            .content()
            .info(self.req(InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(Error::rpc("content info")(s)),
        }
    }

    /// Write `data` (already verified against `digest`) into the content store.
    pub async fn write_content(
        &self,
        digest: &str,
        data: &[u8],
        labels: HashMap<String, String>,
    ) -> Result<()> {
        const PIECE: usize = 1 << 20;
        let wref = format!("rsnap-{digest}");
        let total = data.len() as i64;
        let mut msgs: Vec<WriteContentRequest> = data
            .chunks(PIECE)
            .enumerate()
            .map(|(i, piece)| WriteContentRequest {
                action: WriteAction::Write as i32,
                r#ref: wref.clone(),
                total,
                expected: digest.to_string(),
                offset: (i * PIECE) as i64,
                data: piece.to_vec(),
                labels: HashMap::new(),
            })
            .collect();
        msgs.push(WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: wref,
            total,
            expected: digest.to_string(),
            offset: total,
            data: Vec::new(),
            labels,
        });
        let stream = futures::stream::iter(msgs);
        match self.client.content().write(self.req(stream)).await {
            Ok(resp) => {
                let mut s = resp.into_inner();
                loop {
                    match s.message().await {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) if e.code() == Code::AlreadyExists => break,
                        Err(e) => return Err(Error::rpc("writing content")(e)),
                    }
                }
                Ok(())
            }
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(Error::rpc(format!("writing content {digest}"))(s)),
        }
    }

    pub async fn snapshot_exists(&self, snapshotter: &str, key: &str) -> Result<bool> {
        let req = StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        match self.client.snapshots().stat(self.req(req)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(Error::rpc("snapshot stat")(s)),
        }
    }

    /// Whether the committed snapshot `key` is a remote (lazily mounted)
    /// layer: the snapshotter labels those with the remote marker; a layer
    /// it pulled and unpacked itself has none.
    pub async fn snapshot_is_remote(&self, snapshotter: &str, key: &str) -> Result<bool> {
        let req = StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        let info = self
            .client
            .snapshots()
            .stat(self.req(req))
            .await
            .map_err(Error::rpc("snapshot stat"))?
            .into_inner()
            .info;
        Ok(info.is_some_and(|i| i.labels.contains_key(snapshot_labels::LABEL_REMOTE)))
    }

    pub async fn prepare(
        &self,
        snapshotter: &str,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Prepared> {
        let req = PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels,
        };
        match self.client.snapshots().prepare(self.req(req)).await {
            Ok(r) => Ok(Prepared::Active(r.into_inner().mounts)),
            Err(s) if s.code() == Code::AlreadyExists => Ok(Prepared::Remote),
            Err(s) => Err(Error::rpc(format!("preparing snapshot {key}"))(s)),
        }
    }

    pub async fn commit(&self, snapshotter: &str, name: &str, key: &str) -> Result<()> {
        let req = CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: name.to_string(),
            key: key.to_string(),
            labels: HashMap::new(),
        };
        match self.client.snapshots().commit(self.req(req)).await {
            Ok(_) => Ok(()),
            // Someone else unpacked the same layer meanwhile: theirs is as good.
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(Error::rpc(format!("committing snapshot {name}"))(s)),
        }
    }

    pub async fn remove_snapshot(&self, snapshotter: &str, key: &str) {
        let req = containerd_client::services::v1::snapshots::RemoveSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        };
        let _ = self.client.snapshots().remove(self.req(req)).await;
    }

    /// Apply a layer blob (already in the content store) into `mounts`;
    /// returns the diff ID containerd computed.
    pub async fn apply(&self, layer: Descriptor, mounts: Vec<Mount>) -> Result<String> {
        let req = ApplyRequest {
            diff: Some(layer),
            mounts,
            payloads: HashMap::new(),
            sync_fs: false,
        };
        let resp = self
            .client
            .diff()
            .apply(self.req(req))
            .await
            .map_err(Error::rpc("applying a layer"))?;
        Ok(resp
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default())
    }

    /// Create the image record, or point an existing one at the new target.
    pub async fn put_image(&self, name: &str, target: Descriptor) -> Result<()> {
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let exists = match self
            .client
            .images()
            .get(self.req(GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(_) => true,
            Err(s) if s.code() == Code::NotFound => false,
            Err(s) => return Err(Error::rpc("getting image")(s)),
        };
        if exists {
            let req = UpdateImageRequest {
                image: Some(image),
                update_mask: None,
                source_date_epoch: None,
            };
            self.client
                .images()
                .update(self.req(req))
                .await
                .map_err(Error::rpc("updating image"))?;
        } else {
            let req = CreateImageRequest {
                image: Some(image),
                source_date_epoch: None,
            };
            self.client
                .images()
                .create(self.req(req))
                .await
                .map_err(Error::rpc("creating image"))?;
        }
        Ok(())
    }
}
