//! The monitor: the host process that stands for one container process
//! (the init, or one `exec`). Callers such as conmon and containerd's
//! shim wait on the pid in `--pid-file` and expect it to be their
//! descendant, to take their signals and to end with the process's status;
//! the process itself is in a guest, so runvm leaves this process behind:
//! - for the init of a container that owns a VM it owns the microVM (VMM
//!   and virtiofsd die with it: PR_SET_PDEATHSIG) and serves the sandbox's
//!   control socket; a member's monitor owns no VM (see [`init`] and
//!   [`crate::sandbox`]);
//! - it relays the stdio it inherited (or a pty it sent over
//!   `--console-socket`) to the guest's streams;
//! - it forwards the signals it receives to the guest process;
//! - it exits with the process's status (128+signal when killed) once
//!   the process has ended and its output is drained; the init's monitor
//!   stops the VM first.
//!
//! Setting up is reported to the runvm call that started it (`create`,
//! `exec --detach`) over a socket pair: a JSON line `{"ready": ...}` or
//! `{"error": ...}`; the caller answers `go` once it has written the pid
//! file (and run its hooks), or closes the socket to abort. Until `go`
//! the monitor dies with its caller (PR_SET_PDEATHSIG), so a runvm killed
//! mid-create leaves no VM behind.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use oci_spec::runtime::Process;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

mod handshake;
mod init;

use handshake::Sync;
pub use handshake::{spawn, Launched, Report};

use crate::agent_client::{AgentClient, ClientError};
use crate::assets::AssetError;
use crate::bundle::{self, BundleError};
use crate::console::{self, Pty};
use crate::container_client::{ContainerClient, ContainerIo};
use crate::deadlines;
use crate::guest_process::{self, HostStdio};
use crate::host_cgroup::{CgroupError, HostCgroup};
use crate::sandbox::{Home, SandboxError};
use crate::state::{StateError, StateRoot, Status};
use crate::terminal::{self, RawMode};
use crate::vm::VmError;

/// How long output may keep flowing after the process ended.
const DRAIN_PATIENCE: Duration = Duration::from_secs(10);
/// How long output may keep flowing after a SIGKILL ended the init.
const KILLED_DRAIN_PATIENCE: Duration = Duration::from_millis(500);
/// Exit status when the guest went away without telling how the process
/// ended.
pub const STATUS_LOST: i32 = 255;
/// Signals passed on to the guest process (runc forwards all but SIGCHLD,
/// SIGWINCH and SIGURG; these are the ones that can be caught usefully).
const FORWARDED: &[i32] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGALRM,
    libc::SIGCONT,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGPWR,
];

#[derive(clap::Args, Debug, Clone)]
pub struct MonitorArgs {
    /// The container.
    #[arg(long)]
    pub id: String,
    /// Monitor an exec'd process described by this OCI process JSON file
    /// (deleted once read) instead of the container's init.
    #[arg(long)]
    pub exec_process: Option<PathBuf>,
    /// Send the master of a new pty here (process.terminal).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// The terminal is this process's own stdin/stdout (a foreground
    /// `run`/`exec` on a terminal).
    #[arg(long)]
    pub own_terminal: bool,
    /// The socket to report readiness on (inherited descriptor).
    #[arg(long)]
    pub sync_fd: Option<i32>,
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error(transparent)]
    Assets(#[from] AssetError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("the pod network: {0}")]
    Network(#[from] crate::network::NetworkError),
    #[error("{0}")]
    Terminal(String),
    #[error("cannot read the process file {}: {reason}", path.display())]
    ProcessFile { path: PathBuf, reason: String },
    #[error("the container is not running")]
    NotRunning,
    #[error("aborted by the runvm call that started it")]
    Aborted,
}

impl From<crate::sandbox::BootError> for MonitorError {
    fn from(e: crate::sandbox::BootError) -> MonitorError {
        match e {
            crate::sandbox::BootError::Network(e) => MonitorError::Network(e),
            crate::sandbox::BootError::Vm(e) => MonitorError::Vm(e),
        }
    }
}

/// Entry point of `runvm monitor` (a hidden subcommand).
pub fn main(root: &Path, args: MonitorArgs) -> ExitCode {
    ExitCode::from(u8::try_from(run(root, args)).unwrap_or(STATUS_LOST as u8))
}

/// Monitors until the process ends; its status (as a shell sees it).
pub fn run(root: &Path, args: MonitorArgs) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let mut sync = Sync::from_fd(args.sync_fd);
            sync.report(&Report::Error(format!(
                "cannot start the async runtime: {e}"
            )));
            return STATUS_LOST;
        }
    };
    let code = runtime.block_on(async {
        match &args.exec_process {
            None => init::run_init(root, &args).await,
            Some(file) => run_exec(root, &args, file).await,
        }
    });
    // A blocking read of stdin may still be pending: do not wait for it.
    runtime.shutdown_background();
    code
}

