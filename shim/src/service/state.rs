//! What the shim's requests share: the pod's VM, the containers and their
//! processes, the event channel; booting the pod at the first container,
//! creating a container in it, and watching a process end.

use super::*;
use crate::publisher::Event;
use runvm::pod::HostCgroupOf;

/// How long output may keep flowing after a process ended.
pub(super) const DRAIN_PATIENCE: Duration = Duration::from_secs(10);
/// After a SIGKILL ended the init (the guest still tears its processes
/// down, and they may hold its output open).
pub(super) const KILLED_DRAIN_PATIENCE: Duration = Duration::from_millis(500);
/// How long the pod waits for the last tasks holding it to let go.
pub(super) const POD_RELEASE_PATIENCE: Duration = Duration::from_secs(5);
/// How long a shim whose last container was deleted waits for
/// containerd's Shutdown before it leaves by itself: containerd sends none
/// after a Delete that outlasted its own timeout (a loaded host, a slow
/// guest), and the shim would otherwise stay forever.
pub(super) const IDLE_EXIT: Duration = Duration::from_secs(30);
/// Exit status when the guest went away without telling.
pub(super) const STATUS_LOST: u32 = 255;

pub(super) struct Container {
    pub(super) bundle: PathBuf,
    /// The rootfs mount this shim made from containerd's mounts.
    pub(super) mounted_rootfs: Option<PathBuf>,
    pub(super) init: Process,
    pub(super) paused: bool,
    pub(super) execs: HashMap<String, Process>,
}

/// What the tasks share.
pub(super) struct Shared {
    /// The pod's VM, once booted; the lock serialises the boot.
    pub(super) pod: tokio::sync::Mutex<Option<Arc<Pod>>>,
    pub(super) containers: Mutex<HashMap<String, Container>>,
    pub(super) events: Mutex<std::sync::mpsc::Sender<Event>>,
    pub(super) root: PathBuf,
    /// containerd's namespace of the pod (a logging program is told it).
    pub(super) namespace: String,
}

impl Shared {
    pub(super) fn containers(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let _ = events.send((topic, event));
    }

    pub(super) async fn pod(&self) -> TtrpcResult<Arc<Pod>> {
        self.pod
            .lock()
            .await
            .clone()
            .ok_or_else(|| error(Code::FAILED_PRECONDITION, "the pod's VM is not running"))
    }
}

pub(super) fn error(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

pub(super) fn internal(message: impl ToString) -> ttrpc::Error {
    error(Code::INTERNAL, message)
}

/// A kill's error for containerd. A process the agent found ended whose
/// exit this shim has not seen yet is NOT_FOUND "process already
/// finished", as runc's shim answers: containerd takes that for stopped
/// (otherwise StopPodSandbox fails and the pod is left).
pub(super) fn kill_error(e: ClientError) -> ttrpc::Error {
    if e.is_conflict() {
        error(Code::NOT_FOUND, format!("process already finished: {e}"))
    } else {
        internal(e)
    }
}

pub(super) fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    if exec_id.is_empty() {
        error(Code::NOT_FOUND, format!("container {id} not found"))
    } else {
        error(
            Code::NOT_FOUND,
            format!("process {exec_id} of container {id} not found"),
        )
    }
}

pub(super) fn not_implemented(what: &str) -> ttrpc::Error {
    error(
        Code::UNIMPLEMENTED,
        format!("runvm shim: {what} is not implemented yet"),
    )
}

/// Mounts containerd's rootfs mounts on `<bundle>/rootfs`; whether any were.
pub(super) fn mount_rootfs(request: &CreateTaskRequest, target: &Path) -> TtrpcResult<bool> {
    for mount in &request.rootfs {
        if let Err(e) = rootfs::mount(&mount.type_, &mount.source, &mount.options, target) {
            rootfs::unmount(target);
            return Err(internal(e));
        }
    }
    Ok(!request.rootfs.is_empty())
}

/// The pod's VM, booted for `bundle`'s container if it is the first
/// (then `true`: that container owns the pod's network).
pub(super) async fn pod_for(
    shared: &Arc<Shared>,
    id: &str,
    bundle: &Bundle,
) -> TtrpcResult<(Arc<Pod>, bool)> {
    let mut pod = shared.pod.lock().await;
    if let Some(pod) = pod.as_ref() {
        return Ok((pod.clone(), false));
    }
    let netns = runvm::pod::network_of(id, bundle).map_err(|e| error(Code::INVALID_ARGUMENT, e))?;
    let is_sandbox = matches!(
        sandbox::annotated_role(&bundle.spec, id),
        Ok(Some(Role::Sandbox))
    );
    let size = sandbox::size::for_owner(&bundle.spec, is_sandbox).map_err(internal)?;
    let root = StateRoot::open(&shared.root).map_err(internal)?;
    let pod_id = crate::shim::short_name(&crate::shim::pod_of(&bundle.dir, id));
    // The pod's host processes go where this container's config.json
    // says (the sandbox's cgroup for a CRI pod), as with runc.
    let cgroup = HostCgroupOf {
        container: id,
        spec: &bundle.spec,
    };
    let booted = Arc::new(
        Pod::boot(&root, &pod_id, size, netns.as_deref(), Some(cgroup))
            .await
            .map_err(|e| internal(format!("cannot boot the pod's VM: {e}")))?,
    );
    match booted.connect_agent().await {
        Ok(agent) => drop(tokio::spawn(publish_ooms(shared.clone(), agent))),
        Err(e) => log::warn!("pod {pod_id}: no OOM events: {e}"),
    }
    *pod = Some(booted.clone());
    Ok((booted, true))
}

