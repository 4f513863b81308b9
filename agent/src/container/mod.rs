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
//! - `pod`: the namespaces a container shares with others of its pod, and
//!   the pod's cgroup its own goes under; `new_cgroup` makes a new
//!   container's cgroup there.
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
mod kernel_names;
mod launch;
mod mount_tree;
pub mod mountopts;
mod new_cgroup;
pub mod paths;
pub mod phases;
mod pod;
pub mod procattrs;
mod procs;
mod propagation;
pub mod rootfs;
pub mod seccomp;
pub mod spec;
mod staged;
pub mod sysctl;
mod terminal;
pub mod tmpfs;
mod warm_up;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use runvm_agent_api::network::validate as validate_network;
use runvm_agent_api::{
    validate_container_id, AgentError, ContainerEvent, ContainerStatus, CreateContainerRequest,
    ErrorKind, ExecInContainerRequest, ExitStatus, ResponseBody,
};
use tokio::sync::{watch, Notify};

pub use control::{delete, freeze, processes, signal, state, stats, update, wait, wait_event};

use crate::exec::{invalid, system};
use crate::fdio::Fd;
use crate::network;
use crate::state::Agent;
use cgroups::Cgroup;
use init::Job;
use kernel_names::KernelNames;
use launch::{error_text, launch, open_ns, recv, Launched, Process};
use new_cgroup::{abandon, make_cgroup};
use phases::phase;
use seccomp::SeccompProgram;
use spec::ContainerPlan;
pub use warm_up::warm_up;

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
    /// The init's pidfd, by which its namespaces are found (see `pod`).
    pidfd: Option<OwnedFd>,
    status: ContainerStatus,
    exited: watch::Sender<Option<ExitStatus>>,
    /// The init's sync socket while it waits for start.
    sync: Option<Rc<Fd>>,
    cgroup: Option<Rc<Cgroup>>,
    /// The cgroup of the container's pod, which its own is in.
    pod_cgroup: Option<PathBuf>,
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
    /// The init's own mount namespace, held so that its end (unmounting
    /// every filesystem the container mounted: tens of milliseconds each
    /// when emulated) comes with `delete`, not between the init's exit and
    /// its parent seeing it (a `runvm run` powers the VM off instead).
    mount_ns: Option<OwnedFd>,
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
    /// Controllers already asked for at the root (enabled, or not offered
    /// by this kernel).
    controllers_on: Vec<&'static str>,
    /// `lo` is up, or not the agent's to bring up (see `crate::loopback`).
    loopback_up: bool,
    events: Events,
    /// The inotify descriptor watching memory.events files, once needed.
    inotify: Option<Rc<Fd>>,
    /// Device programs loaded once, attached to every cgroup that has
    /// the same rules.
    device_programs: devices::ProgramCache,
    /// The kernel's /proc and /sys names, once listed.
    kernel_names: Option<Rc<KernelNames>>,
    /// A new IPC namespace nobody has used (see `warm_up`), for the next
    /// container that asks for a new one.
    spare_ipc: Option<OwnedFd>,
    /// Mounts made ahead (see `warm_up`), for the next container that
    /// asks for the same.
    staged: staged::Staged,
    /// Where the empty read-only tmpfs for masked directories goes
    /// (`None`: nowhere, each container mounts its own).
    shared_mask_dir: Option<PathBuf>,
    /// That tmpfs is mounted.
    shared_mask_up: bool,
}

/// Where the guest's agent mounts the empty read-only tmpfs that
/// containers mask directories with.
pub const SHARED_MASK_DIR: &str = "/run/runvm-masked";

impl Containers {
    /// `loopback`: bring `lo` up before the first container;
    /// `shared_mask`: where to mount the empty tmpfs masked directories
    /// may share (see [`Containers::shared_mask`]).
    pub fn new(
        cgroup_root: Option<PathBuf>,
        loopback: bool,
        shared_mask: Option<PathBuf>,
    ) -> Containers {
        Containers {
            by_id: HashMap::new(),
            reserved: HashSet::new(),
            cgroup_root,
            controllers_on: Vec::new(),
            loopback_up: !loopback,
            events: Events::default(),
            inotify: None,
            device_programs: devices::ProgramCache::default(),
            kernel_names: None,
            spare_ipc: None,
            staged: staged::Staged::default(),
            shared_mask_dir: shared_mask,
            shared_mask_up: false,
        }
    }

