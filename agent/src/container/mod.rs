//! OCI containers in the guest, the way runc makes them on a host: the
//! requests `CreateContainer`, `StartContainer`, `ExecInContainer`,
//! `SignalContainer`, `WaitContainer`, `DeleteContainer`, `ContainerState`,
//! `ContainerStats`, `ContainerProcesses` and `WaitEvent`.
//!
//! - `spec` checks an OCI spec and turns it into a plan, before any fork.
//! - `init` is what the container's processes run between fork and exec,
//!   `finish` its last steps.
//! - `control`: the requests on containers that exist (signal, wait,
//!   delete, state, stats, freeze, update, events).
//! - `paths` resolves paths inside a root filesystem (openat2); `rootfs`
//!   builds the container's mount tree there.
//! - `mountopts`, `seccomp`, `cgroups`: mount options, the seccomp filter,
//!   the cgroup v2 limits and figures; `hugetlb_io` the hugepage and block
//!   I/O limits, `tmpfs` tmpfs mounts and their tmpcopyup, `procattrs`
//!   a process's scheduler, I/O priority, CPU affinity and personality;
//!   `procs` what runs in a container; `terminal` its pty; `sysctl`
//!   which sysctls a container may set; `devices` (with `bpf`) the
//!   device rules as a cgroup BPF program.
//!
//! The init process is an ordinary entry of the process table (its id
//! comes back from `CreateContainer`); the container keeps its own record
//! of how it ended, so `WaitContainer` and `ContainerState` work until the
//! container is deleted. OOM kills are noticed through inotify on each
//! container's memory.events and reported as events, as is every init's
//! end.

pub mod bpf;
pub mod cgroups;
mod control;
pub mod devices;
mod finish;
pub mod hugetlb_io;
pub mod init;
pub mod mountopts;
pub mod paths;
pub mod phases;
pub mod procattrs;
mod procs;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
pub mod sysctl;
mod terminal;
pub mod tmpfs;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use runvm_agent_api::{
    validate_container_id, AgentError, ContainerEvent, ContainerStatus, CreateContainerRequest,
    ErrorKind, ExecInContainerRequest, ExitStatus, ResponseBody,
};
use tokio::sync::{watch, Notify};
use tokio::task::spawn_local;
use tokio::time::timeout;

pub use control::{delete, freeze, processes, signal, state, stats, update, wait, wait_event};

use crate::exec::{self, invalid, system, ChildStdio};
use crate::fdio::Fd;
use crate::server::{self, Agent};
use cgroups::Cgroup;
use init::{Job, Launch};
use phases::phase;
use seccomp::SeccompProgram;

/// Events kept for `WaitEvent`.
pub const EVENTS_KEPT: usize = 256;

fn conflict(message: impl Into<String>) -> AgentError {
    AgentError {
        kind: ErrorKind::Conflict,
        message: message.into(),
    }
}

fn not_found(message: impl Into<String>) -> AgentError {
    AgentError {
        kind: ErrorKind::NotFound,
        message: message.into(),
    }
}

struct Container {
    rootfs: String,
    process: u64,
    pid: i32,
    status: ContainerStatus,
    exited: watch::Sender<Option<ExitStatus>>,
    /// The init's sync socket while it waits for start.
    sync: Option<Rc<Fd>>,
    cgroup: Option<Rc<Cgroup>>,
    /// The namespaces an exec joins: (CLONE_NEW* flag, name in /proc/<pid>/ns).
    namespaces: Vec<(libc::c_int, &'static str)>,
    seccomp: Option<Rc<SeccompProgram>>,
    /// The agent's filter for the container's processes.
    guard: Option<Rc<SeccompProgram>>,
    /// The container's personality, which execs take on too.
    personality: Option<libc::c_ulong>,
    /// Pids of live execs (for `all` without a cgroup).
    execs: Vec<i32>,
    oom_kills: u64,
    oom_watch: Option<i32>,
}

/// The event log for `WaitEvent`.
#[derive(Default)]
pub struct Events {
    last: u64,
    kept: VecDeque<(u64, ContainerEvent)>,
    arrived: Rc<Notify>,
}

impl Events {
    pub fn push(&mut self, event: ContainerEvent) {
        self.last += 1;
        self.kept.push_back((self.last, event));
        while self.kept.len() > EVENTS_KEPT {
            self.kept.pop_front();
        }
        self.arrived.notify_waiters();
    }

