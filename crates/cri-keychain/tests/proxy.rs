//! The proxy between a CRI client and a fake upstream image service, both on
//! unix sockets: every call is forwarded with its answer or error, and a
//! PullImage's credentials are in the keychain by the time upstream sees
//! the pull (the snapshotter needs them during the pull).

use cri_keychain::{connect_upstream, serve, Credentials, ImageServiceProxy, Keychain};
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::image_service_server::{ImageService, ImageServiceServer};
use std::path::Path;
use std::sync::{Arc, Mutex};
use tonic::{Request, Response, Status};

/// A pull as upstream saw it, with the keychain's entry at that moment.
type SeenPull = (cri::PullImageRequest, Option<Credentials>);

/// Upstream: knows one image; records what each pull carried and whether
/// the keychain already had the credentials then.
#[derive(Clone)]
struct Upstream {
    keychain: Keychain,
    pulls: Arc<Mutex<Vec<SeenPull>>>,
}

#[tonic::async_trait]
impl ImageService for Upstream {
    async fn list_images(
        &self,
        _: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        Ok(Response::new(cri::ListImagesResponse {
            images: vec![cri::Image {
                id: "sha256:1".into(),
                repo_tags: vec!["reg.io/a/b:v1".into()],
                ..Default::default()
            }],
        }))
    }

    async fn image_status(
        &self,
        _: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        Err(Status::not_found("no such image"))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let seen = self.keychain.credentials("reg.io", "a/b");
        let req = req.into_inner();
        let wrong = req.auth.as_ref().is_some_and(|a| a.password == "wrong");
        self.pulls.lock().unwrap().push((req, seen));
        if wrong {
            return Err(Status::unknown("failed to pull: 401 Unauthorized"));
        }
        Ok(Response::new(cri::PullImageResponse {
            image_ref: "sha256:1".into(),
        }))
    }

    async fn remove_image(
        &self,
        _: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        Ok(Response::new(cri::ImageFsInfoResponse::default()))
    }
}

async fn client(path: &Path) -> ImageServiceClient<tonic::transport::Channel> {
    let path = path.to_path_buf();
    let ch = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    ImageServiceClient::new(ch)
}

fn pull(image: &str, auth: Option<cri::AuthConfig>) -> cri::PullImageRequest {
    cri::PullImageRequest {
        image: Some(cri::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        auth,
        sandbox_config: None,
    }
}

#[tokio::test]
async fn forwards_every_call_and_learns_pull_credentials_first() {
    let dir = tempfile::tempdir().unwrap();
    let up_sock = dir.path().join("containerd.sock");
    let our_sock = dir.path().join("keychain.sock");
    let keychain = Keychain::new();
    let upstream = Upstream {
        keychain: keychain.clone(),
        pulls: Default::default(),
    };
    let up_listener = tokio::net::UnixListener::bind(&up_sock).unwrap();
    let up = upstream.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(ImageServiceServer::new(up))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(up_listener))
            .await
            .unwrap();
    });
    let listener = snapshotter::server::bind(&our_sock).unwrap();
    let proxy = ImageServiceProxy::new(connect_upstream(&up_sock), keychain.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let path = our_sock.clone();
    let server = tokio::spawn(async move {
        serve(listener, &path, proxy, async {
            let _ = stopped.await;
        })
        .await
    });

    let mut c = client(&our_sock).await;
    let listed = c
        .list_images(cri::ListImagesRequest { filter: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.images[0].repo_tags, ["reg.io/a/b:v1"]);
    let err = c
        .image_status(cri::ImageStatusRequest {
            image: None,
            verbose: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert_eq!(err.message(), "no such image");

    // A pull without credentials teaches nothing.
    c.pull_image(pull("reg.io/a/b:v1", None)).await.unwrap();
    assert!(keychain.is_empty());

    let auth = cri::AuthConfig {
        username: "user".into(),
        password: "secret".into(),
        server_address: "reg.io".into(),
        ..Default::default()
    };
    let got = c
        .pull_image(pull("reg.io/a/b:v1", Some(auth.clone())))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.image_ref, "sha256:1");
    let basic = Credentials::Basic {
        username: "user".into(),
        password: "secret".into(),
    };
    assert_eq!(keychain.credentials("reg.io", "a/b"), Some(basic.clone()));
    {
        let pulls = upstream.pulls.lock().unwrap();
        assert_eq!(pulls.len(), 2);
        // Forwarded with its credentials, which were known before.
        assert_eq!(pulls[1].0.auth.as_ref(), Some(&auth));
        assert_eq!(pulls[1].1, Some(basic));
    }

    // A wrong secret fails as upstream says, unchanged.
    let wrong = cri::AuthConfig {
        password: "wrong".into(),
        ..auth
    };
    let err = c
        .pull_image(pull("reg.io/a/b:v1", Some(wrong)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unknown);
    assert!(err.message().contains("401"), "{err}");
    // The refused secret did not replace the good one.
    assert_eq!(
        keychain.credentials("reg.io", "a/b"),
        Some(Credentials::Basic {
            username: "user".into(),
            password: "secret".into(),
        })
    );

    c.remove_image(cri::RemoveImageRequest { image: None })
        .await
        .unwrap();
    c.image_fs_info(cri::ImageFsInfoRequest {}).await.unwrap();

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(!our_sock.exists(), "socket removed after shutdown");
}
