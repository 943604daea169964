//! Serving the gRPC service on a unix socket, the way containerd's proxy
//! plugins are reached. Any `:authority` is accepted ([`AnyAuthority`]):
//! clients that dial by path send the path as one.

mod authority;

pub use authority::AnyAuthority;

use crate::service::SnapshotService;
use crate::snapshotter::Snapshotter;
use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is in use by a running server")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket")]
    NotSocket(PathBuf),
    #[error("grpc: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ServeError + 'a {
    move |source| ServeError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Binds `path` (mode 0660, parent created 0711), replacing a stale socket
/// but never one a live server still answers on, nor a non-socket file.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, ServeError> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
                .map_err(io("chmod", dir))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(ServeError::NotSocket(path.to_path_buf()))
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServeError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io("remove", path))?;
        }
        Err(_) => {}
    }
    let l = tokio::net::UnixListener::bind(path).map_err(io("bind", path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(io("chmod", path))?;
    Ok(l)
}

/// The connections of `listener`, each wrapped in [`AnyAuthority`], for
/// `tonic::transport::Server::serve_with_incoming*`.
pub fn incoming(
    listener: tokio::net::UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<AnyAuthority<tokio::net::UnixStream>>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|c| c.map(AnyAuthority::new))
}

/// Serves until `shutdown` resolves, then removes the socket.
pub async fn serve(
    listener: tokio::net::UnixListener,
    path: &Path,
    snapshotter: Arc<Snapshotter>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    serve_routes(listener, path, routes(snapshotter), shutdown).await
}

/// The snapshots service, for [`serve_routes`]; other services (the CRI
/// image service) join it with `Routes::add_service`.
pub fn routes(snapshotter: Arc<Snapshotter>) -> tonic::service::Routes {
    tonic::service::Routes::new(SnapshotService::new(snapshotter).into_server())
}

/// Serves `routes` on one socket until `shutdown` resolves, then removes
/// the socket.
pub async fn serve_routes(
    listener: tokio::net::UnixListener,
    path: &Path,
    routes: tonic::service::Routes,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let incoming = incoming(listener);
    let res = tonic::transport::Server::builder()
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    let _ = std::fs::remove_file(path);
    Ok(res?)
}
