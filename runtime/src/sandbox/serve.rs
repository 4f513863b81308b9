//! The VM owner's side: the VM, its agent connection, the members, and
//! the control socket that adds and removes them (see the module above).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use runvm_agent_api::PodPlacement;

use super::control::{self, Request, Response};
use super::{namespaces, size, Home, SandboxError};
use crate::agent_client::AgentClient;
use crate::bundle::{self, Bundle};
use crate::container_client::ContainerClient;
use crate::deadlines;
use crate::home_dir;
use crate::state::{self, HostProcess, StateRoot};
use crate::vm::MicroVm;

/// How long stopped members' monitors get to report their status before
/// the VM goes.
const MEMBER_EXIT_PATIENCE: Duration = Duration::from_secs(3);
/// How long a control connection may take to say what it wants.
const REQUEST_PATIENCE: Duration = Duration::from_secs(10);

struct Inner {
    vm: Option<MicroVm>,
    members: BTreeSet<String>,
    /// The sandbox is stopping: no new members.
    closing: bool,
}

/// A running VM and the containers in it.
pub struct Sandbox {
    root: StateRoot,
    home: Home,
    agent: Arc<AgentClient>,
    inner: Arc<Mutex<Inner>>,
    server: Option<JoinHandle<()>>,
}

/// The guest's view of a container: its spec, rootfs path and place in
/// the pod.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Prepared {
    pub spec: runvm_agent_api::oci::Spec,
    pub rootfs: String,
    pub pod: PodPlacement,
    /// The process's program as found in its PATH on the host, when
    /// that is certain ([`crate::program_path`]).
    pub program: Option<String>,
}

impl Sandbox {
    pub fn new(root: StateRoot, home: Home, vm: MicroVm, agent: AgentClient) -> Sandbox {
        Sandbox {
            root,
            home,
            agent: Arc::new(agent),
            inner: Arc::new(Mutex::new(Inner {
                vm: Some(vm),
                members: BTreeSet::new(),
                closing: false,
            })),
            server: None,
        }
    }

    pub fn agent(&self) -> &AgentClient {
        &self.agent
    }

    /// The VMM and virtiofsd, for `delete` to end should this process be
    /// gone without having stopped them.
    pub async fn helpers(&self) -> Vec<HostProcess> {
        let inner = self.inner.lock().await;
        let Some(vm) = inner.vm.as_ref() else {
            return Vec::new();
        };
        let mut helpers: Vec<HostProcess> = vm
            .pid()
            .into_iter()
            .chain(vm.virtiofsd_pids())
            .filter_map(|pid| HostProcess::of(pid as i32))
            .collect();
        helpers.dedup();
        helpers
    }

    /// Binds container `id`'s rootfs and volumes from `bundle` into the
    /// share (for the VM owner's own container, the pod's first: the pod
    /// is named after it and has the limits of its sizing).
    pub async fn prepare(&self, id: &str, bundle: &Bundle) -> Result<Prepared, SandboxError> {
        let pod = PodPlacement {
            id: id.to_owned(),
            resources: size::pod_limits(&bundle.spec).map(Box::new),
            shared_namespaces: Vec::new(),
        };
        self.prepare_placed(id, bundle, pod).await
    }

    /// [`Self::prepare`] for a member of the pod whose sandbox container
    /// (the VM's first) is `sandbox`: it sits in the pod's cgroup and
    /// takes `shared` namespaces from the pod's containers.
    pub async fn prepare_member(
        &self,
        id: &str,
        bundle: &Bundle,
        sandbox: &str,
        shared: Vec<runvm_agent_api::SharedNamespace>,
    ) -> Result<Prepared, SandboxError> {
        let pod = PodPlacement {
            id: sandbox.to_owned(),
            resources: None,
            shared_namespaces: shared,
        };
        self.prepare_placed(id, bundle, pod).await
    }

    async fn prepare_placed(
        &self,
        id: &str,
        bundle: &Bundle,
        pod: PodPlacement,
    ) -> Result<Prepared, SandboxError> {
        let mut inner = self.inner.lock().await;
        let vm = inner.vm.as_mut().ok_or_else(|| stopping(&self.home))?;
        prepare(vm, &self.agent, id, bundle, pod).await
    }

