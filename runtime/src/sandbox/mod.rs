//! Sandboxes: one microVM shared by the containers of a pod.
//!
//! Every container runvm creates is one of three kinds ([`Role`], decided
//! at `create` from config.json by [`classify`]):
//! - a **sandbox** (a pod's pause/infra container, marked by containerd's
//!   or CRI-O's annotations): it boots the pod's VM, sized for the pod
//!   ([`size`]);
//! - a **member** of a sandbox (the annotations name its sandbox, or a
//!   namespace path `/proc/<pid>/ns/<type>` names the monitor of another
//!   runvm container, as podman pods do): it joins that sandbox's VM;
//! - **standalone**: a VM of its own, as before pods.
//!
//! Sandboxes and standalone containers both own a VM, and both can be
//! joined; they differ only in how their VM is sized.
//!
//! Design:
//! - **The owner of the VM is the VM-owning container's init monitor**
//!   (see [`crate::monitor`]): it boots the VM, holds the share and its
//!   virtiofsd, and the list of its members ([`Sandbox`]). Nothing else
//!   can hold them: the share's mounts live in a mount namespace held by
//!   that process and virtiofsd, and the VMM dies with it.
//! - **Any runvm process reaches it through a control socket** the monitor
//!   serves, `<sandbox home>/sandbox.sock` ([`control`]): one JSON request
//!   and one JSON answer per connection. `add` binds a member's rootfs and
//!   volumes into the running VM's share and answers with the spec and
//!   rootfs path the guest needs; `remove` deletes the member in the guest
//!   and unbinds them. A control socket rather than joining the share's
//!   mount namespace from other processes: the list of members and the
//!   share's bookkeeping stay in one process, and requests are serialised
//!   there.
//! - **A member's monitor stands for the member only**: it asks the
//!   sandbox to `add` it, then creates the container over a connection of
//!   its own to the VM's agent (its stdio streams are its own), relays
//!   its stdio and signals and exits with its status, like a VM owner's
//!   monitor, but owns no VM. Every other call on a member (start, exec,
//!   kill, ps, pause, update...) talks to the agent of its sandbox's VM.
//! - **State has one home per VM**: the VM owner's directory under
//!   `--root` ([`Home`]: `vm/`, `vmm.log`, `sandbox.sock`); a member's
//!   record names its sandbox ([`crate::state::Record::sandbox`]), and
//!   [`Home::of`] is the one place that turns a record into paths.
//! - **Lifetimes**: the VM lives as long as the sandbox's init. When it
//!   ends, the monitor refuses new members, SIGKILLs the members in the
//!   guest (their monitors see them end and exit with their status), waits
//!   briefly for those monitors, then stops the VM. A SIGKILLed sandbox
//!   monitor, VMM or virtiofsd ends the VM (parent-death signals, the VMM
//!   exits when virtiofsd fails): the members' agent connections close,
//!   their monitors exit, and they are stopped; nothing of the share
//!   outlives the processes that held its mount namespace.

mod boot;
pub mod control;
pub mod namespaces;
mod role;
mod serve;
pub mod size;

use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

pub use boot::{boot, BootError, Booted};
pub use role::{annotated_role, classify, from_annotations, Role};
pub use serve::{Prepared, Sandbox};
pub use size::VmSize;

use crate::state::{self, Record, StateRoot, Status};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox {sandbox} of container {id} does not exist under --root {}", root.display())]
    NoSandbox {
        sandbox: String,
        id: String,
        root: PathBuf,
    },
    #[error("sandbox {sandbox} of container {id} is stopped")]
    Stopped { sandbox: String, id: String },
    #[error("sandbox {sandbox} of container {id} is still being created")]
    Creating { sandbox: String, id: String },
    #[error("sandbox {sandbox} of container {id} is itself a member of sandbox {of}")]
    Nested {
        sandbox: String,
        id: String,
        of: String,
    },
    #[error("invalid sandbox id {sandbox:?} in container {id}'s annotations: {problem}")]
    BadId {
        sandbox: String,
        id: String,
        problem: String,
    },
    #[error("namespace path {path} of container {id}: {problem}")]
    Namespace {
        id: String,
        path: String,
        problem: String,
    },
    #[error("annotation {name}: {problem}")]
    Annotation { name: String, problem: String },
    #[error("container {id} does not fit its sandbox {sandbox}'s VM: {problem}")]
    TooBig {
        id: String,
        sandbox: String,
        problem: String,
    },
    #[error("sandbox {sandbox}: {problem}")]
    Control { sandbox: String, problem: String },
    #[error("{0}")]
    Prepare(String),
    #[error(transparent)]
    State(#[from] state::StateError),
}

/// Where a VM's state lives: the directory of the container that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Home {
    /// The VM owner's id.
    pub sandbox: String,
    dir: PathBuf,
}