    pub fn first_after(&self, after: u64) -> Option<(u64, ContainerEvent)> {
        self.kept.iter().find(|(seq, _)| *seq > after).cloned()
    }
}

/// Every container of the agent.
pub struct Containers {
    by_id: HashMap<String, Container>,
    /// Ids being created.
    reserved: HashSet<String>,
    cgroup_root: Option<PathBuf>,
    controllers_ready: bool,
    events: Events,
    /// The inotify descriptor watching memory.events files, once needed.
    inotify: Option<Rc<Fd>>,
    /// Device programs loaded once, attached to every cgroup that has
    /// the same rules.
    device_programs: devices::ProgramCache,
}

impl Containers {
    pub fn new(cgroup_root: Option<PathBuf>) -> Containers {
        Containers {
            by_id: HashMap::new(),
            reserved: HashSet::new(),
            cgroup_root,
            controllers_ready: false,
            events: Events::default(),
            inotify: None,
            device_programs: devices::ProgramCache::default(),
        }
    }

    /// The reaper saw `pid` end.
    pub fn record_exit(&mut self, pid: i32, status: ExitStatus) {
        let mut ended = None;
        for (id, c) in self.by_id.iter_mut() {
            c.execs.retain(|p| *p != pid);
            if c.pid == pid && c.status != ContainerStatus::Stopped {
                c.status = ContainerStatus::Stopped;
                c.sync = None;
                c.exited.send_replace(Some(status));
                ended = Some(id.clone());
            }
        }
        if let Some(id) = ended {
            phase("x:reaped");
            phases::report("start-exit");
            self.events.push(ContainerEvent::Exited { id, status });
        }
    }

    fn get(&self, id: &str) -> Result<&Container, AgentError> {
        self.by_id
            .get(id)
            .ok_or_else(|| not_found(format!("no container {id:?}")))
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut Container, AgentError> {
        self.by_id
            .get_mut(id)
            .ok_or_else(|| not_found(format!("no container {id:?}")))
    }
}

/// Frees a reserved id when creation ends, however it ends.
struct Reservation<'a> {
    agent: &'a Agent,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.agent.containers.borrow_mut().reserved.remove(&self.id);
    }
}

/// A message from a container process, or `None` at end of file.
async fn recv(sync: &Fd, patience: Duration) -> Result<Option<Vec<u8>>, AgentError> {
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

fn error_text(msg: &[u8]) -> String {
    String::from_utf8_lossy(&msg[1..]).into_owned()
}

/// Kills a pid we own (live or not yet reaped).
fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2). Only this thread reaps, so the pid is still ours.
    if unsafe { libc::kill(pid, signal) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The parts common to create and exec once stage 1 runs: its pid report,
/// the process table, the go. Returns (process id, pid).
async fn adopt(
    agent: &Rc<Agent>,
    sync: &Fd,
    argv: &[String],
    io: crate::processes::ProcessIo,
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
            return Err(system(format!("cannot write the id mappings: {e}")));
        }
    }
    if let Err(e) = sync.write_all(&[init::MSG_GO]).await {
        let _ = kill(pid, libc::SIGKILL);
        return Err(system(format!("the container process went away: {e}")));
    }
    Ok((process, pid))
}

fn strings(args: &[std::ffi::CString]) -> Vec<String> {
    args.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
}

