//! delete: a container's monitor, VMM and virtiofsd ended, its place in
//! a sandbox given up, its network, cgroup and directory removed, its
//! poststop hooks run.

use std::time::Duration;

use crate::hooks::{self, HookPoint};
use crate::network;
use crate::sandbox;
use crate::state::{Container, HostProcess, Record, StateError, Status};

use super::{block_on, ContainerError, Context, Result};

/// How long `delete` waits for killed processes to be gone.
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// What `delete` is asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Kill a running container first; no error if it does not exist.
    pub force: bool,
}

/// Deletes container `id`: a stopped or created one, or with `force` any.
pub fn delete(context: &Context, id: &str, options: DeleteOptions) -> Result {
    if options.force {
        return force_delete(context, id);
    }
    let container = context.root()?.open_container(id)?;
    let record = container.load()?;
    match record.status() {
        Status::Stopped | Status::Created | Status::Creating => {}
        status => {
            return Err(ContainerError::NotStopped {
                id: id.to_owned(),
                status,
            })
        }
    }
    remove(context, container, &record)
}

/// `delete --force`: whatever state it is in, the container goes; one
/// that does not exist is no error.
pub(super) fn force_delete(context: &Context, id: &str) -> Result {
    let container = match context.root()?.open_container(id) {
        Ok(container) => container,
        Err(StateError::NotFound) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let record = match container.load() {
        Ok(record) => record,
        // Unreadable state: remove what is there.
        Err(StateError::Corrupt { .. }) => {
            container.remove()?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    remove(context, container, &record)
}

/// After a foreground run: the monitor has ended; remove the rest.
pub(super) fn delete_stopped(context: &Context, id: &str) -> Result {
    let container = context.root()?.open_container(id)?;
    let record = container.load()?;
    remove(context, container, &record)
}

/// Ends the container's monitor, VMM and virtiofsd (SIGKILL: the guest
/// holds nothing the host needs back), removes its directory and runs the
/// poststop hooks.
fn remove(context: &Context, container: Container, record: &Record) -> Result {
    if let Err(e) = leave_sandbox(context, record) {
        context.logger.warn(&e.to_string());
    }
    stop_members(context, record);
    let processes: Vec<HostProcess> = record
        .monitor
        .iter()
        .chain(record.helpers.iter())
        .copied()
        .collect();
    if !HostProcess::kill_all(&processes, KILL_PATIENCE) {
        return Err(ContainerError::Unkillable {
            id: container.id().to_owned(),
        });
    }
    detach_network(context, record);
    // The share's mounts lived in virtiofsd's private mount namespace and
    // went with it; nothing under the directory can be a mount in ours,
    // which is checked before anything is removed.
    let mounts = crate::share::mounts_below(container.dir());
    if !mounts.is_empty() {
        return Err(ContainerError::MountsRemain {
            id: container.id().to_owned(),
            mounts,
        });
    }
    // What is left in the cgroup (exec monitors on their way out) goes
    // with it; the state stays until it is gone, so a later delete can
    // retry.
    if let Some(cgroup) = &record.cgroup {
        cgroup.remove()?;
    }
    let mut stopped = record.clone();
    stopped.status = Status::Stopped;
    let hook_state = stopped.oci_state();
    container.remove()?;
    if let Err(e) = hooks::run(HookPoint::Poststop, record.hooks.as_ref(), &hook_state) {
        context.logger.warn(&e.to_string());
    }
    Ok(())
}

/// Removes the taps and filters runvm added in the caller's network
/// namespace (none, or a namespace that is gone, is no error). A failure
/// is reported, not fatal: the namespace is the caller's, and what is left
/// in it goes with it.
pub(super) fn detach_network(context: &Context, record: &Record) {
    if let Some(netns) = &record.netns {
        if let Err(e) = network::detach(netns) {
            context
                .logger
                .warn(&format!("container {}: {e}", record.id));
        }
    }
}

/// A member leaves its sandbox's VM (see [`sandbox::leave`]).
pub(super) fn leave_sandbox(context: &Context, record: &Record) -> Result {
    block_on(sandbox::leave(&context.root()?, record))??;
    Ok(())
}

/// A sandbox about to be killed stops its members first.
fn stop_members(context: &Context, record: &Record) {
    let stopped = context
        .root()
        .and_then(|root| block_on(sandbox::stop_members(&root, record)));
    match stopped {
        Ok(Err(e)) => context.logger.warn(&e.to_string()),
        Err(e) => context.logger.warn(&e.to_string()),
        Ok(Ok(())) => {}
    }
}
