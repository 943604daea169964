//! `runtime.v1.ImageService` on our own unix socket, forwarded to
//! containerd's (requests with their metadata, replies and errors as they
//! come). `PullImage` credentials go into the [`Keychain`] before the
//! call is forwarded: containerd asks the snapshotter for the image's layers
//! while that very call runs.

use crate::credentials::Credentials;
use crate::keychain::Keychain;
use crate::reference::host_and_repository;
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
use std::future::Future;
use std::path::Path;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("serving the CRI image service: {0}")]
    Serve(#[source] tonic::transport::Error),
}

/// A lazily connected client of the image service at `socket`
/// (containerd's socket; it may come up after us, and reconnects).
pub fn connect_upstream(socket: &Path) -> ImageServiceClient<Channel> {
    let path = socket.to_path_buf();
    // The URI is required but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://localhost").connect_with_connector_lazy(
        tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }),
    );
    ImageServiceClient::new(channel)
}

/// What a pull's credentials replaced in the keychain.
struct Undo {
    host: String,
    repo: String,
    previous: Option<Credentials>,
}

/// Forwards every image-service call to `upstream`, learning credentials.
#[derive(Clone)]
pub struct ImageServiceProxy {
    upstream: ImageServiceClient<Channel>,
    keychain: Keychain,
}

impl ImageServiceProxy {
    pub fn new(upstream: ImageServiceClient<Channel>, keychain: Keychain) -> ImageServiceProxy {
        ImageServiceProxy { upstream, keychain }
    }

    pub fn keychain(&self) -> &Keychain {
        &self.keychain
    }

    pub fn into_server(self) -> ImageServiceServer<ImageServiceProxy> {
        ImageServiceServer::new(self)
    }

    /// Record the credentials of a pull of `image` (never logging them);
    /// returns how to undo it.
    fn learn(&self, image: &str, auth: Option<&cri::AuthConfig>) -> Option<Undo> {
        let creds = auth.and_then(Credentials::from_auth_config)?;
        let Some((host, repo)) = host_and_repository(image) else {
            tracing::debug!(image, "CRI keychain: not an image reference");
            return None;
        };
        tracing::debug!(%host, %repo, "CRI keychain: credentials for a pull");
        let previous = self.keychain.insert(&host, &repo, creds);
        Some(Undo {
            host,
            repo,
            previous,
        })
    }
}

#[tonic::async_trait]
impl ImageService for ImageServiceProxy {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        self.upstream.clone().list_images(req).await
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        self.upstream.clone().image_status(req).await
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let r = req.get_ref();
        let undo = r
            .image
            .as_ref()
            .and_then(|i| self.learn(&i.image, r.auth.as_ref()));
        let res = self.upstream.clone().pull_image(req).await;
        if let (Err(_), Some(u)) = (&res, undo) {
            // A secret the registry refused must not replace one it took.
            self.keychain.restore(&u.host, &u.repo, u.previous);
        }
        res
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        self.upstream.clone().remove_image(req).await
    }

    async fn image_fs_info(
        &self,
        req: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        self.upstream.clone().image_fs_info(req).await
    }
}

/// Serve `proxy` on `listener` (from `snapshotter::server::bind`) until
/// `shutdown`, accepting any `:authority`; removes the socket `path` after.
pub async fn serve(
    listener: tokio::net::UnixListener,
    path: &Path,
    proxy: ImageServiceProxy,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let res = tonic::transport::Server::builder()
        .add_service(proxy.into_server())
        .serve_with_incoming_shutdown(snapshotter::server::incoming(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(path);
    res.map_err(ProxyError::Serve)
}
