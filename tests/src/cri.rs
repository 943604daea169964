//! A Kubernetes CRI (`runtime.v1`) client for containerd's CRI plugin, the
//! way the kubelet drives a node: pull images, run pod sandboxes and their
//! containers. Blocking calls over an own tokio runtime so tests and `Drop`
//! guards stay synchronous; a pod is stopped and removed when its guard drops.

use crate::image::{busybox_layer, write_oci_layout};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint};

pub use k8s_cri::v1 as api;
/// The status codes of CRI errors (e.g. to retry `Unavailable`).
pub use tonic::Code;

/// How a pod's network is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodNetwork {
    /// The node's network namespace (`hostNetwork: true`): no CNI involved.
    Host,
    /// A network namespace of its own, set up by the CNI config that
    /// `CriOptions::cni` installs.
    Pod,
}

/// Whether the CNI plugins pods with their own network need are installed;
/// like [`crate::require_root_tools`], missing ones fail the test under
/// `CI=true` and skip it elsewhere.
pub fn require_cni_plugins() -> bool {
    let dir = Path::new(crate::containerd::CNI_PLUGIN_DIR);
    let missing: Vec<&str> = ["bridge", "host-local", "loopback"]
        .into_iter()
        .filter(|p| !dir.join(p).is_file())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "needs the CNI plugins {missing:?} in {} (containernetworking-plugins)",
        dir.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("skipping: {msg}");
    false
}

/// A connection to a CRI server (containerd's socket), or to two: the
/// runtime service at one socket, the image service at another (the
/// kubelet's `--image-service-endpoint`).
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    pub fn connect(socket: &Path) -> Cri {
        Cri::connect_split(socket, socket)
    }

    /// The runtime service at `runtime`, the image service at `images`.
    pub fn connect_split(runtime: &Path, images: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let runtime_channel = unix_channel(&rt, runtime);
        let images_channel = if images == runtime {
            runtime_channel.clone()
        } else {
            unix_channel(&rt, images)
        };
        Cri {
            rt,
            runtime: RuntimeServiceClient::new(runtime_channel),
            images: ImageServiceClient::new(images_channel),
        }
    }

    /// Run one call of the runtime service.
    pub fn runtime<T, F>(&self, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        self.rt.block_on(f(self.runtime.clone()))
    }

    /// Run one call of the image service.
    pub fn images<T, F>(&self, f: impl FnOnce(ImageServiceClient<Channel>) -> F) -> T
    where
        F: std::future::Future<Output = T>,
    {
        self.rt.block_on(f(self.images.clone()))
    }

    /// `PullImage`; returns the image id (`image_ref`).
    pub fn pull(&self, image: &str) -> Result<String, tonic::Status> {
        self.pull_with_auth(image, None)
    }

    /// `PullImage` with the `AuthConfig` the kubelet sends from an
    /// `imagePullSecret`; returns the image id.
    pub fn pull_with_auth(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
    ) -> Result<String, tonic::Status> {
        let req = cri::PullImageRequest {
            image: Some(spec(image)),
            auth,
            ..Default::default()
        };
        self.images(|mut c| async move { c.pull_image(req).await })
            .map(|r| r.into_inner().image_ref)
    }

    /// `ImageStatus`: `None` when the runtime does not know the image.
    pub fn image_status(&self, image: &str) -> Option<cri::Image> {
        let req = cri::ImageStatusRequest {
            image: Some(spec(image)),
            verbose: false,
        };
        self.images(|mut c| async move { c.image_status(req).await })
            .expect("ImageStatus")
            .into_inner()
            .image
    }

    /// `ImageFsInfo`: the image filesystems' usage as the kubelet's image
    /// GC sees it.
    pub fn image_fs_info(&self) -> Vec<cri::FilesystemUsage> {
        let req = cri::ImageFsInfoRequest {};
        self.images(|mut c| async move { c.image_fs_info(req).await })
            .expect("ImageFsInfo")
            .into_inner()
            .image_filesystems
    }

    /// `ListImages` without a filter.
    pub fn list_images(&self) -> Vec<cri::Image> {
        let req = cri::ListImagesRequest { filter: None };
        self.images(|mut c| async move { c.list_images(req).await })
            .expect("ListImages")
            .into_inner()
            .images
    }

    pub fn remove_image(&self, image: &str) -> Result<(), tonic::Status> {
        let req = cri::RemoveImageRequest {
            image: Some(spec(image)),
        };
        self.images(|mut c| async move { c.remove_image(req).await })
            .map(|_| ())
    }

    /// `RunPodSandbox` with a minimal pod config: logs under `log_dir`.
    pub fn run_pod(&self, name: &str, network: PodNetwork, log_dir: &Path) -> Pod<'_> {
        self.try_run_pod(name, network, log_dir)
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"))
    }

    /// [`Cri::run_pod`], returning the runtime's error.
    pub fn try_run_pod(
        &self,
        name: &str,
        network: PodNetwork,
        log_dir: &Path,
    ) -> Result<Pod<'_>, tonic::Status> {
        std::fs::create_dir_all(log_dir).unwrap();
        let mode = match network {
            PodNetwork::Host => cri::NamespaceMode::Node,
            PodNetwork::Pod => cri::NamespaceMode::Pod,
        };
        let uid = crate::containerd::unique_id("uid");
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_string(),
                uid,
                namespace: "e2e".to_string(),
                attempt: 0,
            }),
            // A host-network pod shares the host's UTS namespace: no hostname.
            hostname: match network {
                PodNetwork::Host => String::new(),
                PodNetwork::Pod => name.to_string(),
            },
            log_directory: log_dir.display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: mode as i32,
                        pid: cri::NamespaceMode::Pod as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let id = self
            .runtime(|mut c| async move { c.run_pod_sandbox(req).await })?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod {
            cri: self,
            id,
            config,
            log_dir: log_dir.to_path_buf(),
        })
    }
}