fn open_ns(path: &Path) -> io::Result<OwnedFd> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open(2) with a C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets up the container's cgroup; `None` without cgroup v2.
fn make_cgroup(
    agent: &Agent,
    id: &str,
    plan: &spec::ContainerPlan,
) -> Result<Option<Rc<Cgroup>>, AgentError> {
    let (root, ready) = {
        let c = agent.containers.borrow();
        (c.cgroup_root.clone(), c.controllers_ready)
    };
    let Some(root) = root else {
        if plan.resources.iter().any(|w| w.needs_cgroup()) {
            return Err(system(
                "resource limits need cgroup v2, which this agent does not have",
            ));
        }
        return Ok(None);
    };
    if !ready {
        cgroups::enable_controllers(&root)
            .map_err(|e| system(format!("cannot enable the cgroup controllers: {e}")))?;
        agent.containers.borrow_mut().controllers_ready = true;
    }
    phase("cg:enable");
    let cgroup = Cgroup::create(&root, id).map_err(|e| system(e.to_string()))?;
    phase("cg:mkdir");
    if let Err(e) = cgroup.apply(&plan.resources) {
        let _ = std::fs::remove_dir(&cgroup.path);
        return Err(invalid(e.to_string()));
    }
    phase("cg:limits");
    if let Some(program) = &plan.device_program {
        let loaded = agent.containers.borrow_mut().device_programs.load(program);
        if let Err(e) = loaded.and_then(|fd| devices::attach(&fd, &cgroup.path)) {
            let _ = std::fs::remove_dir(&cgroup.path);
            return Err(system(e));
        }
    }
    phase("cg:devices");
    Ok(Some(Rc::new(cgroup)))
}

/// Stops a container that failed half way: kill its init, remove its
/// cgroup once empty.
fn abandon(pid: Option<i32>, cgroup: Option<Rc<Cgroup>>) {
    if let Some(pid) = pid {
        let _ = kill(pid, libc::SIGKILL);
    }
    if let Some(cgroup) = cgroup {
        spawn_local(async move {
            if let Err(e) = cgroup.destroy(Duration::from_secs(10)).await {
                agent_log!("cleaning up a failed container: {e}");
            }
        });
    }
}

