//! The namespaces a member takes from the other containers of its VM.
//!
//! config.json names them by host paths, `/proc/<pid>/ns/<type>`, where
//! the pid is what runvm gave its caller as the container's pid: the
//! monitor's (containerd's CRI plugin and podman write their sandbox's,
//! or another container's, that way; CRI-O only its PID namespace). Such
//! a path is turned into "namespace TYPE of container ID"
//! ([`SharedNamespace`]), which the agent resolves to that container's
//! init in the guest; a guest pid is never sent, as it could be another
//! process's by the time it is used.
//!
//! - Network, IPC, UTS and PID namespaces are shared this way; the PID
//!   namespace only when the member's config.json names another
//!   container's (as CRI does for a pod-wide PID namespace).
//! - Mount and cgroup namespaces are always the member's own, whatever the
//!   path; user namespaces stay as [`crate::bundle::guest_spec`] makes
//!   them (a new one).
//! - CRI-O names a pod's network, IPC and UTS namespaces by the files it
//!   pinned them to (`<namespaces_dir>/ipcns/<uuid>`, ...), the same in
//!   the sandbox's config.json and its members'; only the PID namespace
//!   comes as a `/proc` path. A member's path that is the same file as the
//!   VM owner's config.json names for that type shares the VM owner's
//!   namespace ([`pinned_by_owner`]).
//! - A path that names no running runvm container under `--root` (a
//!   network namespace podman or CNI prepared, say, or a pid that is not
//!   runvm's) and no namespace of the VM owner's gives a new namespace of
//!   the kind, as before pods: the host's namespaces mean nothing in the
//!   guest.
//! - A path that names a runvm container of another VM, or a namespace of
//!   another type than its entry's, is an error: the member cannot have
//!   what it asks for.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use runvm_agent_api::oci::LinuxNamespaceType as GuestType;
use runvm_agent_api::SharedNamespace;

use super::role::{monitored, proc_namespace};
use super::SandboxError;
use crate::bundle::Bundle;
use crate::state::{self, StateRoot};

/// The guest's name of a namespace type that can be shared, and its name
/// under /proc/<pid>/ns; `None` for the types each container has alone.
fn shareable(kind: LinuxNamespaceType) -> Option<(GuestType, &'static str)> {
    match kind {
        LinuxNamespaceType::Network => Some((GuestType::Network, "net")),
        LinuxNamespaceType::Ipc => Some((GuestType::Ipc, "ipc")),
        LinuxNamespaceType::Uts => Some((GuestType::Uts, "uts")),
        LinuxNamespaceType::Pid => Some((GuestType::Pid, "pid")),
        _ => None,
    }
}

/// A container a host pid stands for: its id and the id of the VM's owner.
pub struct PidOwner {
    pub container: String,
    pub vm: String,
}

/// The namespaces member `id` of the VM owned by `sandbox` shares with the
/// containers of that VM, from the namespace paths of its `spec`, where
/// the pids are those of runvm's monitors under `root`, and the files are
/// those the VM owner's config.json names.
pub fn shared_namespaces(
    root: &StateRoot,
    spec: &Spec,
    sandbox: &str,
    id: &str,
) -> Result<Vec<SharedNamespace>, SandboxError> {
    let mut shared = shared_namespaces_by(spec, sandbox, id, |pid| {
        monitored(root, pid).map(|owner| PidOwner {
            vm: owner.sandbox.clone().unwrap_or_else(|| owner.id.clone()),
            container: owner.id,
        })
    })?;
    // The owner's bundle gone (or never readable): nothing to match, the
    // paths give new namespaces as any unknown path does.
    if let Some(owner) = state::peek(root, sandbox)
        .ok()
        .and_then(|record| Bundle::load(&record.bundle).ok())
    {
        shared.extend(pinned_by_owner(spec, &owner.spec, sandbox));
    }
    Ok(shared)
}

/// The namespaces `spec` names by a file (not a `/proc/<pid>/ns` path)
/// that is the one `owner_spec`, the spec of VM owner `owner`, names for
/// the same type: the owner's namespaces of those types.
pub fn pinned_by_owner(spec: &Spec, owner_spec: &Spec, owner: &str) -> Vec<SharedNamespace> {
    let paths = |spec: &Spec| -> Vec<(LinuxNamespaceType, std::path::PathBuf)> {
        let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone());
        namespaces
            .unwrap_or_default()
            .into_iter()
            .filter_map(|ns| Some((ns.typ(), ns.path().clone()?)))
            .filter(|(_, path)| path.to_str().and_then(proc_namespace).is_none())
            .collect()
    };
    let owners = paths(owner_spec);
    paths(spec)
        .into_iter()
        .filter_map(|(kind, path)| {
            let (typ, _) = shareable(kind)?;
            owners
                .iter()
                .any(|(owner_kind, owner_path)| *owner_kind == kind && same_file(&path, owner_path))
                .then(|| SharedNamespace {
                    typ,
                    container: owner.to_owned(),
                })
        })
        .collect()
}

/// Whether `a` and `b` are one file: one path, or one inode (a pinned
/// namespace reached by two paths).
fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// [`shared_namespaces`] for a front end with its own pids: `owner_of`
/// names the container a host pid stands for (the shim gives every
/// container of a pod the VMM's pid, which stands for the sandbox).
pub fn shared_namespaces_by(
    spec: &Spec,
    sandbox: &str,
    id: &str,
    owner_of: impl Fn(i32) -> Option<PidOwner>,
) -> Result<Vec<SharedNamespace>, SandboxError> {
    let Some(namespaces) = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()) else {
        return Ok(Vec::new());
    };
    let mut shared = Vec::new();
    for namespace in namespaces {
        let Some((typ, proc_name)) = shareable(namespace.typ()) else {
            continue;
        };
        let Some(path) = namespace.path().as_ref().and_then(|p| p.to_str()) else {
            continue;
        };
        let Some((pid, named)) = proc_namespace(path) else {
            continue;
        };
        let Some(owner) = owner_of(pid) else {
            continue;
        };
        let problem = |problem: String| SandboxError::Namespace {
            id: id.to_owned(),
            path: path.to_owned(),
            problem,
        };
        if named != proc_name {
            return Err(problem(format!(
                "it names a {named} namespace for the {proc_name} entry"
            )));
        }
        if owner.vm != sandbox {
            return Err(problem(format!(
                "it names container {}, which runs in the VM of {}, not in that of its sandbox {sandbox}",
                owner.container, owner.vm
            )));
        }
        if owner.container != id {
            shared.push(SharedNamespace {
                typ,
                container: owner.container,
            });
        }
    }
    Ok(shared)
}