    /// Enables the `wanted` cgroup controllers at the containers' cgroup
    /// root, each once (nothing to do without cgroup v2).
    pub fn ensure_controllers(&mut self, wanted: &[&'static str]) -> std::io::Result<()> {
        let Some(root) = &self.cgroup_root else {
            return Ok(());
        };
        if wanted.iter().all(|c| self.controllers_on.contains(c)) {
            return Ok(());
        }
        cgroups::enable_controllers(root, wanted)?;
        for c in wanted {
            if !self.controllers_on.contains(c) {
                self.controllers_on.push(c);
            }
        }
        Ok(())
    }

    /// The kernel's /proc and /sys names (see [`kernel_names`]), listed
    /// on first use; `None` (logged) when they cannot be listed, and then
    /// every masked and read-only path is set up as given.
    pub fn kernel_names(&mut self) -> Option<Rc<KernelNames>> {
        if self.kernel_names.is_none() {
            match KernelNames::list() {
                Ok(names) => self.kernel_names = Some(Rc::new(names)),
                Err(e) => agent_log!("cannot list /proc and /sys: {e}"),
            }
        }
        self.kernel_names.clone()
    }

    /// The agent's empty read-only tmpfs that containers unable to remount
    /// it mask directories with (see `rootfs::Masker`), mounted on first
    /// use; `None` (logged) when it cannot be.
    pub fn shared_mask(&mut self) -> Option<PathBuf> {
        let dir = self.shared_mask_dir.clone()?;
        if !self.shared_mask_up {
            let made = match std::fs::create_dir(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                _ => nix::mount::mount(
                    Some("tmpfs"),
                    &dir,
                    Some("tmpfs"),
                    nix::mount::MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .map_err(std::io::Error::from),
            };
            match made {
                Ok(()) => self.shared_mask_up = true,
                Err(e) => agent_log!("cannot mount the empty tmpfs for masks: {e}"),
            }
        }
        self.shared_mask_up.then_some(dir)
    }

    /// Brings `lo` up once when it is the agent's to bring up. Tried only
    /// once: a failure is reported to the first caller, not retried.
    pub fn ensure_loopback(&mut self) -> std::io::Result<()> {
        if std::mem::replace(&mut self.loopback_up, true) {
            return Ok(());
        }
        crate::loopback::bring_up()
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

    /// Namespace `name` (as under /proc/<pid>/ns) of container `id`'s
    /// init, which must not have ended.
    fn namespace_of(&self, id: &str, name: &str) -> Result<OwnedFd, AgentError> {
        let c = self.get(id)?;
        let ended = || conflict(format!("container {id:?} has stopped"));
        if c.status == ContainerStatus::Stopped {
            return Err(ended());
        }
        let pidfd = c.pidfd.as_ref().ok_or_else(ended)?;
        pod::namespace_of(c.pid, pidfd, name).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::ENOENT) => ended(),
            _ => system(format!(
                "cannot open the {name} namespace of container {id:?}: {e}"
            )),
        })
    }
}