/// A channel to the gRPC server on the unix socket `socket`.
fn unix_channel(rt: &tokio::runtime::Runtime, socket: &Path) -> Channel {
    let path = socket.to_path_buf();
    rt.block_on(
        // The URI is required but unused: the connector dials the socket.
        Endpoint::from_static("http://localhost").connect_with_connector(tower::service_fn(
            move |_| {
                let path = path.clone();
                async move {
                    tokio::net::UnixStream::connect(path)
                        .await
                        .map(TokioIo::new)
                }
            },
        )),
    )
    .unwrap_or_else(|e| panic!("connect to the CRI socket {}: {e}", socket.display()))
}

fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}

/// A running pod sandbox; stopped and removed (with its containers) on drop.
pub struct Pod<'a> {
    cri: &'a Cri,
    pub id: String,
    pub config: cri::PodSandboxConfig,
    log_dir: PathBuf,
}

impl Pod<'_> {
    /// `PodSandboxStatus`: the pod's IP ("" with the host's network).
    pub fn ip(&self) -> String {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: self.id.clone(),
            verbose: false,
        };
        self.cri
            .runtime(|mut c| async move { c.pod_sandbox_status(req).await })
            .expect("PodSandboxStatus")
            .into_inner()
            .status
            .and_then(|s| s.network)
            .map(|n| n.ip)
            .unwrap_or_default()
    }

    /// `CreateContainer` + `StartContainer` of `image` running its own
    /// command (`command` empty) or `command`; returns the container id.
    pub fn start_container(&self, name: &str, image: &str, command: &[&str]) -> String {
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(spec(image)),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            ..Default::default()
        };
        let req = cri::CreateContainerRequest {
            pod_sandbox_id: self.id.clone(),
            config: Some(config),
            sandbox_config: Some(self.config.clone()),
        };
        let id = self
            .cri
            .runtime(|mut c| async move { c.create_container(req).await })
            .unwrap_or_else(|e| panic!("CreateContainer {name} of {image}: {e}"))
            .into_inner()
            .container_id;
        let req = cri::StartContainerRequest {
            container_id: id.clone(),
        };
        self.cri
            .runtime(|mut c| async move { c.start_container(req).await })
            .unwrap_or_else(|e| panic!("StartContainer {name}: {e}"));
        id
    }

    pub fn container_status(&self, id: &str) -> cri::ContainerStatus {
        let req = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.cri
            .runtime(|mut c| async move { c.container_status(req).await })
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("a container status")
    }

    /// Wait until container `id` exited; returns its exit code.
    pub fn wait_exited(&self, id: &str, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.container_status(id);
            if st.state == cri::ContainerState::ContainerExited as i32 {
                return st.exit_code;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} still in state {} after {timeout:?}",
                st.state
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What container `name` wrote to stdout and stderr, from its CRI log
    /// file (lines `TIME STREAM TAG MESSAGE`; partial lines joined).
    pub fn log(&self, name: &str) -> String {
        let path = self.log_dir.join(format!("{name}.log"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        parse_cri_log(&text)
    }

    /// `RemoveContainer` (stopping it first if it still runs).
    pub fn remove_container(&self, id: &str) {
        let req = cri::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.cri
            .runtime(|mut c| async move { c.remove_container(req).await })
            .unwrap_or_else(|e| panic!("RemoveContainer {id}: {e}"));
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        let id = self.id.clone();
        let stop = cri::StopPodSandboxRequest {
            pod_sandbox_id: id.clone(),
        };
        let remove = cri::RemovePodSandboxRequest { pod_sandbox_id: id };
        let res = self.cri.runtime(|mut c| async move {
            c.stop_pod_sandbox(stop).await?;
            c.remove_pod_sandbox(remove).await
        });
        if let Err(e) = res {
            // Containerd's own drop still kills what is left.
            eprintln!("removing pod {}: {e}", self.id);
        }
    }
}

/// The messages of a CRI log file: `TIMESTAMP STREAM F|P MESSAGE` per line,
/// `P` lines continued by the next one.
pub fn parse_cri_log(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(4, ' ');
        let (_time, _stream, tag) = (parts.next(), parts.next(), parts.next());
        let msg = parts.next().unwrap_or("");
        out.push_str(msg);
        if tag != Some("P") {
            out.push('\n');
        }
    }
    out
}

/// Write the sandbox ("pause") image into the OCI layout `dir` under `tag`:
/// busybox-static and a shell that sleeps until SIGTERM (PID 1 in the pod's
/// PID namespace ignores signals it has no handler for, hence the trap).
/// Its layer differs from a plain [`busybox_layer`] so that it shares no
/// snapshot with test images built on one.
pub fn write_pause_image(dir: &Path, tag: &str) {
    let mut layer = busybox_layer();
    layer.file("etc/pause", "sandbox image of the e2e tests\n", 0o644);
    write_oci_layout(
        dir,
        tag,
        vec![layer.tar_gz()],
        &[
            "/bin/sh",
            "-c",
            "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cri_log_lines() {
        let text = "2026-12-01T10:00:00.1Z stdout F hello world\n\
                    2026-12-01T10:00:00.2Z stderr P part\n\
                    2026-12-01T10:00:00.3Z stderr F ial\n\
                    2026-12-01T10:00:00.4Z stdout F \n";
        assert_eq!(parse_cri_log(text), "hello world\npartial\n\n");
    }
}
