//! The longer steps of the task service: starting an init or an exec,
//! deleting an exec, freezing a container.

use super::*;

impl Service {
    pub(super) fn start_init(&self, id: &str) -> TtrpcResult<StartResponse> {
        let pid = self.with_process(id, "", |container, _| {
            if container.init.started || container.init.exited().is_some() {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("container {id} has been started already"),
                ));
            }
            Ok(container.init.pid)
        })?;
        let shared = self.shared.clone();
        let owned_id = id.to_owned();
        self.run(async move {
            let pod = shared.pod().await?;
            let containers = ContainerClient::new(pod.agent());
            deadlines::within("start", deadlines::START, containers.start(&owned_id))
                .await
                .map_err(internal)
        })?;
        self.with_process(id, "", |container, _| {
            container.init.started = true;
            Ok(())
        })?;
        let mut event = TaskStart::new();
        event.container_id = id.to_owned();
        event.pid = pid;
        self.shared.publish("/tasks/start", Box::new(event));
        let mut response = StartResponse::new();
        response.pid = pid;
        Ok(response)
    }

    pub(super) fn start_exec(&self, id: &str, exec_id: &str) -> TtrpcResult<StartResponse> {
        let (spec, paths, closer, exit) = self.with_process(id, exec_id, |_, exec| {
            let exec = exec.ok_or_else(|| not_found(id, exec_id))?;
            let spec = exec.spec.take().ok_or_else(|| {
                error(
                    Code::FAILED_PRECONDITION,
                    format!("process {exec_id} has been started already"),
                )
            })?;
            Ok((
                spec,
                exec.stdio.clone(),
                exec.closer.clone(),
                exec.exit.clone(),
            ))
        })?;
        let shared = self.shared.clone();
        let (owned_id, owned_exec) = (id.to_owned(), exec_id.to_owned());
        let started = self.run(async move {
            let pod = shared.pod().await?;
            let owner = LogOwner {
                container_id: &owned_id,
                namespace: &shared.namespace,
            };
            let io = stdio::open(&paths, &closer, &owner).map_err(internal)?;
            let containers = ContainerClient::new(pod.agent());
            let relay = deadlines::within(
                "exec",
                deadlines::EXEC,
                containers.exec_with(&owned_id, spec, io),
            )
            .await
            .map_err(internal)?;
            let started = relay.started;
            let pid = guest_pid(started.pid);
            let exec = Some((owned_exec, started.process));
            let waiter = tokio::spawn(watch_exit(shared, pod, owned_id, exec, relay, exit, pid));
            Ok((started, waiter))
        });
        let (started, waiter) = match started {
            Ok(started) => started,
            Err(e) => {
                // Not started: it may be deleted, not started again.
                return Err(e);
            }
        };
        let pid = guest_pid(started.pid);
        self.with_process(id, exec_id, |_, exec| {
            if let Some(exec) = exec {
                exec.pid = pid;
                exec.guest = Some(started.process);
                exec.started = true;
                exec.waiter = Some(waiter);
            }
            Ok(())
        })?;
        let mut event = TaskExecStarted::new();
        event.container_id = id.to_owned();
        event.exec_id = exec_id.to_owned();
        event.pid = pid;
        self.shared.publish("/tasks/exec-started", Box::new(event));
        let mut response = StartResponse::new();
        response.pid = pid;
        Ok(response)
    }

    pub(super) fn delete_exec(&self, id: &str, exec_id: &str) -> TtrpcResult<DeleteResponse> {
        let process = self.with_process(id, "", |container, _| {
            let exec = container
                .execs
                .get(exec_id)
                .ok_or_else(|| not_found(id, exec_id))?;
            if exec.status() == Status::RUNNING {
                return Err(error(
                    Code::FAILED_PRECONDITION,
                    format!("process {exec_id} is running: kill it first"),
                ));
            }
            container
                .execs
                .remove(exec_id)
                .ok_or_else(|| not_found(id, exec_id))
        })?;
        let exit = process.exited().unwrap_or(Exit {
            status: 0,
            at: now(),
        });
        let mut response = DeleteResponse::new();
        response.pid = process.pid;
        response.exit_status = exit.status;
        response.exited_at = Some(exit.at).into();
        Ok(response)
    }

    pub(super) fn freeze(&self, id: &str, frozen: bool) -> TtrpcResult<()> {
        self.with_process(id, "", |_, _| Ok(()))?;
        let shared = self.shared.clone();
        let owned_id = id.to_owned();
        self.run(async move {
            let pod = shared.pod().await?;
            let containers = ContainerClient::new(pod.agent());
            deadlines::within(
                "pause",
                deadlines::FREEZE,
                containers.freeze(&owned_id, frozen),
            )
            .await
            .map_err(internal)
        })?;
        self.with_process(id, "", |container, _| {
            container.paused = frozen;
            Ok(())
        })
    }
}
