//! Runs one process in the guest and relays its stdio: each stream is its
//! own vsock connection, copied to or from a host reader or writer.

use runvm_agent_api::{ExecRequest, ExitStatus, RequestBody, ResponseBody};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

use crate::agent_client::{AgentClient, ClientError};

pub type HostReader = Box<dyn AsyncRead + Unpin + Send>;
pub type HostWriter = Box<dyn AsyncWrite + Unpin + Send>;

/// Where the process's stdio goes on the host. `None` gives the process
/// /dev/null for that stream.
#[derive(Default)]
pub struct HostStdio {
    pub stdin: Option<HostReader>,
    pub stdout: Option<HostWriter>,
    pub stderr: Option<HostWriter>,
}

/// What to run; the stream tokens of `ExecRequest` are filled in here.
#[derive(Clone, Debug, Default)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub uid: u32,
    pub gid: u32,
}

/// A started process: its agent-side id and guest pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    pub process: u64,
    pub pid: i32,
}

/// The copies in flight for one process.
pub struct Relay {
    pub started: Started,
    input: Option<JoinHandle<()>>,
    outputs: Vec<JoinHandle<()>>,
}

impl Relay {
    /// Waits for the process to end and for its output streams to reach
    /// end of file (the agent closes each once the process side has), so
    /// every byte the process wrote has been passed on. Input still being
    /// copied then is abandoned.
    pub async fn finish(self, agent: &AgentClient) -> Result<ExitStatus, ClientError> {
        let status = wait(agent, self.started.process).await?;
        for output in self.outputs {
            let _ = output.await;
        }
        if let Some(input) = self.input {
            input.abort();
        }
        Ok(status)
    }
}

/// Starts `spec` without a terminal, relaying `stdio`.
pub async fn spawn(
    agent: &AgentClient,
    spec: &ProcessSpec,
    stdio: HostStdio,
) -> Result<Relay, ClientError> {
    let stdin = open_for(agent, stdio.stdin).await?;
    let stdout = open_for(agent, stdio.stdout).await?;
    let stderr = open_for(agent, stdio.stderr).await?;
    let request = ExecRequest {
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        uid: spec.uid,
        gid: spec.gid,
        terminal: false,
        stdin: stdin.as_ref().map(|(token, _, _)| *token),
        stdout: stdout.as_ref().map(|(token, _, _)| *token),
        stderr: stderr.as_ref().map(|(token, _, _)| *token),
    };
    let started = exec(agent, request).await?;
    let input = stdin.map(|(_, stream, reader)| tokio::spawn(copy_in(reader, stream)));
    let outputs = [stdout, stderr]
        .into_iter()
        .flatten()
        .map(|(_, stream, writer)| tokio::spawn(copy_out(stream, writer)))
        .collect();
    Ok(Relay {
        started,
        input,
        outputs,
    })
}

/// Starts `spec` on a terminal: one stream carries the terminal both ways.
pub async fn spawn_on_terminal(
    agent: &AgentClient,
    spec: &ProcessSpec,
    input: HostReader,
    output: HostWriter,
    size: Option<(u16, u16)>,
) -> Result<Relay, ClientError> {
    let (token, stream) = agent.open_stream().await?;
    let request = ExecRequest {
        argv: spec.argv.clone(),
        env: spec.env.clone(),
        cwd: spec.cwd.clone(),
        uid: spec.uid,
        gid: spec.gid,
        terminal: true,
        stdin: Some(token),
        stdout: None,
        stderr: None,
    };
    let started = exec(agent, request).await?;
    if let Some((rows, columns)) = size {
        agent
            .call(RequestBody::ResizeTerminal {
                process: started.process,
                rows,
                columns,
            })
            .await?;
    }
    let (from_guest, to_guest) = stream.into_split();
    let input = tokio::spawn(copy_in(input, to_guest));
    let output = tokio::spawn(copy_out(from_guest, output));
    Ok(Relay {
        started,
        input: Some(input),
        outputs: vec![output],
    })
}

async fn open_for<T>(
    agent: &AgentClient,
    end: Option<T>,
) -> Result<Option<(u64, UnixStream, T)>, ClientError> {
    match end {
        None => Ok(None),
        Some(end) => {
            let (token, stream) = agent.open_stream().await?;
            Ok(Some((token, stream, end)))
        }
    }
}

async fn exec(agent: &AgentClient, request: ExecRequest) -> Result<Started, ClientError> {
    match agent.call(RequestBody::Exec(request)).await? {
        ResponseBody::Started { process, pid } => Ok(Started { process, pid }),
        other => Err(ClientError::Unexpected(other)),
    }
}

/// Waits for process `process` to end.
pub async fn wait(agent: &AgentClient, process: u64) -> Result<ExitStatus, ClientError> {
    match agent.call(RequestBody::Wait { process }).await? {
        ResponseBody::Exited { status, .. } => Ok(status),
        other => Err(ClientError::Unexpected(other)),
    }
}

/// Host input to the guest; at its end the stream is half-closed, which
/// the agent turns into end of file on the process's stdin.
pub(crate) async fn copy_in<R, W>(mut from_host: R, mut to_guest: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = tokio::io::copy(&mut from_host, &mut to_guest).await;
    let _ = to_guest.shutdown().await;
}

/// Guest output to the host, until the agent closes the stream.
pub(crate) async fn copy_out<R, W>(mut from_guest: R, mut to_host: W)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let _ = tokio::io::copy(&mut from_guest, &mut to_host).await;
    let _ = to_host.flush().await;
}