    /// Container `id`, prepared with [`Self::prepare`], leaves the VM:
    /// deleted in the guest (which lets go of its rootfs first), then its
    /// rootfs and volumes are unbound from the share.
    pub async fn release(&self, id: &str) -> Result<(), SandboxError> {
        let mut inner = self.inner.lock().await;
        inner.members.remove(id);
        let containers = ContainerClient::new(&self.agent);
        let deleted = containers.delete(id, true);
        let _ = deadlines::within("delete", deadlines::KILL, deleted).await;
        match inner.vm.as_mut() {
            Some(vm) => vm
                .unshare_rootfs(id)
                .map_err(|e| SandboxError::Prepare(format!("container {id}: {e}"))),
            None => Ok(()),
        }
    }

    /// Starts answering on the control socket.
    pub fn serve(&mut self) -> Result<(), SandboxError> {
        let socket = self.home.control_socket();
        let listener =
            crate::unix_socket::bind_async(&socket).map_err(|e| SandboxError::Control {
                sandbox: self.home.sandbox.clone(),
                problem: format!("cannot listen on {}: {e}", socket.display()),
            })?;
        let server = Server {
            root: self.root.clone(),
            home: self.home.clone(),
            agent: self.agent.clone(),
            inner: self.inner.clone(),
        };
        self.server = Some(tokio::spawn(server.run(listener)));
        Ok(())
    }

    /// Refuses new members, kills the members in the guest and gives their
    /// monitors a moment to report, then stops the VM.
    pub async fn shut_down(mut self) {
        stop_members(&self.root, &self.agent, &self.inner).await;
        self.stop_serving();
        let vm = self.inner.lock().await.vm.take();
        if let Some(vm) = vm {
            // The guest holds nothing left to save (its root is read-only
            // and virtio-fs writes through to virtiofsd), so the VM is
            // stopped from the host at once rather than powered off by the
            // guest: callers such as podman give the monitor only a few
            // seconds after a SIGKILL.
            let _ = vm.stop().await;
        }
    }

    fn stop_serving(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = std::fs::remove_file(self.home.control_socket());
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // The server holds the VM too: it must not outlive this value.
        self.stop_serving();
    }
}

