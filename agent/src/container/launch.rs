//! One launch path for a container's processes, the init of a new
//! container and a process exec'd into one alike: the host's streams as
//! stdio, stage 1 started (see [`init`]), its report of stage 2's pid,
//! the process table, the id maps, the go, a terminal handed over on the
//! way, and the last word: ready (an init, held until start) or the exec
//! itself (end of file on the sync socket, which is close-on-exec). On
//! any failure the process is killed; what else the caller made (a
//! cgroup) is the caller's to undo.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use runvm_agent_api::AgentError;
use tokio::task::spawn_local;
use tokio::time::timeout;

use super::cgroups::Cgroup;
use super::init::{self, Job, Launch};
use super::kill;
use super::phases::phase;
use super::terminal;
use crate::exec::{self, invalid, system, ChildStdio};
use crate::fdio::Fd;
use crate::processes::ProcessIo;
use crate::state::Agent;

/// What to launch.
pub struct Process<'a> {
    pub job: Job<'a>,
    /// The program and its arguments, for the process table.
    pub args: &'a [CString],
    pub terminal: bool,
    pub console_size: Option<(u16, u16)>,
    /// The host's stream tokens for stdin, stdout and stderr.
    pub stdio: [Option<u64>; 3],
    /// Namespaces stage 1 joins: a descriptor and its CLONE_NEW* flag.
    pub join: Vec<(OwnedFd, libc::c_int)>,
    /// CLONE_NEW* flags of the namespaces stage 2 is created in.
    pub clone_flags: libc::c_int,
    /// The container's cgroup, which stage 1 joins.
    pub cgroup: Option<&'a Cgroup>,
    /// A new container's cgroup directory (for a cgroup mount without a
    /// cgroup namespace).
    pub cgroup_dir: Option<&'a Path>,
    /// uid_map and gid_map for a new user namespace.
    pub maps: Option<(&'a str, &'a str)>,
    /// Staged mounts a new container's init moves into place, by the
    /// index of the plan's mount they stand in for.
    pub premade: Vec<(usize, OwnedFd)>,
    /// The agent's empty read-only tmpfs for masked directories, when the
    /// container may share it.
    pub mask_dir: Option<&'a Path>,
    /// What the error messages call the launch ("cannot create
    /// container \"c\"").
    pub what: String,
}

/// A launched process: its entry in the process table, its pid and, for
/// an init held before start, its sync socket.
pub struct Launched {
    pub process: u64,
    pub pid: i32,
    pub sync: Rc<Fd>,
}