/// Descriptors of the namespaces `plan` joins, by path or shared with
/// another container of the pod, and their CLONE_NEW* flags.
fn namespaces_to_join(
    agent: &Agent,
    plan: &ContainerPlan,
) -> Result<Vec<(OwnedFd, libc::c_int)>, AgentError> {
    let mut join = Vec::new();
    for ns in plan.namespaces.iter() {
        if let Some(path) = &ns.path {
            let fd = open_ns(path)
                .map_err(|e| invalid(format!("cannot open namespace {}: {e}", path.display())))?;
            join.push((fd, ns.flag));
        } else if let Some(other) = &ns.shared_with {
            let fd = agent
                .containers
                .borrow()
                .namespace_of(other, ns.name)
                .map_err(|e| AgentError {
                    kind: e.kind,
                    message: format!("cannot share the {} namespace: {}", ns.name, e.message),
                })?;
            join.push((fd, ns.flag));
        }
    }
    Ok(join)
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
    let mut plan = spec::container_plan(
        &request.spec,
        Path::new(&request.rootfs),
        &spec::passed_on_env(),
    )
    .map_err(invalid)?;
    if let Some(args0) = plan.process.args.first() {
        plan.process.program = spec::found_by_host(request.program.as_deref(), args0);
    }
    if let Some(pod) = &request.pod {
        pod::share_namespaces(&mut plan, &request.spec, &id, &pod.shared_namespaces)
            .map_err(invalid)?;
    }
    let names = agent.containers.borrow_mut().kernel_names();
    if let Some(names) = names {
        kernel_names::drop_absent(&mut plan, &names);
    }
    phase("c:plan");
    if !Path::new(&request.rootfs).is_dir() {
        return Err(invalid(format!(
            "the rootfs {} is not a directory",
            request.rootfs
        )));
    }
    if let Err(e) = agent.containers.borrow_mut().ensure_loopback() {
        agent_log!("cannot bring up lo: {e}");
    }
    let mut join = namespaces_to_join(agent, &plan)?;
    // A new IPC namespace made ahead (see `warm_up`) is joined instead,
    // unless the container has a user namespace, which would own one it
    // makes (the spare belongs to the agent's).
    let mut clone_flags = plan.clone_flags();
    let user_ns = clone_flags & libc::CLONE_NEWUSER != 0
        || join.iter().any(|(_, flag)| *flag == libc::CLONE_NEWUSER);
    let mut spare_ipc = false;
    if clone_flags & libc::CLONE_NEWIPC != 0 && !user_ns {
        if let Some(spare) = agent.containers.borrow_mut().spare_ipc.take() {
            join.push((spare, libc::CLONE_NEWIPC));
            clone_flags &= !libc::CLONE_NEWIPC;
            spare_ipc = true;
        }
    }
    // The pod's network goes where the container's network namespace is:
    // the agent's own (set up before the container, whose sysctls may name
    // the pod's interfaces), or one the container makes (set up once it
    // exists, before the program runs).
    let own_netns = plan.clone_flags() & libc::CLONE_NEWNET != 0
        || join.iter().any(|(_, flag)| *flag == libc::CLONE_NEWNET);
    // A container that cannot remount the agent's empty read-only tmpfs
    // (no CAP_SYS_ADMIN in its bounding set, or in a user namespace, which
    // does not own it) masks directories with it, not a tmpfs of its own.
    let may_share_mask = user_ns
        || plan
            .process
            .caps
            .as_ref()
            .is_some_and(|c| !c.bounding.contains(&caps::Capability::CAP_SYS_ADMIN));
    let mask_dir = may_share_mask
        .then(|| agent.containers.borrow_mut().shared_mask())
        .flatten();
    let premade = agent.containers.borrow_mut().staged.take_for(
        &plan.mounts,
        &staged::Fit {
            spare_ipc,
            own_netns,
            user_ns,
        },
    );
    if let Some(network) = &request.network {
        validate_network(network).map_err(|e| invalid(format!("the pod network: {e}")))?;
        if !own_netns {
            network::configure(network, None)
                .map_err(|e| system(format!("the pod network: {e}")))?;
        }
    }
    let cgroups = make_cgroup(agent, &id, &plan, request.pod.as_ref())?;
    let cgroup = cgroups.own.clone();
    let launched = launch(
        agent,
        Process {
            job: Job::Create(&plan),
            args: &plan.process.args,
            terminal: plan.process.terminal,
            console_size: plan.process.console_size,
            stdio: [request.stdin, request.stdout, request.stderr],
            join,
            clone_flags,
            cgroup: cgroup.as_deref(),
            cgroup_dir: cgroup.as_ref().map(|c| c.path.as_path()),
            maps: plan.uid_map.as_deref().zip(plan.gid_map.as_deref()),
            premade,
            mask_dir: mask_dir.as_deref(),
            what: format!("cannot create container {id:?}"),
        },
    )
    .await;
    let Launched { process, pid, sync } = match launched {
        Ok(launched) => launched,
        Err(e) => {
            abandon(cgroups);
            return Err(e);
        }
    };
    if let Some(network) = request.network.as_ref().filter(|_| own_netns) {
        let configured = open_ns(Path::new(&format!("/proc/{pid}/ns/net")))
            .map_err(|e| format!("cannot open the container's network namespace: {e}"))
            .and_then(|netns| network::configure(network, Some(&netns)));
        if let Err(e) = configured {
            let _ = kill(pid, libc::SIGKILL);
            abandon(cgroups);
            return Err(system(format!("the pod network: {e}")));
        }
    }
    // The init is our child and, while the process table has it alive,
    // not reaped: the pidfd is of that process.
    let pidfd = pod::pidfd_open(pid)
        .ok()
        .filter(|_| matches!(agent.processes.borrow().live_pid(process), Ok(live) if live == pid));
    let (exited, _) = watch::channel(None);
    let oom_watch = cgroup
        .as_ref()
        .and_then(|c| control::watch_oom(agent, &c.events_file()));
    let mount_ns = (plan.clone_flags() & libc::CLONE_NEWNS != 0)
        .then(|| open_ns(Path::new(&format!("/proc/{pid}/ns/mnt"))).ok())
        .flatten();
    let container = Container {
        rootfs: request.rootfs,
        process,
        pid,
        pidfd,
        status: ContainerStatus::Created,
        exited,
        sync: Some(sync),
        cgroup,
        pod_cgroup: cgroups.pod,
        namespaces: plan.namespaces.iter().map(|n| (n.flag, n.name)).collect(),
        seccomp: plan.seccomp.map(Rc::new),
        guard: plan.guard.map(Rc::new),
        personality: plan.process.attrs.personality,
        execs: Vec::new(),
        oom_kills: 0,
        oom_watch,
        mount_ns,
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
    let (join, cgroup, seccomp, guard, personality) = {
        let containers = agent.containers.borrow();
        let c = containers.get(&id)?;
        if c.status == ContainerStatus::Stopped {
            return Err(conflict(format!("container {id:?} is stopped")));
        }
        let mut join = Vec::new();
        for (flag, name) in &c.namespaces {
            join.push((containers.namespace_of(&id, name)?, *flag));
        }
        (
            join,
            c.cgroup.clone(),
            c.seccomp.clone(),
            c.guard.clone(),
            c.personality,
        )
    };
    let mut process =
        spec::process_plan(&request.process, &spec::passed_on_env()).map_err(invalid)?;
    process.attrs.personality = personality;
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
            premade: Vec::new(),
            mask_dir: None,
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
    fn without_a_place_for_it_no_mask_tmpfs_is_mounted() {
        // The tests on a host: nothing may be mounted in the host's tree.
        let mut containers = Containers::new(None, false, None);
        assert_eq!(containers.shared_mask(), None);
    }

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
