//! The task service containerd calls over ttrpc: one per shim, for every
//! container of the pod. The pod's VM boots at the first `Create` and is
//! stopped when the last container is deleted.
//!
//! Each request hands its work to the shim's tokio runtime (see the crate
//! comment) and blocks on it. A process's end is watched by a task of its
//! own, which passes its output on before it records the exit, publishes
//! `TaskExit` and wakes `Wait`: containerd reads nothing after the exit
//! is reported. Another task follows the guest's events for the pod's
//! life and publishes `TaskOOM` for each OOM kill in a container.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest,
    StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, UpdateTaskRequest,
    WaitRequest, WaitResponse,
};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::shim::shim::CheckpointTaskRequest;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::protos::types::task::{ProcessInfo, Status};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use runvm::agent_client::ClientError;
use runvm::bundle::{self, Bundle};
use runvm::container_client::{ContainerClient, ContainerProcess};
use runvm::deadlines;
use runvm::pod::Pod;
use runvm::sandbox::{self, Role};
use runvm::state::StateRoot;
use runvm_agent_api::{ContainerEvent, RequestBody};
use tokio::sync::watch;

use crate::log_uri::LogOwner;
use crate::process::{now, Exit, Process};
use crate::rootfs;
use crate::stdio::{self, StdioPaths};

mod state;
mod steps;

use state::*;

pub struct Service {
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    exit: Arc<ExitSignal>,
}

impl Service {
    pub fn new(
        namespace: &str,
        root: PathBuf,
        publisher: RemotePublisher,
        events_address: Option<String>,
        exit: Arc<ExitSignal>,
    ) -> Service {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the shim cannot start its async runtime");
        let namespace = namespace.to_owned();
        let events = crate::publisher::start(publisher, events_address, namespace.clone());
        Service {
            runtime,
            shared: Arc::new(Shared {
                pod: tokio::sync::Mutex::new(None),
                containers: Mutex::new(HashMap::new()),
                events: Mutex::new(events),
                root,
                namespace: namespace.clone(),
            }),
            exit,
        }
    }

    /// Runs `work` on a worker thread of the runtime (which outlives any
    /// process it starts) and waits for it.
    fn run<T, F>(&self, work: F) -> TtrpcResult<T>
    where
        T: Send + 'static,
        F: Future<Output = TtrpcResult<T>> + Send + 'static,
    {
        self.runtime
            .block_on(self.runtime.spawn(work))
            .map_err(|e| internal(format!("the request's task failed: {e}")))?
    }

    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        look: impl FnOnce(&mut Container, Option<&mut Process>) -> TtrpcResult<T>,
    ) -> TtrpcResult<T> {
        let mut containers = self.shared.containers();
        let container = containers.get_mut(id).ok_or_else(|| not_found(id, ""))?;
        if exec_id.is_empty() {
            return look(container, None);
        }
        let mut execs = std::mem::take(&mut container.execs);
        let result = match execs.get_mut(exec_id) {
            Some(process) => look(container, Some(process)),
            None => Err(not_found(id, exec_id)),
        };
        container.execs = execs;
        result
    }

    /// Stops the pod's VM once no container is left.
    /// Exits after [`IDLE_EXIT`] if no container and no pod came meanwhile
    /// (a Create that is booting the pod's VM holds the pod's lock).
    fn exit_if_still_idle(&self) {
        if !self.shared.containers().is_empty() {
            return;
        }
        let (shared, exit) = (self.shared.clone(), self.exit.clone());
        std::thread::spawn(move || {
            std::thread::sleep(IDLE_EXIT);
            let no_pod = shared.pod.try_lock().is_ok_and(|pod| pod.is_none());
            if no_pod && shared.containers().is_empty() {
                log::info!("no container for {IDLE_EXIT:?} after the last delete: exiting");
                exit.signal();
            }
        });
    }

    fn release_pod_if_empty(&self) {
        if !self.shared.containers().is_empty() {
            return;
        }
        let shared = self.shared.clone();
        let _ = self.run(async move {
            let taken = shared.pod.lock().await.take();
            let Some(mut pod) = taken else {
                return Ok(());
            };
            let deadline = tokio::time::Instant::now() + POD_RELEASE_PATIENCE;
            loop {
                match Arc::try_unwrap(pod) {
                    Ok(pod) => {
                        let id = pod.id().to_owned();
                        if let Err(e) = pod.shut_down().await {
                            log::warn!("pod {id}: {e}");
                        }
                        return Ok(());
                    }
                    Err(shared) if tokio::time::Instant::now() < deadline => {
                        pod = shared;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    // The last holder's drop stops the VM.
                    Err(_) => return Ok(()),
                }
            }
        });
    }
}

