//! The OCI lifecycle as a plain Rust API: create, start, run, kill,
//! delete, state, exec, pause, resume and update of containers kept under
//! a state root, each in a microVM of its own or in its sandbox's (see
//! [`crate::sandbox`]), with a monitor process per container process (see
//! [`crate::monitor`]).
//!
//! Front ends (the runc command line in [`crate::cli`]) parse their
//! arguments into the option structs here and map [`ContainerError`] to
//! what they report; what a call does, writes and refuses is decided here
//! alone. Error messages are runc's where runc has one: callers match them.

mod create;
mod delete;
mod exec;
mod kill;
mod log;
mod query;
mod resources;
mod start;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

pub use create::{create, CreateOptions};
pub use delete::{delete, DeleteOptions};
pub use exec::{exec, ExecOptions, ExecProcess, ProcessChanges};
pub use kill::{kill, parse_signal, KillOptions};
pub use log::{LogFormat, Logger};
pub use query::{events, list, processes, state, Event, EventsOptions};
pub use resources::{pause, resume, update};
pub use start::{run, start, RunOptions};

use crate::agent_client::ClientError;
use crate::bundle::BundleError;
use crate::hooks::HookError;
use crate::monitor;
use crate::state::{StateError, StateRoot, Status};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Cgroup(#[from] crate::host_cgroup::CgroupError),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// What a monitor reported instead of being ready.
    #[error("{0}")]
    Monitor(String),
    #[error("{}", crate::network::HOST_NETWORK_REFUSED)]
    HostNetwork,
    #[error("cannot use console socket if runc will not allocate tty")]
    ConsoleSocketWithoutTerminal,
    #[error("cannot allocate tty if runc will detach without setting console socket")]
    TerminalWithoutConsoleSocket,
    #[error("cannot start a container that has stopped")]
    StartStopped,
    #[error("cannot start an already running container")]
    StartRunning,
    #[error("cannot start a container that is still being created")]
    StartCreating,
    #[error("container not running")]
    NotRunning,
    #[error("container not paused")]
    NotPaused,
    #[error("cannot update a container that is {0}")]
    CannotUpdate(Status),
    #[error("invalid signal: {0}")]
    InvalidSignal(String),
    #[error("unknown signal {0:?}")]
    UnknownSignal(String),
    #[error("cannot delete container {id} that is not stopped: {status}")]
    NotStopped { id: String, status: Status },
    #[error("container {id}: its processes did not end after SIGKILL")]
    Unkillable { id: String },
    #[error("container {id}: refusing to remove its directory, mounts remain: {mounts:?}")]
    MountsRemain { id: String, mounts: Vec<PathBuf> },
    #[error("cannot exec in a paused container")]
    ExecPaused,
    #[error("cannot exec in a stopped container")]
    ExecStopped,
    #[error("exec: no command given (args or --process)")]
    NoCommand,
    #[error("--env {0:?} is not NAME=value")]
    BadEnv(String),
    #[error("--user {0:?} is not UID[:GID] (numbers)")]
    BadUser(String),
    #[error("{} is not an OCI process: {source}", path.display())]
    BadProcess {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error("cannot start the async runtime: {0}")]
    AsyncRuntime(std::io::Error),
    #[error("cannot wait for the container's monitor")]
    MonitorLost,
}

pub type Result<T = (), E = ContainerError> = std::result::Result<T, E>;

/// What every call gets: where state is kept, where to log, and how the
/// host cgroup path is read.
pub struct Context {
    /// The state root (absolute).
    pub root_dir: PathBuf,
    pub logger: Logger,
    /// linux.cgroupsPath is systemd's `slice:prefix:name` (runc's
    /// `--systemd-cgroup`).
    pub systemd_cgroup: bool,
    /// The global options a monitor is started with (see
    /// [`monitor::spawn`]): the same root and logging.
    monitor_globals: Vec<OsString>,
}

impl Context {
    /// `root` as the caller named it (a monitor gets it as it is).
    pub fn new(root: &Path, logger: Logger, systemd_cgroup: bool) -> Context {
        let mut monitor_globals: Vec<OsString> = vec!["--root".into(), root.into()];
        monitor_globals.extend(logger.monitor_args());
        Context {
            root_dir: absolute(root),
            logger,
            systemd_cgroup,
            monitor_globals,
        }
    }

    pub fn root(&self) -> Result<StateRoot> {
        Ok(StateRoot::open(&self.root_dir)?)
    }
}

pub(crate) fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// A single-threaded async runtime for a call that talks to an agent.
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ContainerError::AsyncRuntime)?;
    let output = runtime.block_on(future);
    runtime.shutdown_background();
    Ok(output)
}

/// After a monitor reported it is set up: `prepare` (hooks, say), then the
/// pid file, then the monitor goes on; if any of it fails the monitor is
/// told to undo everything.
fn hand_over(
    launched: monitor::Launched,
    pid_file: Option<&Path>,
    prepare: impl FnOnce() -> Result,
) -> Result<std::process::Child> {
    let pid = launched.pid() as i32;
    let ready = prepare().and_then(|()| match pid_file {
        Some(path) => write_pid_file(path, pid),
        None => Ok(()),
    });
    match ready {
        Ok(()) => Ok(launched.go()?),
        Err(e) => {
            launched.abort();
            Err(e)
        }
    }
}

/// A file's content, or stdin's for `-`.
pub fn read_input(path: &Path) -> Result<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut text)?;
        return Ok(text);
    }
    std::fs::read(path).map_err(|source| ContainerError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Writes `pid` to `path` the way runc does (no newline; written aside
/// and renamed, so a reader never sees a partial file).
fn write_pid_file(path: &Path, pid: i32) -> Result {
    let path = absolute(path);
    crate::state::write_atomically(&path, pid.to_string().as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitors_get_the_root_as_named_and_the_log_made_absolute() {
        let logger = Logger::new(Some(PathBuf::from("runvm.log")), LogFormat::Json, true);
        let context = Context::new(Path::new("state"), logger, false);
        let log = absolute(Path::new("runvm.log"));
        let expected: Vec<OsString> = vec![
            "--root".into(),
            "state".into(),
            "--log".into(),
            log.into(),
            "--log-format".into(),
            "json".into(),
            "--debug".into(),
        ];
        assert_eq!(context.monitor_globals, expected);
        assert!(context.root_dir.is_absolute());
        let quiet = Context::new(Path::new("/run/x"), Logger::default(), true);
        let expected: Vec<OsString> = vec!["--root".into(), "/run/x".into()];
        assert_eq!(quiet.monitor_globals, expected);
    }
}
