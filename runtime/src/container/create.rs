//! create: the id claimed, the container's record and host cgroup made,
//! its monitor started (which boots the VM, or joins the sandbox's, and
//! creates the init, held until `start`), its hooks run and its pid
//! file written. Whatever fails on the way is undone.

use std::path::PathBuf;

use crate::bundle::Bundle;
use crate::deadlines;
use crate::hooks::{self, HookPoint};
use crate::host_cgroup::{HostCgroup, Limits};
use crate::monitor::{self, MonitorArgs, Report};
use crate::network::{self, NetworkNamespace};
use crate::sandbox;
use crate::state::{self, Container, HostProcess, Record, Status};

use super::delete::{detach_network, leave_sandbox};
use super::{absolute, hand_over, ContainerError, Context, Result};

/// What `create` (and `run`) is asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    pub id: String,
    /// The bundle directory (config.json and the rootfs).
    pub bundle: PathBuf,
    /// Where to send the master of the container's pty.
    pub console_socket: Option<PathBuf>,
    /// Where to write the pid of the container's monitor.
    pub pid_file: Option<PathBuf>,
}

/// Creates the container; its init waits for [`super::start`].
pub fn create(context: &Context, options: &CreateOptions) -> Result {
    create_container(context, options, false)?;
    Ok(())
}

/// Claims the id, creates the container; the monitor (our child: a
/// foreground `run` waits for it) is returned. `foreground_terminal`: the
/// container's terminal may be the caller's own.
pub(super) fn create_container(
    context: &Context,
    options: &CreateOptions,
    foreground_terminal: bool,
) -> Result<(std::process::Child, Container)> {
    let root = context.root()?;
    let container = root.create(&options.id)?;
    let result = Bundle::load(&options.bundle)
        .map_err(ContainerError::from)
        .and_then(|bundle| {
            create_claimed(context, &container, options, &bundle, foreground_terminal)
        });
    match result {
        Ok(child) => Ok((child, container)),
        Err(e) => {
            // The monitor undid the VM, or its part in the sandbox's, when
            // it failed or was aborted; a monitor that was killed could not.
            if let Ok(record) = container.load() {
                let _ = leave_sandbox(context, &record);
                detach_network(context, &record);
                if let Some(cgroup) = record.cgroup {
                    let _ = cgroup.remove();
                }
            }
            let _ = container.remove();
            Err(e)
        }
    }
}

fn new_record(id: &str, bundle: &Bundle) -> Result<Record> {
    let annotations = bundle
        .spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(Record {
        id: id.to_owned(),
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs()?,
        created: state::rfc3339_now(),
        owner: String::new(),
        annotations,
        status: Status::Creating,
        monitor: None,
        helpers: Vec::new(),
        cgroup: None,
        exit_status: None,
        hooks: bundle.hooks(),
        sandbox: None,
        vm: None,
        netns: None,
    })
}

/// The creating part, with the id claimed; on error the caller removes
/// what is left.
fn create_claimed(
    context: &Context,
    container: &Container,
    options: &CreateOptions,
    bundle: &Bundle,
    foreground_terminal: bool,
) -> Result<std::process::Child> {
    let netns = match network::network_namespace(&bundle.spec) {
        NetworkNamespace::Host => return Err(ContainerError::HostNetwork),
        NetworkNamespace::New => None,
        NetworkNamespace::Path(path) => Some(absolute(&path)),
    };
    let mut record = new_record(&options.id, bundle)?;
    let guest_memory_mib = sandbox::place(&context.root()?, &mut record, &bundle.spec)?;
    // The VM owner carries the namespace's interfaces into its VM (its
    // monitor attaches them); members use the VM's.
    if record.sandbox.is_none() {
        record.netns = netns;
    }
    container.save(&record)?;
    let terminal = bundle.terminal();
    if !terminal && options.console_socket.is_some() {
        return Err(ContainerError::ConsoleSocketWithoutTerminal);
    }
    if terminal && options.console_socket.is_none() && !foreground_terminal {
        return Err(ContainerError::TerminalWithoutConsoleSocket);
    }
    let limits = Limits::for_vm(&bundle.spec, guest_memory_mib);
    let cgroup = HostCgroup::for_container(
        &bundle.spec,
        &options.id,
        context.systemd_cgroup,
        limits.memory,
    )?;
    record.cgroup = Some(cgroup.clone());
    container.save(&record)?;
    let monitor_args = MonitorArgs {
        id: options.id.clone(),
        exec_process: None,
        console_socket: options.console_socket.as_deref().map(absolute),
        own_terminal: foreground_terminal && options.console_socket.is_none(),
        sync_fd: None,
    };
    let (launched, report) = monitor::spawn(
        &context.monitor_globals,
        &monitor_args,
        !monitor_args.own_terminal,
        ("create", deadlines::CREATE_REPORT),
    )?;
    let helpers = match report {
        Report::Ready { helpers } => helpers,
        Report::Error(message) => {
            launched.abort();
            return Err(ContainerError::Monitor(message));
        }
    };
    // Once the VM is up: a CPU quota need not slow its boot down.
    if let Err(e) = cgroup.set_cpu(&limits.cpu) {
        launched.abort();
        return Err(e.into());
    }
    record.monitor = HostProcess::of(launched.pid() as i32);
    record.helpers = helpers;
    record.status = Status::Created;
    container.save(&record)?;
    let hooks = record.hooks.clone();
    let mut hook_state = record.oci_state();
    hook_state["status"] = "creating".into();
    hand_over(launched, options.pid_file.as_deref(), || {
        for point in [
            HookPoint::Prestart,
            HookPoint::CreateRuntime,
            HookPoint::CreateContainer,
        ] {
            hooks::run(point, hooks.as_ref(), &hook_state)?;
        }
        Ok(())
    })
}