pub async fn create(
    agent: &Rc<Agent>,
    request: CreateContainerRequest,
) -> Result<ResponseBody, AgentError> {
    phases::init();
    phase("c:request");
    let id = request.id.clone();
    validate_container_id(&id).map_err(invalid)?;
    {
        let mut containers = agent.containers.borrow_mut();
        if containers.by_id.contains_key(&id) || containers.reserved.contains(&id) {
            return Err(conflict(format!("container {id:?} exists already")));
        }
        containers.reserved.insert(id.clone());
    }
    let _reservation = Reservation {
        agent,
        id: id.clone(),
    };
    let plan = spec::container_plan(
        &request.spec,
        Path::new(&request.rootfs),
        &spec::passed_on_env(),
    )
    .map_err(invalid)?;
    phase("c:plan");
    if !Path::new(&request.rootfs).is_dir() {
        return Err(invalid(format!(
            "the rootfs {} is not a directory",
            request.rootfs
        )));
    }
    let terminal = plan.process.terminal;
    let tokens = exec::stream_tokens(terminal, request.stdin, request.stdout, request.stderr)?;
    let streams = server::take_streams(agent, &tokens).await?;
    let stdio = server::assign_streams(
        terminal,
        [request.stdin, request.stdout, request.stderr],
        streams,
    )?;
    let ChildStdio {
        fds,
        io,
        mut pumps,
        terminal: mut pending_terminal,
    } = exec::prepare_stdio(stdio, agent.limits.linger)?;
    phase("c:stdio");
    let mut join = Vec::new();
    for ns in plan.namespaces.iter() {
        if let Some(path) = &ns.path {
            let fd = open_ns(path)
                .map_err(|e| invalid(format!("cannot open namespace {}: {e}", path.display())))?;
            join.push((fd, ns.flag));
        }
    }
    let cgroup = make_cgroup(agent, &id, &plan)?;
    let (agent_end, child_end) =
        init::sync_pair().map_err(|e| system(format!("socketpair: {e}")))?;
    let procs = cgroup.as_ref().map(|c| c.procs_file());
    let launch = Launch {
        job: Job::Create(&plan),
        cgroup_procs: procs.as_deref(),
        cgroup_dir: cgroup.as_ref().map(|c| c.path.as_path()),
        join: &join,
        clone_flags: plan.clone_flags(),
        stdio: [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()],
        terminal,
        sync: child_end.as_raw_fd(),
        agent_end: agent_end.as_raw_fd(),
    };
    let launched = init::launch(&launch);
    phase("c:fork");
    drop(child_end);
    drop(fds);
    drop(join);
    if let Err(e) = launched {
        abandon(None, cgroup);
        return Err(system(format!("fork: {e}")));
    }
    let sync = match Fd::new_nonblocking(agent_end) {
        Ok(fd) => Rc::new(fd),
        Err(e) => {
            abandon(None, cgroup);
            return Err(system(format!("cannot register the sync socket: {e}")));
        }
    };
    let maps = plan.uid_map.as_deref().zip(plan.gid_map.as_deref());
    let argv = strings(&plan.process.args);
    let (process, pid) = match adopt(agent, &sync, &argv, io, maps).await {
        Ok(adopted) => adopted,
        Err(e) => {
            abandon(None, cgroup);
            return Err(e);
        }
    };
    phase("c:adopt");
    let size = plan.process.console_size;
    match recv_past_terminal(
        agent,
        &sync,
        process,
        &mut pending_terminal,
        size,
        &mut pumps,
    )
    .await
    {
        Ok(Some(msg)) if msg.first() == Some(&init::MSG_READY) => phase("c:ready"),
        Ok(Some(msg)) if msg.first() == Some(&init::MSG_ERROR) => {
            abandon(Some(pid), cgroup);
            return Err(invalid(format!(
                "cannot create container {id:?}: {}",
                error_text(&msg)
            )));
        }
        Ok(_) => {
            abandon(Some(pid), cgroup);
            return Err(system(format!(
                "the init of container {id:?} ended during its set-up"
            )));
        }
        Err(e) => {
            abandon(Some(pid), cgroup);
            return Err(e);
        }
    }
    for pump in pumps {
        spawn_local(pump);
    }
    let (exited, _) = watch::channel(None);
    let oom_watch = cgroup
        .as_ref()
        .and_then(|c| control::watch_oom(agent, &c.events_file()));
    let container = Container {
        rootfs: request.rootfs,
        process,
        pid,
        status: ContainerStatus::Created,
        exited,
        sync: Some(sync),
        cgroup,
        namespaces: plan.namespaces.iter().map(|n| (n.flag, n.name)).collect(),
        seccomp: plan.seccomp.map(Rc::new),
        guard: plan.guard.map(Rc::new),
        personality: plan.process.attrs.personality,
        execs: Vec::new(),
        oom_kills: 0,
        oom_watch,
    };
    agent.containers.borrow_mut().by_id.insert(id, container);
    phase("c:recorded");
    phases::report("create");
    Ok(ResponseBody::Started { process, pid })
}

pub async fn start(agent: &Rc<Agent>, id: &str) -> Result<ResponseBody, AgentError> {
    let sync = {
        let mut containers = agent.containers.borrow_mut();
        let c = containers.get_mut(id)?;
        if c.status != ContainerStatus::Created {
            return Err(conflict(format!(
                "container {id:?} is {:?}, not created",
                c.status
            )));
        }
        c.sync
            .take()
            .ok_or_else(|| conflict(format!("container {id:?} is being started")))?
    };
    phase("st:request");
    sync.write_all(&[init::MSG_START])
        .await
        .map_err(|e| system(format!("the init of {id:?} went away: {e}")))?;
    let answer = recv(&sync, agent.limits.container_setup).await?;
    phase("st:execd");
    let mut containers = agent.containers.borrow_mut();
    let c = containers.get_mut(id)?;
    match answer {
        None if c.status == ContainerStatus::Created => {
            c.status = ContainerStatus::Running;
            Ok(ResponseBody::Done)
        }
        Some(msg) if msg.first() == Some(&init::MSG_ERROR) => Err(invalid(format!(
            "container {id:?} could not start: {}",
            error_text(&msg)
        ))),
        _ => Err(system(format!("the init of container {id:?} ended"))),
    }
}