/// Publishes `TaskOOM` for every OOM kill the guest reports in a
/// container of this shim, until the VM stops (which ends `agent`'s
/// connection).
async fn publish_ooms(shared: Arc<Shared>, agent: runvm::agent_client::AgentClient) {
    let containers = ContainerClient::new(&agent);
    let mut after = 0;
    while let Ok((seq, event)) = containers.next_event(after).await {
        after = seq;
        if let ContainerEvent::Oom { id, .. } = event {
            if shared.containers().contains_key(&id) {
                let mut oom = TaskOOM::new();
                oom.container_id = id;
                shared.publish("/tasks/oom", Box::new(oom));
            }
        }
    }
}

/// Creates container `id` in the pod's VM; its init is held.
pub(super) async fn create_in_pod(
    shared: Arc<Shared>,
    id: String,
    bundle_dir: PathBuf,
    paths: StdioPaths,
    closer: crate::stdio::StdinCloser,
) -> TtrpcResult<(Arc<Pod>, ContainerProcess)> {
    let bundle = Bundle::load(&bundle_dir).map_err(internal)?;
    let (pod, booted) = pod_for(&shared, &id, &bundle).await?;
    let owner = LogOwner {
        container_id: &id,
        namespace: &shared.namespace,
    };
    let io = stdio::open(&paths, &closer, &owner).map_err(internal)?;
    let prepared = pod.add(&id, &bundle).await.map_err(internal)?;
    let network = if booted { pod.guest_network() } else { None };
    let containers = ContainerClient::new(pod.agent());
    let created = deadlines::within(
        "create",
        deadlines::CREATE,
        containers.create_in_pod(&id, prepared, io, network),
    )
    .await;
    match created {
        Ok(init) => Ok((pod, init)),
        Err(e) => {
            let _ = pod.remove(&id).await;
            Err(internal(format!("cannot create container {id}: {e}")))
        }
    }
}

/// Waits for the end of a process (`exec`: an exec's agent id, else the
/// init of `id`), passes its output on, then records and reports it.
pub(super) async fn watch_exit(
    shared: Arc<Shared>,
    pod: Arc<Pod>,
    id: String,
    exec: Option<(String, u64)>,
    relay: ContainerProcess,
    exit: Arc<watch::Sender<Option<Exit>>>,
    pid: u32,
) {
    let status = match &exec {
        Some((_, process)) => runvm::guest_process::wait(pod.agent(), *process).await,
        None => ContainerClient::new(pod.agent()).wait(&id).await,
    };
    if exec.is_none() && status.is_ok() {
        // What the init left running goes with it, as containerd's runc
        // shim kills it for a container without a PID namespace of its
        // own (CRI-O puts a pod's containers in the sandbox's): otherwise
        // a background child holds the output open for DRAIN_PATIENCE and
        // the exit comes after the caller's stop timeout. With a PID
        // namespace of its own, the kernel has killed them already.
        let containers = ContainerClient::new(pod.agent());
        let killed = containers.signal(&id, libc::SIGKILL, true);
        if let Err(e) = deadlines::within("kill", deadlines::KILL, killed).await {
            log::warn!("container {id}: cannot kill what its init left: {e}");
        }
    }
    let patience = match status {
        Ok(runvm_agent_api::ExitStatus::Signal(libc::SIGKILL)) => KILLED_DRAIN_PATIENCE,
        _ => DRAIN_PATIENCE,
    };
    drop(pod);
    let _ = tokio::time::timeout(patience, relay.drain()).await;
    let code = status.map_or(STATUS_LOST, |status| status.shell_code() as u32);
    let at = now();
    exit.send_replace(Some(Exit {
        status: code,
        at: at.clone(),
    }));
    let mut event = TaskExit::new();
    event.container_id = id.clone();
    event.id = exec.map_or(id, |(exec_id, _)| exec_id);
    event.pid = pid;
    event.exit_status = code;
    event.exited_at = Some(at).into();
    shared.publish("/tasks/exit", Box::new(event));
}

pub(super) fn guest_pid(pid: i32) -> u32 {
    u32::try_from(pid).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use runvm_agent_api::{AgentError, ErrorKind};

    use super::*;

    fn code(e: ttrpc::Error) -> Code {
        match e {
            ttrpc::Error::RpcStatus(status) => status.code(),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn a_kill_that_finds_the_process_ended_is_not_found() {
        let refused = |kind| {
            ClientError::Agent(AgentError {
                kind,
                message: "container \"c1\" is not running".into(),
            })
        };
        assert_eq!(
            code(kill_error(refused(ErrorKind::Conflict))),
            Code::NOT_FOUND
        );
        assert_eq!(code(kill_error(refused(ErrorKind::System))), Code::INTERNAL);
        assert_eq!(code(kill_error(ClientError::Closed)), Code::INTERNAL);
    }
}