/// Refuses new members, SIGKILLs the members in the guest and waits a
/// moment for their monitors to see them end and exit.
async fn stop_members(root: &StateRoot, agent: &AgentClient, inner: &Mutex<Inner>) {
    let members = {
        let mut inner = inner.lock().await;
        inner.closing = true;
        inner.members.clone()
    };
    let containers = ContainerClient::new(agent);
    for id in &members {
        let killed = containers.signal(id, libc::SIGKILL, true);
        let _ = deadlines::within("kill", deadlines::KILL, killed).await;
    }
    let monitor_alive = |id: &String| {
        state::peek(root, id)
            .ok()
            .and_then(|record| record.monitor)
            .is_some_and(|monitor| monitor.is_alive())
    };
    let deadline = Instant::now() + MEMBER_EXIT_PATIENCE;
    while members.iter().any(monitor_alive) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stopping(home: &Home) -> SandboxError {
    SandboxError::Control {
        sandbox: home.sandbox.clone(),
        problem: "it is stopping".into(),
    }
}

/// Binds the container's rootfs and volumes into `vm`'s share; on error
/// what was bound for it is unbound.
async fn prepare(
    vm: &mut MicroVm,
    agent: &AgentClient,
    id: &str,
    bundle: &Bundle,
    pod: PodPlacement,
) -> Result<Prepared, SandboxError> {
    let failed = |e: String| SandboxError::Prepare(format!("container {id}: {e}"));
    let rootfs = bundle.rootfs().map_err(|e| failed(e.to_string()))?;
    let binds = bundle::host_binds(&bundle.spec, &bundle.dir).map_err(|e| failed(e.to_string()))?;
    if bundle.readonly_rootfs() {
        bundle::make_mount_points(&rootfs, &bundle.spec, &binds).map_err(|e| {
            failed(format!(
                "cannot make mount points in {}: {e}",
                rootfs.display()
            ))
        })?;
    }
    let guest_rootfs = vm
        .share_rootfs(agent, id, &rootfs, bundle.readonly_rootfs())
        .await
        .map_err(|e| failed(e.to_string()))?;
    let bound = async {
        let mut guest_sources = Vec::with_capacity(binds.len());
        for bind in &binds {
            guest_sources.push(vm.share_bind(id, &bind.source, bind.flags)?);
        }
        Ok::<_, crate::vm::VmError>(guest_sources)
    }
    .await;
    let wire = bound
        .map_err(|e| failed(e.to_string()))
        .and_then(|sources| {
            let spec = bundle::guest_spec(&bundle.spec, &binds, &sources);
            let mut wire = bundle::to_wire(&spec).map_err(|e| failed(e.to_string()))?;
            home_dir::fill_in(&mut wire, &rootfs);
            Ok(wire)
        });
    match wire {
        Ok(spec) => Ok(Prepared {
            program: crate::program_path::resolve(&spec, &rootfs),
            spec,
            rootfs: guest_rootfs,
            pod,
        }),
        Err(e) => {
            let _ = vm.unshare_rootfs(id);
            Err(e)
        }
    }
}

/// The control socket's task.
struct Server {
    root: StateRoot,
    home: Home,
    agent: Arc<AgentClient>,
    inner: Arc<Mutex<Inner>>,
}

impl Server {
    async fn run(self, listener: UnixListener) {
        let server = Arc::new(self);
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, say: not a reason to spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            tokio::spawn(server.clone().answer(stream));
        }
    }

    async fn answer(self: Arc<Self>, mut stream: UnixStream) {
        let request = tokio::time::timeout(
            REQUEST_PATIENCE,
            control::read_message::<Request>(&mut stream),
        )
        .await
        .unwrap_or_else(|_| Err("no request in time".to_owned()));
        let response = match request {
            Ok(request) => match self.handle(request).await {
                Ok(response) => response,
                Err(e) => Response::Error {
                    message: e.to_string(),
                },
            },
            Err(message) => Response::Error { message },
        };
        let _ = control::write_message(&mut stream, &response).await;
    }

    async fn handle(&self, request: Request) -> Result<Response, SandboxError> {
        match request {
            Request::Add { id } => self.add(&id).await,
            Request::Remove { id } => self.remove(&id).await,
            Request::StopMembers => {
                stop_members(&self.root, &self.agent, &self.inner).await;
                Ok(Response::Stopped)
            }
        }
    }

    async fn add(&self, id: &str) -> Result<Response, SandboxError> {
        let mut inner = self.inner.lock().await;
        if inner.closing {
            return Err(stopping(&self.home));
        }
        let record = state::peek(&self.root, id)?;
        if record.sandbox.as_deref() != Some(self.home.sandbox.as_str()) {
            return Err(SandboxError::Prepare(format!(
                "container {id} is not a member of sandbox {}",
                self.home.sandbox
            )));
        }
        if inner.members.contains(id) {
            return Err(SandboxError::Prepare(format!(
                "container {id} is in the sandbox already"
            )));
        }
        let bundle =
            Bundle::load(&record.bundle).map_err(|e| SandboxError::Prepare(e.to_string()))?;
        let pod = PodPlacement {
            id: self.home.sandbox.clone(),
            resources: None,
            shared_namespaces: namespaces::shared_namespaces(
                &self.root,
                &bundle.spec,
                &self.home.sandbox,
                id,
            )?,
        };
        let vm = inner.vm.as_mut().ok_or_else(|| stopping(&self.home))?;
        let prepared = prepare(vm, &self.agent, id, &bundle, pod).await?;
        inner.members.insert(id.to_owned());
        Ok(Response::Added(Box::new(prepared)))
    }

    async fn remove(&self, id: &str) -> Result<Response, SandboxError> {
        let mut inner = self.inner.lock().await;
        if !inner.members.remove(id) {
            return Ok(Response::Removed);
        }
        // The guest lets go of the rootfs before the host unbinds it.
        let containers = ContainerClient::new(&self.agent);
        let deleted = containers.delete(id, true);
        let _ = deadlines::within("delete", deadlines::KILL, deleted).await;
        if let Some(vm) = inner.vm.as_mut() {
            vm.unshare_rootfs(id)
                .map_err(|e| SandboxError::Prepare(format!("container {id}: {e}")))?;
        }
        Ok(Response::Removed)
    }
}
