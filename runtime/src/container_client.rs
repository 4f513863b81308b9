//! The host's side of the agent's container requests: create, start,
//! exec, signal, wait, delete, state, stats and events, with each
//! process's stdio relayed like `guest_process` does for plain execs.

use runvm_agent_api::oci::{Process, Spec};
use runvm_agent_api::{
    ContainerEvent, ContainerState, ContainerStats, CreateContainerRequest, ExecInContainerRequest,
    ExitStatus, GuestProcess, RequestBody, ResponseBody,
};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use crate::agent_client::{AgentClient, ClientError};
use crate::guest_process::{copy_in, copy_out, HostStdio, Started};

/// A container process (init or exec) and the copies of its stdio.
pub struct ContainerProcess {
    pub started: Started,
    input: Option<JoinHandle<()>>,
    outputs: Vec<JoinHandle<()>>,
}

impl ContainerProcess {
    /// Waits until the output streams reached end of file (every byte the
    /// process wrote has been passed on); input still being copied is
    /// abandoned.
    pub async fn drain(self) {
        for output in self.outputs {
            let _ = output.await;
        }
        if let Some(input) = self.input {
            input.abort();
        }
    }
}

/// Container requests over one agent connection.
pub struct ContainerClient<'a> {
    agent: &'a AgentClient,
}

type Opened<T> = Option<(u64, UnixStream, T)>;

async fn open<T>(agent: &AgentClient, end: Option<T>) -> Result<Opened<T>, ClientError> {
    match end {
        None => Ok(None),
        Some(end) => {
            let (token, stream) = agent.open_stream().await?;
            Ok(Some((token, stream, end)))
        }
    }
}

fn token<T>(opened: &Opened<T>) -> Option<u64> {
    opened.as_ref().map(|(token, _, _)| *token)
}

struct Streams {
    stdin: Opened<crate::guest_process::HostReader>,
    stdout: Opened<crate::guest_process::HostWriter>,
    stderr: Opened<crate::guest_process::HostWriter>,
    /// The one stream of a terminal, its token given as stdin's.
    terminal: Option<(
        u64,
        UnixStream,
        crate::guest_process::HostReader,
        crate::guest_process::HostWriter,
    )>,
}

impl Streams {
    async fn open(agent: &AgentClient, stdio: HostStdio) -> Result<Streams, ClientError> {
        Ok(Streams {
            stdin: open(agent, stdio.stdin).await?,
            stdout: open(agent, stdio.stdout).await?,
            stderr: open(agent, stdio.stderr).await?,
            terminal: None,
        })
    }

    fn tokens(&self) -> (Option<u64>, Option<u64>, Option<u64>) {
        if let Some((token, ..)) = &self.terminal {
            return (Some(*token), None, None);
        }
        (token(&self.stdin), token(&self.stdout), token(&self.stderr))
    }

    fn relay(self, started: Started) -> ContainerProcess {
        if let Some((_, stream, input, output)) = self.terminal {
            let (from_guest, to_guest) = stream.into_split();
            return ContainerProcess {
                started,
                input: Some(tokio::spawn(copy_in(input, to_guest))),
                outputs: vec![tokio::spawn(copy_out(from_guest, output))],
            };
        }
        let input = self
            .stdin
            .map(|(_, stream, reader)| tokio::spawn(copy_in(reader, stream)));
        let outputs = [self.stdout, self.stderr]
            .into_iter()
            .flatten()
            .map(|(_, stream, writer)| tokio::spawn(copy_out(stream, writer)))
            .collect();
        ContainerProcess {
            started,
            input,
            outputs,
        }
    }
}

/// A container process's stdio on the host: separate streams, or a
/// terminal (one stream carrying it both ways).
pub enum ContainerIo {
    Pipes(HostStdio),
    Terminal {
        input: crate::guest_process::HostReader,
        output: crate::guest_process::HostWriter,
    },
}

impl ContainerIo {
    async fn open(self, agent: &AgentClient) -> Result<Streams, ClientError> {
        match self {
            ContainerIo::Pipes(stdio) => Streams::open(agent, stdio).await,
            ContainerIo::Terminal { input, output } => {
                let (token, stream) = agent.open_stream().await?;
                Ok(Streams {
                    stdin: None,
                    stdout: None,
                    stderr: None,
                    terminal: Some((token, stream, input, output)),
                })
            }
        }
    }
}

fn started(body: ResponseBody) -> Result<Started, ClientError> {
    match body {
        ResponseBody::Started { process, pid } => Ok(Started { process, pid }),
        other => Err(ClientError::Unexpected(other)),
    }
}

fn done(body: ResponseBody) -> Result<(), ClientError> {
    match body {
        ResponseBody::Done => Ok(()),
        other => Err(ClientError::Unexpected(other)),
    }
}

