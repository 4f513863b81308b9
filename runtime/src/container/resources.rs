//! pause, resume and update: a running container's cgroup in the guest
//! (and, for update, the CPU limits of its VM's cgroup on the host).

use std::path::PathBuf;

use runvm_agent_api::oci::LinuxResources;

use crate::agent_client::AgentClient;
use crate::container_client::ContainerClient;
use crate::deadlines;
use crate::host_cgroup::limits::CpuLimits;
use crate::state::{Container, Status};

use super::{block_on, ContainerError, Context, Result};

/// The container and its agent socket, if its status is one of `allowed`
/// (else the error `refusal` makes of the status).
fn agent_socket(
    context: &Context,
    id: &str,
    allowed: &[Status],
    refusal: impl FnOnce(Status) -> ContainerError,
) -> Result<(Container, PathBuf)> {
    let container = context.root()?.open_container(id)?;
    let record = container.load()?;
    let status = record.status();
    if !allowed.contains(&status) {
        return Err(refusal(status));
    }
    let socket = container.home(&record).vsock_socket();
    Ok((container, socket))
}

/// Freezes every process of running container `id`.
pub fn pause(context: &Context, id: &str) -> Result {
    let (container, socket) = agent_socket(context, id, &[Status::Running], |_| {
        ContainerError::NotRunning
    })?;
    freeze(&container, &socket, true)
}

/// Thaws paused container `id`.
pub fn resume(context: &Context, id: &str) -> Result {
    let (container, socket) = agent_socket(context, id, &[Status::Paused], |_| {
        ContainerError::NotPaused
    })?;
    freeze(&container, &socket, false)
}

fn freeze(container: &Container, socket: &std::path::Path, freeze: bool) -> Result {
    let id = container.id();
    let operation = if freeze { "pause" } else { "resume" };
    block_on(deadlines::within(operation, deadlines::FREEZE, async {
        let agent = AgentClient::connect(socket).await?;
        ContainerClient::new(&agent).freeze(id, freeze).await
    }))??;
    let mut record = container.load()?;
    record.status = if freeze {
        Status::Paused
    } else {
        Status::Running
    };
    container.save(&record)?;
    Ok(())
}

/// Sets container `id`'s resource limits in the guest; CPU limits apply
/// to its VM's host cgroup too.
pub fn update(context: &Context, id: &str, resources: LinuxResources) -> Result {
    let (container, socket) = agent_socket(
        context,
        id,
        &[Status::Created, Status::Running, Status::Paused],
        ContainerError::CannotUpdate,
    )?;
    // The host's side: the VM as a whole gets the new CPU limits. Its
    // memory limit stays: the VM's RAM was fixed when it booted.
    let host_cpu = CpuLimits::of_update(&resources);
    block_on(deadlines::within("update", deadlines::UPDATE, async {
        let agent = AgentClient::connect(&socket).await?;
        ContainerClient::new(&agent).update(id, resources).await
    }))??;
    if let (Some(cgroup), Some(cpu)) = (container.load()?.cgroup, host_cpu) {
        cgroup.set_cpu(&cpu)?;
    }
    Ok(())
}
