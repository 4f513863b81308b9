//! start and run: a created container's init let go, with the
//! startContainer and poststart hooks around it; `run` creates first and,
//! in the foreground, waits for the container and deletes it.

use crate::agent_client::AgentClient;
use crate::container_client::ContainerClient;
use crate::deadlines;
use crate::hooks::{self, HookPoint};
use crate::state::{Container, Status};

use super::create::{create_container, CreateOptions};
use super::delete::{delete_stopped, force_delete};
use super::{block_on, ContainerError, Context, Result};

/// What `run` is asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    pub create: CreateOptions,
    /// Do not wait for the container: leave it running.
    pub detach: bool,
    /// Keep the container after it exits (foreground runs delete it).
    pub keep: bool,
}

/// Starts the init of created container `id`.
pub fn start(context: &Context, id: &str) -> Result {
    let container = context.root()?.open_container(id)?;
    start_locked(&container)
}

fn start_locked(container: &Container) -> Result {
    let mut record = container.load()?;
    match record.status() {
        Status::Created => {}
        Status::Stopped => return Err(ContainerError::StartStopped),
        Status::Running | Status::Paused => return Err(ContainerError::StartRunning),
        Status::Creating => return Err(ContainerError::StartCreating),
    }
    let hooks = record.hooks.clone();
    hooks::run(
        HookPoint::StartContainer,
        hooks.as_ref(),
        &record.oci_state(),
    )?;
    let socket = container.home(&record).vsock_socket();
    let id = container.id().to_owned();
    block_on(deadlines::within("start", deadlines::START, async {
        let agent = AgentClient::connect(&socket).await?;
        ContainerClient::new(&agent).start(&id).await
    }))??;
    record.status = Status::Running;
    container.save(&record)?;
    hooks::run(HookPoint::Poststart, hooks.as_ref(), &record.oci_state())?;
    Ok(())
}

/// Creates and starts a container. Detached: 0 once it runs. In the
/// foreground: its exit status as a shell sees it, once it has ended
/// (and, unless kept, been deleted).
pub fn run(context: &Context, options: &RunOptions) -> Result<u8> {
    let foreground = !options.detach;
    let (mut child, container) = create_container(context, &options.create, foreground)?;
    if let Err(e) = start_locked(&container) {
        drop(container);
        let _ = force_delete(context, &options.create.id);
        return Err(e);
    }
    drop(container);
    if options.detach {
        return Ok(0);
    }
    // The monitor relays our stdio and takes the signals sent to it; ours
    // are passed on to it while we wait.
    let code = wait_forwarding(&mut child)?;
    if !options.keep {
        let _ = delete_stopped(context, &options.create.id);
    }
    Ok(code)
}

/// Waits for a monitor (our child) while passing the usual terminal and
/// termination signals on to it; returns its exit status as a shell sees
/// it.
fn wait_forwarding(child: &mut std::process::Child) -> Result<u8> {
    let pid = child.id() as libc::pid_t;
    let forwarded = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ];
    let status = block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
        for number in forwarded {
            if let Ok(mut stream) = signal(SignalKind::from_raw(number)) {
                let sender = sender.clone();
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        let _ = sender.send(number);
                    }
                });
            }
        }
        let waited = tokio::task::spawn_blocking(move || {
            let mut status = 0;
            // SAFETY: waitpid on our own child; the Child handle is not
            // waited on elsewhere.
            let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
            (rc, status)
        });
        tokio::pin!(waited);
        loop {
            tokio::select! {
                result = &mut waited => return result.unwrap_or((-1, 0)),
                Some(number) = received.recv() => {
                    // SAFETY: kill(2) on our own child.
                    unsafe { libc::kill(pid, number) };
                }
            }
        }
    })?;
    let (rc, raw) = status;
    if rc != pid {
        return Err(ContainerError::MonitorLost);
    }
    let code = if libc::WIFEXITED(raw) {
        libc::WEXITSTATUS(raw)
    } else if libc::WIFSIGNALED(raw) {
        128 + libc::WTERMSIG(raw)
    } else {
        255
    };
    Ok(u8::try_from(code).unwrap_or(255))
}