pub async fn exec_in(
    agent: &Rc<Agent>,
    request: ExecInContainerRequest,
) -> Result<ResponseBody, AgentError> {
    let id = request.id.clone();
    let (init_pid, namespaces, cgroup, seccomp, guard, personality) = {
        let containers = agent.containers.borrow();
        let c = containers.get(&id)?;
        if c.status == ContainerStatus::Stopped {
            return Err(conflict(format!("container {id:?} is stopped")));
        }
        (
            c.pid,
            c.namespaces.clone(),
            c.cgroup.clone(),
            c.seccomp.clone(),
            c.guard.clone(),
            c.personality,
        )
    };
    let mut process =
        spec::process_plan(&request.process, &spec::passed_on_env()).map_err(invalid)?;
    process.attrs.personality = personality;
    let terminal = process.terminal;
    let tokens = exec::stream_tokens(terminal, request.stdin, request.stdout, request.stderr)?;
    let streams = server::take_streams(agent, &tokens).await?;
    let stdio = server::assign_streams(
        terminal,
        [request.stdin, request.stdout, request.stderr],
        streams,
    )?;
    let ChildStdio {
        fds,
        io,
        mut pumps,
        terminal: mut pending_terminal,
    } = exec::prepare_stdio(stdio, agent.limits.linger)?;
    let mut join = Vec::new();
    for (flag, name) in namespaces {
        let path = PathBuf::from(format!("/proc/{init_pid}/ns/{name}"));
        let fd =
            open_ns(&path).map_err(|e| system(format!("cannot open {}: {e}", path.display())))?;
        join.push((fd, flag));
    }
    let (agent_end, child_end) =
        init::sync_pair().map_err(|e| system(format!("socketpair: {e}")))?;
    let procs = cgroup.as_ref().map(|c| c.procs_file());
    let launch = Launch {
        job: Job::Exec {
            process: &process,
            seccomp: seccomp.as_deref(),
            guard: guard.as_deref(),
        },
        cgroup_procs: procs.as_deref(),
        cgroup_dir: None,
        join: &join,
        clone_flags: 0,
        stdio: [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()],
        terminal,
        sync: child_end.as_raw_fd(),
        agent_end: agent_end.as_raw_fd(),
    };
    let launched = init::launch(&launch);
    drop(child_end);
    drop(fds);
    drop(join);
    launched.map_err(|e| system(format!("fork: {e}")))?;
    let sync = Fd::new_nonblocking(agent_end)
        .map_err(|e| system(format!("cannot register the sync socket: {e}")))?;
    let argv = strings(&process.args);
    let (process_id, pid) = adopt(agent, &sync, &argv, io, None).await?;
    let size = process.console_size;
    match recv_past_terminal(
        agent,
        &sync,
        process_id,
        &mut pending_terminal,
        size,
        &mut pumps,
    )
    .await
    {
        // End of file: the program is running (the socket closed on exec).
        Ok(None) => {}
        Ok(Some(msg)) if msg.first() == Some(&init::MSG_ERROR) => {
            let _ = kill(pid, libc::SIGKILL);
            return Err(invalid(format!(
                "cannot exec in container {id:?}: {}",
                error_text(&msg)
            )));
        }
        Ok(Some(_)) => {
            let _ = kill(pid, libc::SIGKILL);
            return Err(system("unexpected message from the exec'd process"));
        }
        Err(e) => {
            let _ = kill(pid, libc::SIGKILL);
            return Err(e);
        }
    }
    for pump in pumps {
        spawn_local(pump);
    }
    if let Ok(c) = agent.containers.borrow_mut().get_mut(&id) {
        c.execs.push(pid);
    }
    Ok(ResponseBody::Started {
        process: process_id,
        pid,
    })
}

#[cfg(test)]
mod host_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_numbered_and_bounded() {
        let mut events = Events::default();
        assert!(events.first_after(0).is_none());
        for i in 0..(EVENTS_KEPT as u64 + 10) {
            events.push(ContainerEvent::Oom {
                id: "c".into(),
                oom_kills: i,
            });
        }
        // The oldest are gone: the first kept is number 11.
        assert_eq!(events.first_after(0).unwrap().0, 11);
        assert_eq!(events.first_after(100).unwrap().0, 101);
        assert!(events.first_after(EVENTS_KEPT as u64 + 10).is_none());
    }
}