/// The stdio the guest process gets, from what this process has.
struct HostIo {
    io: Option<ContainerIo>,
    /// Where window sizes are read from (a terminal).
    size_from: Option<OwnedFd>,
    /// Keeps a host pty's slave in raw mode while it is in use.
    _raw: Option<RawMode<'static>>,
}

fn host_io(args: &MonitorArgs, terminal: bool) -> Result<HostIo, MonitorError> {
    if !terminal {
        let stdio = HostStdio {
            stdin: Some(Box::new(tokio::io::stdin())),
            stdout: Some(Box::new(tokio::io::stdout())),
            stderr: Some(Box::new(tokio::io::stderr())),
        };
        return Ok(HostIo {
            io: Some(ContainerIo::Pipes(stdio)),
            size_from: None,
            _raw: None,
        });
    }
    let failed = |what: &str, e: std::io::Error| MonitorError::Terminal(format!("{what}: {e}"));
    if let Some(socket) = &args.console_socket {
        let pty = Pty::open().map_err(|e| failed("cannot open a pty", e))?;
        console::become_controlling_terminal(&pty.slave)
            .map_err(|e| failed("cannot take the pty as controlling terminal", e))?;
        // The guest's terminal does the line discipline; the host's side
        // only carries bytes.
        let slave: &'static OwnedFd = Box::leak(Box::new(pty.slave));
        let raw = RawMode::enter(slave.as_fd()).map_err(|e| failed("cannot set raw mode", e))?;
        console::send_to_console_socket(socket, "/dev/ptmx", &pty.master).map_err(|e| {
            MonitorError::Terminal(format!("cannot send the pty to {}: {e}", socket.display()))
        })?;
        drop(pty.master);
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| failed("cannot dup the pty", e));
        let input = tokio::fs::File::from_std(std::fs::File::from(dup(slave)?));
        let output = tokio::fs::File::from_std(std::fs::File::from(dup(slave)?));
        return Ok(HostIo {
            io: Some(ContainerIo::Terminal {
                input: Box::new(input),
                output: Box::new(output),
            }),
            size_from: Some(dup(slave)?),
            _raw: Some(raw),
        });
    }
    if args.own_terminal {
        let stdin = std::io::stdin();
        if !terminal::is_terminal(stdin.as_fd()) {
            return Err(MonitorError::Terminal(
                "the process wants a terminal, but stdin is not one".into(),
            ));
        }
        let fd: &'static OwnedFd = Box::leak(Box::new(
            stdin
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| failed("cannot dup stdin", e))?,
        ));
        let raw = RawMode::enter(fd.as_fd()).map_err(|e| failed("cannot set raw mode", e))?;
        return Ok(HostIo {
            io: Some(ContainerIo::Terminal {
                input: Box::new(tokio::io::stdin()),
                output: Box::new(tokio::io::stdout()),
            }),
            size_from: Some(fd.try_clone().map_err(|e| failed("cannot dup stdin", e))?),
            _raw: Some(raw),
        });
    }
    Err(MonitorError::Terminal(
        "cannot allocate tty if runc will detach without setting console socket".into(),
    ))
}

/// Moves this process into the container's host cgroup (`create` made it).
fn join_cgroup(cgroup: Option<&HostCgroup>) -> Result<(), MonitorError> {
    if let Some(cgroup) = cgroup {
        cgroup.join(std::process::id())?;
    }
    Ok(())
}