impl<'a> ContainerClient<'a> {
    pub fn new(agent: &'a AgentClient) -> ContainerClient<'a> {
        ContainerClient { agent }
    }

    /// Creates container `id` from `spec` with its root at `rootfs` (a
    /// guest path); its init is held until [`Self::start`]. `program`: the
    /// process's program as the host found it in PATH
    /// ([`crate::program_path::resolve`]), if it did.
    pub async fn create(
        &self,
        id: &str,
        spec: Spec,
        rootfs: &str,
        program: Option<String>,
        stdio: HostStdio,
    ) -> Result<ContainerProcess, ClientError> {
        let request = CreateContainerRequest {
            id: id.into(),
            spec,
            rootfs: rootfs.into(),
            program,
            ..CreateContainerRequest::default()
        };
        self.create_request(request, ContainerIo::Pipes(stdio))
            .await
    }

    /// [`Self::create`] of a container of a pod (see
    /// [`crate::sandbox::Prepared`]), with pipes or a terminal
    /// (`process.terminal`). The container that owns the pod's network
    /// namespace passes the pod's `network` (see
    /// [`runvm_agent_api::network`]) for the guest's devices.
    pub async fn create_in_pod(
        &self,
        id: &str,
        prepared: crate::sandbox::Prepared,
        io: ContainerIo,
        network: Option<runvm_agent_api::network::GuestNetwork>,
    ) -> Result<ContainerProcess, ClientError> {
        let request = CreateContainerRequest {
            id: id.into(),
            spec: prepared.spec,
            rootfs: prepared.rootfs,
            pod: Some(prepared.pod),
            program: prepared.program,
            network,
            ..CreateContainerRequest::default()
        };
        self.create_request(request, io).await
    }

    /// Sends `request` with the stream tokens of `io`.
    async fn create_request(
        &self,
        mut request: CreateContainerRequest,
        io: ContainerIo,
    ) -> Result<ContainerProcess, ClientError> {
        let streams = io.open(self.agent).await?;
        (request.stdin, request.stdout, request.stderr) = streams.tokens();
        let body = self
            .agent
            .call(RequestBody::CreateContainer(Box::new(request)))
            .await?;
        Ok(streams.relay(started(body)?))
    }

    pub async fn start(&self, id: &str) -> Result<(), ClientError> {
        done(
            self.agent
                .call(RequestBody::StartContainer { id: id.into() })
                .await?,
        )
    }

    pub async fn exec(
        &self,
        id: &str,
        process: Process,
        stdio: HostStdio,
    ) -> Result<ContainerProcess, ClientError> {
        self.exec_with(id, process, ContainerIo::Pipes(stdio)).await
    }

    /// [`Self::exec`] with pipes or a terminal (`process.terminal`).
    pub async fn exec_with(
        &self,
        id: &str,
        process: Process,
        io: ContainerIo,
    ) -> Result<ContainerProcess, ClientError> {
        let streams = io.open(self.agent).await?;
        let (stdin, stdout, stderr) = streams.tokens();
        let request = ExecInContainerRequest {
            id: id.into(),
            process,
            stdin,
            stdout,
            stderr,
        };
        let body = self
            .agent
            .call(RequestBody::ExecInContainer(Box::new(request)))
            .await?;
        Ok(streams.relay(started(body)?))
    }

    pub async fn signal(&self, id: &str, signal: i32, all: bool) -> Result<(), ClientError> {
        done(
            self.agent
                .call(RequestBody::SignalContainer {
                    id: id.into(),
                    signal,
                    all,
                })
                .await?,
        )
    }

    /// Waits for the container's init to end.
    pub async fn wait(&self, id: &str) -> Result<ExitStatus, ClientError> {
        match self
            .agent
            .call(RequestBody::WaitContainer { id: id.into() })
            .await?
        {
            ResponseBody::Exited { status, .. } => Ok(status),
            other => Err(ClientError::Unexpected(other)),
        }
    }

    pub async fn delete(&self, id: &str, force: bool) -> Result<(), ClientError> {
        done(
            self.agent
                .call(RequestBody::DeleteContainer {
                    id: id.into(),
                    force,
                })
                .await?,
        )
    }

    /// Freezes (`frozen`) or thaws the container's processes.
    pub async fn freeze(&self, id: &str, frozen: bool) -> Result<(), ClientError> {
        done(
            self.agent
                .call(RequestBody::FreezeContainer {
                    id: id.into(),
                    frozen,
                })
                .await?,
        )
    }

    /// New cgroup limits (OCI linux.resources; fields left out stay).
    pub async fn update(
        &self,
        id: &str,
        resources: runvm_agent_api::oci::LinuxResources,
    ) -> Result<(), ClientError> {
        done(
            self.agent
                .call(RequestBody::UpdateContainer {
                    id: id.into(),
                    resources: Box::new(resources),
                })
                .await?,
        )
    }

    pub async fn state(&self, id: &str) -> Result<ContainerState, ClientError> {
        match self
            .agent
            .call(RequestBody::ContainerState { id: id.into() })
            .await?
        {
            ResponseBody::ContainerState(state) => Ok(state),
            other => Err(ClientError::Unexpected(other)),
        }
    }

    pub async fn stats(&self, id: &str) -> Result<ContainerStats, ClientError> {
        match self
            .agent
            .call(RequestBody::ContainerStats { id: id.into() })
            .await?
        {
            ResponseBody::ContainerStats(stats) => Ok(stats),
            other => Err(ClientError::Unexpected(other)),
        }
    }

    /// Every live process of the container (its guest cgroup).
    pub async fn processes(&self, id: &str) -> Result<Vec<GuestProcess>, ClientError> {
        match self
            .agent
            .call(RequestBody::ContainerProcesses { id: id.into() })
            .await?
        {
            ResponseBody::ContainerProcesses { processes } => Ok(processes),
            other => Err(ClientError::Unexpected(other)),
        }
    }

    /// The first event after sequence number `after` (0: the oldest kept),
    /// waiting for one.
    pub async fn next_event(&self, after: u64) -> Result<(u64, ContainerEvent), ClientError> {
        match self.agent.call(RequestBody::WaitEvent { after }).await? {
            ResponseBody::Event { seq, event } => Ok((seq, event)),
            other => Err(ClientError::Unexpected(other)),
        }
    }
}