impl containerd_shim::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let id = req.id.clone();
        runvm_agent_api::validate_container_id(&id)
            .map_err(|e| error(Code::INVALID_ARGUMENT, e))?;
        if self.shared.containers().contains_key(&id) {
            return Err(error(
                Code::ALREADY_EXISTS,
                format!("container {id} exists"),
            ));
        }
        if !req.checkpoint.is_empty() {
            return Err(not_implemented("restoring a checkpoint"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let rootfs = bundle.join("rootfs");
        let mounted = mount_rootfs(&req, &rootfs)?;
        let paths = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let mut init = Process::new(paths.clone());
        let exit = Arc::new(watch::channel(None).0);
        let created = {
            let shared = self.shared.clone();
            let (id, bundle, closer, exit) = (
                id.clone(),
                bundle.clone(),
                init.closer.clone(),
                exit.clone(),
            );
            self.run(async move {
                let (pod, relay) =
                    create_in_pod(shared.clone(), id.clone(), bundle, paths, closer).await?;
                let started = relay.started;
                let pid = pod.vmm_pid();
                let waiter = tokio::spawn(watch_exit(shared, pod, id, None, relay, exit, pid));
                Ok((started, pid, waiter))
            })
        };
        let (started, pid, waiter) = match created {
            Ok(created) => created,
            Err(e) => {
                if mounted {
                    rootfs::unmount(&rootfs);
                }
                self.release_pod_if_empty();
                return Err(e);
            }
        };
        init.exit = exit;
        init.pid = pid;
        init.guest = Some(started.process);
        init.waiter = Some(waiter);
        self.shared.containers().insert(
            id.clone(),
            Container {
                bundle: bundle.clone(),
                mounted_rootfs: mounted.then_some(rootfs),
                init,
                paused: false,
                execs: HashMap::new(),
            },
        );
        let mut io = TaskIO::new();
        io.stdin = req.stdin.clone();
        io.stdout = req.stdout.clone();
        io.stderr = req.stderr.clone();
        io.terminal = req.terminal;
        let mut event = TaskCreate::new();
        event.container_id = id;
        event.bundle = req.bundle.clone();
        event.rootfs = req.rootfs.clone();
        event.io = Some(io).into();
        event.pid = pid;
        self.shared.publish("/tasks/create", Box::new(event));
        let mut response = CreateTaskResponse::new();
        response.pid = pid;
        Ok(response)
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        if req.exec_id.is_empty() {
            return self.start_init(&req.id);
        }
        self.start_exec(&req.id, &req.exec_id)
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        self.with_process(&req.id, &req.exec_id, |container, exec| {
            let paused = container.paused && exec.is_none();
            let bundle = container.bundle.display().to_string();
            let process = exec.map_or(&container.init, |exec| &*exec);
            let mut response = StateResponse::new();
            response.id = req.id.clone();
            response.exec_id = req.exec_id.clone();
            response.bundle = bundle;
            response.pid = process.pid;
            let status = match process.status() {
                Status::RUNNING if paused => Status::PAUSED,
                status => status,
            };
            response.status = status.into();
            response.stdin = process.stdio.stdin.clone();
            response.stdout = process.stdio.stdout.clone();
            response.stderr = process.stdio.stderr.clone();
            response.terminal = process.stdio.terminal;
            if let Some(exit) = process.exited() {
                response.exit_status = exit.status;
                response.exited_at = Some(exit.at).into();
            }
            Ok(response)
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let mut exited = self.with_process(&req.id, &req.exec_id, |container, exec| {
            Ok(exec.map_or(&container.init, |exec| &*exec).exit.subscribe())
        })?;
        let exit = self.runtime.block_on(async move {
            exited
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|exit| exit.clone())
        });
        let mut response = WaitResponse::new();
        match exit {
            Some(exit) => {
                response.exit_status = exit.status;
                response.exited_at = Some(exit.at).into();
            }
            // The process was deleted while waited for.
            None => {
                response.exit_status = STATUS_LOST;
                response.exited_at = Some(now()).into();
            }
        }
        Ok(response)
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let signal = i32::try_from(req.signal)
            .ok()
            .filter(|signal| (1..=64).contains(signal))
            .ok_or_else(|| {
                error(
                    Code::INVALID_ARGUMENT,
                    format!("invalid signal {}", req.signal),
                )
            })?;
        let guest = self.with_process(&req.id, &req.exec_id, |container, exec| {
            let process = exec.map_or(&container.init, |exec| &*exec);
            if process.exited().is_some() && !req.all {
                return Err(error(Code::NOT_FOUND, "process already finished"));
            }
            Ok(process.guest)
        })?;
        let shared = self.shared.clone();
        let (id, exec_id, all) = (req.id.clone(), req.exec_id.clone(), req.all);
        self.run(async move {
            let pod = shared.pod().await?;
            let sent = if exec_id.is_empty() {
                let containers = ContainerClient::new(pod.agent());
                deadlines::within("kill", deadlines::KILL, containers.signal(&id, signal, all))
                    .await
            } else {
                let Some(process) = guest else {
                    return Err(error(
                        Code::FAILED_PRECONDITION,
                        "the process has not started",
                    ));
                };
                let call = pod.agent().call(RequestBody::Signal { process, signal });
                deadlines::within("kill", deadlines::KILL, async { call.await.map(drop) }).await
            };
            sent.map_err(kill_error)
        })?;
        Ok(Empty::new())
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        if !req.exec_id.is_empty() {
            return self.delete_exec(&req.id, &req.exec_id);
        }
        let mut container = {
            let mut containers = self.shared.containers();
            let container = containers
                .get(&req.id)
                .ok_or_else(|| not_found(&req.id, ""))?;
            if container.init.status() == Status::RUNNING {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is running: kill it first", req.id),
                ));
            }
            containers
                .remove(&req.id)
                .ok_or_else(|| not_found(&req.id, ""))?
        };
        if let Some(waiter) = container.init.waiter.take() {
            if container.init.exited().is_none() {
                waiter.abort();
            }
        }
        container.execs.clear();
        let shared = self.shared.clone();
        let id = req.id.clone();
        let removed = self.run(async move {
            match shared.pod.lock().await.clone() {
                Some(pod) => pod.remove(&id).await.map_err(internal),
                None => Ok(()),
            }
        });
        if let Err(e) = removed {
            log::warn!("container {}: {e}", req.id);
        }
        if let Some(rootfs) = &container.mounted_rootfs {
            rootfs::unmount(rootfs);
        }
        let exit = container.init.exited().unwrap_or(Exit {
            status: 0,
            at: now(),
        });
        let mut event = TaskDelete::new();
        event.container_id = req.id.clone();
        event.id = req.id.clone();
        event.pid = container.init.pid;
        event.exit_status = exit.status;
        event.exited_at = Some(exit.at.clone()).into();
        self.shared.publish("/tasks/delete", Box::new(event));
        self.release_pod_if_empty();
        self.exit_if_still_idle();
        let mut response = DeleteResponse::new();
        response.pid = container.init.pid;
        response.exit_status = exit.status;
        response.exited_at = Some(exit.at).into();
        Ok(response)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        self.with_process(&req.id, "", |_, _| Ok(()))?;
        let shared = self.shared.clone();
        let id = req.id.clone();
        let processes = self.run(async move {
            let pod = shared.pod().await?;
            let containers = ContainerClient::new(pod.agent());
            deadlines::within("ps", deadlines::QUERY, containers.processes(&id))
                .await
                .map_err(internal)
        })?;
        let mut response = PidsResponse::new();
        response.processes = processes
            .into_iter()
            .map(|process| {
                let mut info = ProcessInfo::new();
                info.pid = guest_pid(process.pid);
                info
            })
            .collect();
        Ok(response)
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        runvm_agent_api::validate_container_id(&req.exec_id)
            .map_err(|e| error(Code::INVALID_ARGUMENT, format!("exec id: {e}")))?;
        let spec: oci_spec::runtime::Process =
            serde_json::from_slice(&req.spec.value).map_err(|e| {
                error(
                    Code::INVALID_ARGUMENT,
                    format!("the exec's process spec: {e}"),
                )
            })?;
        let wire = bundle::to_wire(&spec).map_err(|e| error(Code::INVALID_ARGUMENT, e))?;
        self.with_process(&req.id, "", |container, _| {
            if container.init.exited().is_some() {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("container {} has stopped", req.id),
                ));
            }
            if container.execs.contains_key(&req.exec_id) {
                return Err(error(
                    Code::ALREADY_EXISTS,
                    format!("process {} exists", req.exec_id),
                ));
            }
            let mut process = Process::new(StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            });
            process.spec = Some(wire);
            container.execs.insert(req.exec_id.clone(), process);
            Ok(())
        })?;
        let mut event = TaskExecAdded::new();
        event.container_id = req.id.clone();
        event.exec_id = req.exec_id.clone();
        self.shared.publish("/tasks/exec-added", Box::new(event));
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let guest = self.with_process(&req.id, &req.exec_id, |container, exec| {
            Ok(exec.map_or(&container.init, |exec| &*exec).guest)
        })?;
        let Some(process) = guest else {
            return Err(error(
                Code::FAILED_PRECONDITION,
                "the process has not started",
            ));
        };
        let rows = u16::try_from(req.height).unwrap_or(u16::MAX);
        let columns = u16::try_from(req.width).unwrap_or(u16::MAX);
        let shared = self.shared.clone();
        self.run(async move {
            let pod = shared.pod().await?;
            let resize = pod.agent().call(RequestBody::ResizeTerminal {
                process,
                rows,
                columns,
            });
            deadlines::within("resize", deadlines::RESIZE, async {
                resize.await.map(drop)
            })
            .await
            .map_err(internal)
        })?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        self.with_process(&req.id, &req.exec_id, |container, exec| {
            if req.stdin {
                exec.map_or(&container.init, |exec| &*exec).closer.close();
            }
            Ok(())
        })?;
        Ok(Empty::new())
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.freeze(&req.id, true)?;
        let mut event = TaskPaused::new();
        event.container_id = req.id.clone();
        self.shared.publish("/tasks/paused", Box::new(event));
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.freeze(&req.id, false)?;
        let mut event = TaskResumed::new();
        event.container_id = req.id.clone();
        self.shared.publish("/tasks/resumed", Box::new(event));
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        self.with_process(&req.id, "", |_, _| Ok(()))?;
        // containerd sends the OCI LinuxResources as JSON.
        let resources: runvm_agent_api::oci::LinuxResources = req
            .resources
            .as_ref()
            .ok_or_else(|| error(Code::INVALID_ARGUMENT, "no resources to update"))
            .and_then(|any| {
                serde_json::from_slice(&any.value)
                    .map_err(|e| error(Code::INVALID_ARGUMENT, format!("invalid resources: {e}")))
            })?;
        let shared = self.shared.clone();
        let id = req.id.clone();
        self.run(async move {
            let pod = shared.pod().await?;
            let containers = ContainerClient::new(pod.agent());
            deadlines::within(
                "update",
                deadlines::UPDATE,
                containers.update(&id, resources.clone()),
            )
            .await
            .map_err(internal)?;
            pod.update_host_cpu(&id, &resources).map_err(internal)
        })?;
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        self.with_process(&req.id, "", |_, _| Ok(()))?;
        let shared = self.shared.clone();
        let id = req.id.clone();
        let stats = self.run(async move {
            let pod = shared.pod().await?;
            let containers = ContainerClient::new(pod.agent());
            deadlines::within("stats", deadlines::QUERY, containers.stats(&id))
                .await
                .map_err(internal)
        })?;
        let mut response = StatsResponse::new();
        response.stats = Some(crate::metrics::packed(&stats).map_err(internal)?).into();
        Ok(response)
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, _req: CheckpointTaskRequest) -> TtrpcResult<Empty> {
        Err(error(
            Code::UNIMPLEMENTED,
            "runvm shim: checkpoints are not supported",
        ))
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        let task_pid = self
            .shared
            .containers()
            .get(&req.id)
            .map_or(0, |container| container.init.pid);
        let mut response = ConnectResponse::new();
        response.shim_pid = std::process::id();
        response.task_pid = task_pid;
        response.version = env!("CARGO_PKG_VERSION").to_owned();
        Ok(response)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.shared.containers().is_empty() {
            self.release_pod_if_empty();
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
