//! OCI containers in the guest, the way runc makes them on a host: the
//! requests `CreateContainer`, `StartContainer`, `ExecInContainer`,
//! `SignalContainer`, `WaitContainer`, `DeleteContainer`, `ContainerState`,
//! `ContainerStats`, `ContainerProcesses` and `WaitEvent`.
//!
//! - `spec` checks an OCI spec and turns it into a plan, before any fork.
//! - `launch` is the one path by which a container's init and the
//!   processes exec'd into it start; `init` is what they run between
//!   clone and exec, `finish` its last steps.
//! - `phases` (a build feature) logs where the set-up spends its time.
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
mod launch;
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
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use runvm_agent_api::network::validate as validate_network;
use runvm_agent_api::{
    validate_container_id, AgentError, ContainerEvent, ContainerStatus, CreateContainerRequest,
    ErrorKind, ExecInContainerRequest, ExitStatus, ResponseBody,
};
use tokio::sync::{watch, Notify};
use tokio::task::spawn_local;

pub use control::{delete, freeze, processes, signal, state, stats, update, wait, wait_event};

use crate::exec::{invalid, system};
use crate::fdio::Fd;
use crate::network;
use crate::state::Agent;
use cgroups::Cgroup;
use init::Job;
use launch::{error_text, launch, open_ns, recv, Launched, Process};
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

/// Kills a pid we own (live or not yet reaped).
fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2). Only this thread reaps, so the pid is still ours.
    if unsafe { libc::kill(pid, signal) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
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

/// Removes the cgroup of a container that failed half way (its process
/// killed already) once it is empty.
fn abandon(cgroup: Option<Rc<Cgroup>>) {
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
    let mut join = Vec::new();
    for ns in plan.namespaces.iter() {
        if let Some(path) = &ns.path {
            let fd = open_ns(path)
                .map_err(|e| invalid(format!("cannot open namespace {}: {e}", path.display())))?;
            join.push((fd, ns.flag));
        }
    }
    // The pod's network goes where the container's network namespace is:
    // the agent's own (set up before the container, whose sysctls may name
    // the pod's interfaces), or one the container makes (set up once it
    // exists, before the program runs).
    let own_netns = plan.clone_flags() & libc::CLONE_NEWNET != 0
        || join.iter().any(|(_, flag)| *flag == libc::CLONE_NEWNET);
    if let Some(network) = &request.network {
        validate_network(network).map_err(|e| invalid(format!("the pod network: {e}")))?;
        if !own_netns {
            network::configure(network, None)
                .map_err(|e| system(format!("the pod network: {e}")))?;
        }
    }
    let cgroup = make_cgroup(agent, &id, &plan)?;
    let launched = launch(
        agent,
        Process {
            job: Job::Create(&plan),
            args: &plan.process.args,
            terminal: plan.process.terminal,
            console_size: plan.process.console_size,
            stdio: [request.stdin, request.stdout, request.stderr],
            join,
            clone_flags: plan.clone_flags(),
            cgroup: cgroup.as_deref(),
            cgroup_dir: cgroup.as_ref().map(|c| c.path.as_path()),
            maps: plan.uid_map.as_deref().zip(plan.gid_map.as_deref()),
            what: format!("cannot create container {id:?}"),
        },
    )
    .await;
    let Launched { process, pid, sync } = match launched {
        Ok(launched) => launched,
        Err(e) => {
            abandon(cgroup);
            return Err(e);
        }
    };
    if let Some(network) = request.network.as_ref().filter(|_| own_netns) {
        let configured = open_ns(Path::new(&format!("/proc/{pid}/ns/net")))
            .map_err(|e| format!("cannot open the container's network namespace: {e}"))
            .and_then(|netns| network::configure(network, Some(&netns)));
        if let Err(e) = configured {
            let _ = kill(pid, libc::SIGKILL);
            abandon(cgroup);
            return Err(system(format!("the pod network: {e}")));
        }
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
    let mut join = Vec::new();
    for (flag, name) in namespaces {
        let path = PathBuf::from(format!("/proc/{init_pid}/ns/{name}"));
        let fd =
            open_ns(&path).map_err(|e| system(format!("cannot open {}: {e}", path.display())))?;
        join.push((fd, flag));
    }
    let Launched {
        process: process_id,
        pid,
        ..
    } = launch(
        agent,
        Process {
            job: Job::Exec {
                process: &process,
                seccomp: seccomp.as_deref(),
                guard: guard.as_deref(),
            },
            args: &process.args,
            terminal: process.terminal,
            console_size: process.console_size,
            stdio: [request.stdin, request.stdout, request.stderr],
            join,
            clone_flags: 0,
            cgroup: cgroup.as_deref(),
            cgroup_dir: None,
            maps: None,
            what: format!("cannot exec in container {id:?}"),
        },
    )
    .await?;
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