impl Home {
    /// The home of the VM that `record`'s container runs in.
    pub fn of(root: &Path, record: &Record) -> Home {
        let sandbox = record.sandbox.as_deref().unwrap_or(&record.id);
        Home::named(root, sandbox)
    }

    /// The home of the VM owned by `sandbox` (an id checked when its
    /// record was read or written).
    pub fn named(root: &Path, sandbox: &str) -> Home {
        Home {
            sandbox: sandbox.to_owned(),
            dir: root.join(sandbox),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The VM's directory (see [`crate::vm::MicroVm`]).
    pub fn vm_dir(&self) -> PathBuf {
        self.dir.join("vm")
    }

    /// The agent's channel: the VMM's hybrid-vsock socket.
    pub fn vsock_socket(&self) -> PathBuf {
        self.vm_dir().join("vsock.sock")
    }

    /// Where the VMM's messages go.
    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join("vmm.log")
    }

    /// The sandbox's control socket (see [`control`]).
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("sandbox.sock")
    }
}

/// Decides which VM the container of `record` goes to: `record` names its
/// sandbox, or gets the size of the VM it owns. A member's sandbox must run
/// under `root`, with room for it. The guest memory the container's host
/// cgroup is sized for.
pub fn place(root: &StateRoot, record: &mut Record, spec: &Spec) -> Result<u32, SandboxError> {
    match classify(spec, &record.id, root)? {
        Role::Member(owner) => {
            let owner_record = joinable(root, &owner, &record.id)?;
            if let Some(vm) = owner_record.vm {
                size::check_member(spec, &vm).map_err(|problem| SandboxError::TooBig {
                    id: record.id.clone(),
                    sandbox: owner.clone(),
                    problem,
                })?;
            }
            record.sandbox = Some(owner);
            // Only the member's monitor is on this host.
            Ok(size::guest_memory_mib(spec))
        }
        role => {
            let pod = role == Role::Sandbox || role::is_podman_infra(spec);
            let vm = size::for_owner(spec, pod)?;
            record.vm = Some(vm);
            Ok(vm.memory_mib)
        }
    }
}

/// The member of `record` leaves the VM of its sandbox: deleted in the
/// guest, its rootfs and volumes unbound. A sandbox that has stopped has
/// taken them along.
pub async fn leave(root: &StateRoot, record: &Record) -> Result<(), SandboxError> {
    let Some(sandbox) = &record.sandbox else {
        return Ok(());
    };
    match state::peek(root, sandbox) {
        Ok(owner) if owner.status() != Status::Stopped => {}
        _ => return Ok(()),
    }
    control::remove(&Home::of(root.dir(), record), &record.id).await
}

/// Before a running VM owner is killed: its members are stopped first, so
/// that their monitors exit with the members' status rather than a lost
/// VM's.
pub async fn stop_members(root: &StateRoot, record: &Record) -> Result<(), SandboxError> {
    if record.sandbox.is_some() || record.live_pid() == 0 {
        return Ok(());
    }
    if live_members(root, &record.id).is_empty() {
        return Ok(());
    }
    control::stop_members(&Home::of(root.dir(), record)).await
}

/// The members of `sandbox` under `root` whose monitor runs.
pub fn live_members(root: &StateRoot, sandbox: &str) -> Vec<String> {
    let ids = root.ids().unwrap_or_default();
    ids.into_iter()
        .filter(|id| {
            state::peek(root, id).is_ok_and(|record| {
                record.sandbox.as_deref() == Some(sandbox) && record.live_pid() != 0
            })
        })
        .collect()
}

/// Checks that container `id` can join the VM of `sandbox` under `root`
/// now; the sandbox's record.
pub fn joinable(root: &StateRoot, sandbox: &str, id: &str) -> Result<Record, SandboxError> {
    let record = match state::peek(root, sandbox) {
        Ok(record) => record,
        Err(state::StateError::NotFound) => {
            return Err(SandboxError::NoSandbox {
                sandbox: sandbox.to_owned(),
                id: id.to_owned(),
                root: root.dir().to_owned(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    if let Some(of) = &record.sandbox {
        return Err(SandboxError::Nested {
            sandbox: sandbox.to_owned(),
            id: id.to_owned(),
            of: of.clone(),
        });
    }
    match record.status() {
        Status::Stopped => Err(SandboxError::Stopped {
            sandbox: sandbox.to_owned(),
            id: id.to_owned(),
        }),
        Status::Creating => Err(SandboxError::Creating {
            sandbox: sandbox.to_owned(),
            id: id.to_owned(),
        }),
        Status::Created | Status::Running | Status::Paused => Ok(record),
    }
}

#[cfg(test)]
mod tests;