/// Waits for `wait` while forwarding this process's signals with
/// `forward` and window size changes of `size_from` to `process`.
async fn supervise<W, F, Fut>(
    agent: &AgentClient,
    wait: W,
    forward: F,
    process: u64,
    size_from: Option<&OwnedFd>,
) -> Result<runvm_agent_api::ExitStatus, ClientError>
where
    W: std::future::Future<Output = Result<runvm_agent_api::ExitStatus, ClientError>>,
    F: Fn(i32) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (sender, mut received) = mpsc::unbounded_channel();
    for &number in FORWARDED {
        if let Ok(mut stream) = signal(SignalKind::from_raw(number)) {
            let sender = sender.clone();
            tokio::spawn(async move {
                while stream.recv().await.is_some() {
                    if sender.send(number).is_err() {
                        break;
                    }
                }
            });
        }
    }
    let mut window_change = signal(SignalKind::window_change()).ok();
    // The caller may have sized the terminal before the stream above was
    // listening (conmon does so as soon as it has the pty): what it set
    // then is read once, now; later changes arrive as SIGWINCH.
    if let Some((rows, columns)) = size_from.and_then(|fd| terminal::window_size(fd.as_fd())) {
        let resize = runvm_agent_api::RequestBody::ResizeTerminal {
            process,
            rows,
            columns,
        };
        let _ = deadlines::within("resize", deadlines::RESIZE, agent.call(resize)).await;
    }
    tokio::pin!(wait);
    loop {
        tokio::select! {
            status = &mut wait => return status,
            Some(number) = received.recv() => forward(number).await,
            Some(()) = async {
                match window_change.as_mut() {
                    Some(stream) => stream.recv().await,
                    None => std::future::pending().await,
                }
            }, if size_from.is_some() => {
                if let Some((rows, columns)) = size_from.and_then(|fd| terminal::window_size(fd.as_fd())) {
                    let resize = runvm_agent_api::RequestBody::ResizeTerminal { process, rows, columns };
                    let _ = deadlines::within("resize", deadlines::RESIZE, agent.call(resize)).await;
                }
            }
        }
    }
}

/// Reads (and removes) the process file an `exec` call wrote.
fn read_process_file(path: &Path) -> Result<Process, MonitorError> {
    let fail = |reason: String| MonitorError::ProcessFile {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    let _ = std::fs::remove_file(path);
    serde_json::from_slice(&text).map_err(|e| fail(e.to_string()))
}

async fn run_exec(root: &Path, args: &MonitorArgs, file: &Path) -> i32 {
    let mut sync = Sync::from_fd(args.sync_fd);
    let started = async {
        let process = read_process_file(file)?;
        let root = StateRoot::open(root)?;
        let record = crate::state::peek(&root, &args.id)?;
        if !matches!(record.status(), Status::Created | Status::Running) {
            return Err(MonitorError::NotRunning);
        }
        // runc puts exec'd processes in the container's cgroup.
        join_cgroup(record.cgroup.as_ref())?;
        let socket = Home::of(root.dir(), &record).vsock_socket();
        let terminal = process.terminal().unwrap_or(false);
        let mut host = host_io(args, terminal)?;
        let io = host.io.take().ok_or(MonitorError::NotRunning)?;
        let wire = bundle::to_wire(&process)?;
        let (agent, exec) = deadlines::within("exec", deadlines::EXEC, async {
            let agent = AgentClient::connect(&socket).await?;
            let exec = ContainerClient::new(&agent)
                .exec_with(&args.id, wire, io)
                .await?;
            Ok::<_, ClientError>((agent, exec))
        })
        .await?;
        Ok::<_, MonitorError>((agent, exec, host))
    };
    let (agent, exec, host) = match started.await {
        Ok(started) => started,
        Err(e) => {
            sync.report(&Report::Error(e.to_string()));
            return STATUS_LOST;
        }
    };
    sync.report(&Report::Ready {
        helpers: Vec::new(),
    });
    if sync.wait_go().await.is_err() {
        let killed = agent.call(runvm_agent_api::RequestBody::Signal {
            process: exec.started.process,
            signal: libc::SIGKILL,
        });
        let _ = deadlines::within("exec", deadlines::KILL, killed).await;
        return STATUS_LOST;
    }
    let process = exec.started.process;
    let status = supervise(
        &agent,
        guest_process::wait(&agent, process),
        |signal| {
            let agent = &agent;
            async move {
                let signalled =
                    agent.call(runvm_agent_api::RequestBody::Signal { process, signal });
                let _ = deadlines::within("kill", deadlines::KILL, signalled).await;
            }
        },
        process,
        host.size_from.as_ref(),
    )
    .await;
    let _ = tokio::time::timeout(DRAIN_PATIENCE, exec.drain()).await;
    status.map_or(STATUS_LOST, |status| status.shell_code())
}