pub fn open_ns(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open(2) with a C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub async fn launch(agent: &Rc<Agent>, p: Process<'_>) -> Result<Launched, AgentError> {
    let stdio = agent.take_stdio(p.terminal, p.stdio).await?;
    let ChildStdio {
        fds,
        io,
        mut pumps,
        terminal: mut pending,
    } = exec::prepare_stdio(stdio, agent.limits.linger)?;
    phase("c:stdio");
    let (agent_end, child_end) =
        init::sync_pair().map_err(|e| system(format!("socketpair: {e}")))?;
    let procs = p.cgroup.map(|c| c.procs_file());
    let holds = matches!(p.job, Job::Create(_));
    let launched = init::launch(&Launch {
        job: p.job,
        cgroup_procs: procs.as_deref(),
        cgroup_dir: p.cgroup_dir,
        join: &p.join,
        clone_flags: p.clone_flags,
        stdio: [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()],
        terminal: p.terminal,
        sync: child_end.as_raw_fd(),
        agent_end: agent_end.as_raw_fd(),
        premade: &p.premade,
        mask_dir: p.mask_dir,
    });
    phase("c:fork");
    // The children's ends live on in the children only.
    drop((child_end, fds, p.join, p.premade));
    launched.map_err(|e| system(format!("{}: fork: {e}", p.what)))?;
    let sync = Rc::new(
        Fd::new_nonblocking(agent_end)
            .map_err(|e| system(format!("cannot register the sync socket: {e}")))?,
    );
    let args: Vec<String> = p
        .args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let (process, pid) = adopt(agent, &sync, &args, io, p.maps).await?;
    phase("c:adopt");
    let last = recv_past_terminal(
        agent,
        &sync,
        process,
        &mut pending,
        p.console_size,
        &mut pumps,
    )
    .await;
    let failed = match last {
        Ok(Some(msg)) if holds && msg.first() == Some(&init::MSG_READY) => None,
        Ok(None) if !holds => None,
        Ok(Some(msg)) if msg.first() == Some(&init::MSG_ERROR) => {
            Some(invalid(format!("{}: {}", p.what, error_text(&msg))))
        }
        Ok(None) => Some(system(format!(
            "{}: the process ended during its set-up",
            p.what
        ))),
        Ok(Some(_)) => Some(system(format!(
            "{}: unexpected message from the process",
            p.what
        ))),
        Err(e) => Some(e),
    };
    if let Some(e) = failed {
        let _ = kill(pid, libc::SIGKILL);
        return Err(e);
    }
    phase("c:ready");
    for pump in pumps {
        spawn_local(pump);
    }
    Ok(Launched { process, pid, sync })
}

/// A message from a container process, or `None` at end of file.
pub async fn recv(sync: &Fd, patience: Duration) -> Result<Option<Vec<u8>>, AgentError> {
    let mut buf = vec![0u8; init::MSG_MAX];
    let n = within(patience, sync.read(&mut buf)).await?;
    buf.truncate(n);
    Ok((n > 0).then_some(buf))
}

/// A read of the sync socket, given `patience`.
async fn within<T>(
    patience: Duration,
    read: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, AgentError> {
    match timeout(patience, read).await {
        Err(_) => Err(system(format!(
            "the container process did not answer within {patience:?}"
        ))),
        Ok(Err(e)) => Err(system(format!("the container sync socket: {e}"))),
        Ok(Ok(got)) => Ok(got),
    }
}

/// The next message from a container's process after the go, taking a
/// terminal's master ([`terminal::MSG_TERMINAL`]) on the way: its pump is
/// made, it gets the size asked for, and the process table learns it (for
/// later resizes).
async fn recv_past_terminal(
    agent: &Agent,
    sync: &Fd,
    process: u64,
    pending: &mut Option<exec::PendingTerminal>,
    size: Option<(u16, u16)>,
    pumps: &mut Vec<exec::Pump>,
) -> Result<Option<Vec<u8>>, AgentError> {
    let patience = agent.limits.container_setup;
    loop {
        let mut buf = vec![0u8; init::MSG_MAX];
        let (n, fd) = within(patience, sync.recv_with_fd(&mut buf)).await?;
        buf.truncate(n);
        let failed = buf.first() == Some(&init::MSG_ERROR);
        if buf.first() != Some(&terminal::MSG_TERMINAL) {
            // Ready (or exec'd) without the terminal it was to make: it
            // would run on /dev/null.
            if pending.is_some() && !failed {
                return Err(system(
                    "the container process did not hand over its terminal",
                ));
            }
            return Ok((n > 0).then_some(buf));
        }
        let (Some(fd), Some(make_pump)) = (fd, pending.take()) else {
            return Err(system(
                "the container process sent a terminal nobody asked for",
            ));
        };
        terminal::check_master(&fd).map_err(system)?;
        let master =
            Fd::new_nonblocking(fd).map_err(|e| system(format!("cannot register the pty: {e}")))?;
        let master = Rc::new(master);
        if let Some((rows, columns)) = size {
            let _ = exec::resize(&master, rows, columns);
        }
        if let Some(io) = agent.processes.borrow_mut().io_mut(process) {
            io.terminal = Some(Rc::downgrade(&master));
        }
        pumps.push(make_pump(master));
    }
}

pub fn error_text(msg: &[u8]) -> String {
    String::from_utf8_lossy(msg.get(1..).unwrap_or_default()).into_owned()
}

/// Stage 1's report, the process table, the id maps, the go. Returns
/// (process id, pid).
async fn adopt(
    agent: &Rc<Agent>,
    sync: &Fd,
    argv: &[String],
    io: ProcessIo,
    maps: Option<(&str, &str)>,
) -> Result<(u64, i32), AgentError> {
    let patience = agent.limits.container_setup;
    let msg = recv(sync, patience).await?;
    let pid = match msg.as_deref() {
        Some([init::MSG_PID, a, b, c, d]) => i32::from_ne_bytes([*a, *b, *c, *d]),
        Some(m) if m.first() == Some(&init::MSG_ERROR) => return Err(system(error_text(m))),
        _ => return Err(system("the container process ended before it started")),
    };
    let process = agent.processes.borrow_mut().insert(pid, argv, io);
    if let Some((uid_map, gid_map)) = maps {
        let written = std::fs::write(format!("/proc/{pid}/uid_map"), uid_map)
            .and_then(|()| std::fs::write(format!("/proc/{pid}/gid_map"), gid_map));
        if let Err(e) = written {
            let _ = kill(pid, libc::SIGKILL);
            return Err(reported_or(sync, format!("cannot write the id mappings: {e}")).await);
        }
    }
    if let Err(e) = sync.write_all(&[init::MSG_GO]).await {
        let _ = kill(pid, libc::SIGKILL);
        return Err(reported_or(sync, format!("the container process went away: {e}")).await);
    }
    Ok((process, pid))
}

/// What the process said failed, if it said so before it went away (the
/// agent may have queued its pid ahead of that: see `init::launch_direct`),
/// else `fallback`.
async fn reported_or(sync: &Fd, fallback: String) -> AgentError {
    match recv(sync, Duration::from_millis(100)).await {
        Ok(Some(m)) if m.first() == Some(&init::MSG_ERROR) => system(error_text(&m)),
        _ => system(fallback),
    }
}
