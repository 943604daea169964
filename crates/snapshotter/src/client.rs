//! A gRPC client for a snapshots.v1 server on a unix socket (ours or any
//! other proxy snapshotter). Used by the conformance suite and tools.

use crate::proto::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use std::path::Path;
use tonic::transport::{Channel, Endpoint};

pub type Client = SnapshotsClient<Channel>;

pub async fn connect_unix(path: &Path) -> Result<Client, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await?;
    Ok(SnapshotsClient::new(channel))
}
