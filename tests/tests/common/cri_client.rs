//! A blocking client of the CRI v1 API (the `k8s-cri` crate's tonic
//! stubs) on a unix socket, for the tests that drive containerd's CRI
//! plugin the way the kubelet does. Each call runs on a current-thread
//! tokio runtime of the client's own and has a time limit.

#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// The most one CRI call may take (a pod's VM boot on a busy host
/// included).
const CALL_PATIENCE: Duration = Duration::from_secs(300);

pub use k8s_cri::v1 as cri;

pub struct CriClient {
    tokio: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// What a failed call said: the RPC, its gRPC status code and message.
#[derive(Debug)]
pub struct CallError(pub String);

impl CriClient {
    /// Connects to the CRI server at `socket` (a unix socket).
    pub fn connect(socket: &Path) -> Result<CriClient, CallError> {
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CallError(format!("a tokio runtime: {e}")))?;
        let socket: PathBuf = socket.to_path_buf();
        let channel = tokio
            .block_on(async move {
                // The URI is a placeholder: the connector dials the socket.
                Endpoint::try_from("http://[::1]:0")?
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let socket = socket.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                UnixStream::connect(socket).await?,
                            ))
                        }
                    }))
                    .await
            })
            .map_err(|e| CallError(format!("connecting to the CRI socket: {e}")))?;
        Ok(CriClient {
            tokio,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// Runs one call to its end or [`CALL_PATIENCE`].
    fn block<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CallError> {
        match self
            .tokio
            .block_on(async { tokio::time::timeout(CALL_PATIENCE, call).await })
        {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(CallError(format!(
                "{what}: {:?}: {}",
                status.code(),
                status.message()
            ))),
            Err(_) => Err(CallError(format!(
                "{what}: no answer within {CALL_PATIENCE:?}"
            ))),
        }
    }

    pub fn version(&self) -> Result<cri::VersionResponse, CallError> {
        let mut client = self.runtime.clone();
        self.block("Version", async move {
            client.version(cri::VersionRequest::default()).await
        })
    }

    pub fn status(&self) -> Result<cri::StatusResponse, CallError> {
        let mut client = self.runtime.clone();
        self.block("Status", async move {
            client.status(cri::StatusRequest { verbose: false }).await
        })
    }

    pub fn image_status(&self, image: &str) -> Result<Option<cri::Image>, CallError> {
        let mut client = self.images.clone();
        let request = cri::ImageStatusRequest {
            image: Some(image_spec(image)),
            verbose: false,
        };
        self.block(
            "ImageStatus",
            async move { client.image_status(request).await },
        )
        .map(|response| response.image)
    }

    /// RunPodSandbox with `handler` as the runtime handler; the pod's id.
    pub fn run_pod(
        &self,
        config: &cri::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, CallError> {
        let mut client = self.runtime.clone();
        let request = cri::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        self.block("RunPodSandbox", async move {
            client.run_pod_sandbox(request).await
        })
        .map(|response| response.pod_sandbox_id)
    }

    pub fn stop_pod(&self, pod: &str) -> Result<(), CallError> {
        let mut client = self.runtime.clone();
        let request = cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        };
        self.block("StopPodSandbox", async move {
            client.stop_pod_sandbox(request).await
        })
        .map(drop)
    }

    pub fn remove_pod(&self, pod: &str) -> Result<(), CallError> {
        let mut client = self.runtime.clone();
        let request = cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        };
        self.block("RemovePodSandbox", async move {
            client.remove_pod_sandbox(request).await
        })
        .map(drop)
    }

    pub fn pod_status(&self, pod: &str) -> Result<cri::PodSandboxStatus, CallError> {
        let mut client = self.runtime.clone();
        let request = cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_string(),
            verbose: false,
        };
        self.block("PodSandboxStatus", async move {
            client.pod_sandbox_status(request).await
        })?
        .status
        .ok_or_else(|| CallError("PodSandboxStatus: no status".into()))
    }

    pub fn list_pods(&self) -> Result<Vec<cri::PodSandbox>, CallError> {
        let mut client = self.runtime.clone();
        self.block("ListPodSandbox", async move {
            client
                .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                .await
        })
        .map(|response| response.items)
    }

    /// CreateContainer in `pod`; the container's id.
    pub fn create_container(
        &self,
        pod: &str,
        config: &cri::ContainerConfig,
        pod_config: &cri::PodSandboxConfig,
    ) -> Result<String, CallError> {
        let mut client = self.runtime.clone();
        let request = cri::CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        self.block("CreateContainer", async move {
            client.create_container(request).await
        })
        .map(|response| response.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), CallError> {
        let mut client = self.runtime.clone();
        let request = cri::StartContainerRequest {
            container_id: id.to_string(),
        };
        self.block("StartContainer", async move {
            client.start_container(request).await
        })
        .map(drop)
    }

    /// StopContainer: SIGTERM (the image's stop signal), SIGKILL after
    /// `timeout` seconds.
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), CallError> {
        let mut client = self.runtime.clone();
        let request = cri::StopContainerRequest {
            container_id: id.to_string(),
            timeout,
        };
        self.block("StopContainer", async move {
            client.stop_container(request).await
        })
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<(), CallError> {
        let mut client = self.runtime.clone();
        let request = cri::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.block("RemoveContainer", async move {
            client.remove_container(request).await
        })
        .map(drop)
    }

    pub fn container_status(&self, id: &str) -> Result<cri::ContainerStatus, CallError> {
        let mut client = self.runtime.clone();
        let request = cri::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.block("ContainerStatus", async move {
            client.container_status(request).await
        })?
        .status
        .ok_or_else(|| CallError("ContainerStatus: no status".into()))
    }

    pub fn container_stats(&self, id: &str) -> Result<cri::ContainerStats, CallError> {
        let mut client = self.runtime.clone();
        let request = cri::ContainerStatsRequest {
            container_id: id.to_string(),
        };
        self.block("ContainerStats", async move {
            client.container_stats(request).await
        })?
        .stats
        .ok_or_else(|| CallError("ContainerStats: no stats".into()))
    }

    pub fn update_resources(
        &self,
        id: &str,
        resources: cri::LinuxContainerResources,
    ) -> Result<(), CallError> {
        let mut client = self.runtime.clone();
        let request = cri::UpdateContainerResourcesRequest {
            container_id: id.to_string(),
            linux: Some(resources),
            ..Default::default()
        };
        self.block("UpdateContainerResources", async move {
            client.update_container_resources(request).await
        })
        .map(drop)
    }

    pub fn list_containers(&self) -> Result<Vec<cri::Container>, CallError> {
        let mut client = self.runtime.clone();
        self.block("ListContainers", async move {
            client
                .list_containers(cri::ListContainersRequest { filter: None })
                .await
        })
        .map(|response| response.containers)
    }

    /// ExecSync `command` in container `id`: (exit code, stdout, stderr).
    pub fn exec_sync(
        &self,
        id: &str,
        command: &[&str],
    ) -> Result<(i32, String, String), CallError> {
        self.exec_sync_within(id, command, CALL_PATIENCE)
    }

    /// [`Self::exec_sync`] with ExecSync's `timeout` (whole seconds).
    pub fn exec_sync_within(
        &self,
        id: &str,
        command: &[&str],
        timeout: Duration,
    ) -> Result<(i32, String, String), CallError> {
        let mut client = self.runtime.clone();
        let request = cri::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: command.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs() as i64,
        };
        self.block("ExecSync", async move { client.exec_sync(request).await })
            .map(|response| {
                (
                    response.exit_code,
                    String::from_utf8_lossy(&response.stdout).into_owned(),
                    String::from_utf8_lossy(&response.stderr).into_owned(),
                )
            })
    }
}

pub fn image_spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.to_string(),
        ..Default::default()
    }
}
