//! Which VM a container belongs to, from what its caller put in
//! config.json.

use std::collections::HashMap;

use oci_spec::runtime::Spec;
use runvm_agent_api::validate_container_id;

use super::SandboxError;
use crate::state::{self, StateRoot};

/// containerd's CRI plugin.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI-O.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
pub const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";

/// What a container is to the VMs runvm runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// A pod's sandbox: it boots the pod's VM.
    Sandbox,
    /// It joins the VM of this sandbox (or standalone container).
    Member(String),
    /// A VM of its own.
    Standalone,
}

impl Role {
    pub fn owns_vm(&self) -> bool {
        !matches!(self, Role::Member(_))
    }
}

/// [`from_annotations`] of `spec`'s annotations.
pub fn annotated_role(spec: &Spec, id: &str) -> Result<Option<Role>, SandboxError> {
    let empty = HashMap::new();
    from_annotations(spec.annotations().as_ref().unwrap_or(&empty), id)
}

/// The role of container `id` from its annotations, else from namespace
/// paths that name the monitor of another runvm container under `root`.
pub fn classify(spec: &Spec, id: &str, root: &StateRoot) -> Result<Role, SandboxError> {
    if let Some(role) = annotated_role(spec, id)? {
        return Ok(role);
    }
    for pid in namespace_pids(spec) {
        if let Some(owner) = monitored_by(root, pid) {
            return Ok(Role::Member(owner));
        }
    }
    Ok(Role::Standalone)
}

/// The role the CRI annotations give (containerd's first), if any.
pub fn from_annotations(
    annotations: &HashMap<String, String>,
    id: &str,
) -> Result<Option<Role>, SandboxError> {
    for (kind, sandbox_id) in [
        (CRI_CONTAINER_TYPE, CRI_SANDBOX_ID),
        (CRIO_CONTAINER_TYPE, CRIO_SANDBOX_ID),
    ] {
        let Some(kind) = annotations.get(kind) else {
            continue;
        };
        match kind.as_str() {
            "sandbox" => return Ok(Some(Role::Sandbox)),
            "container" => {}
            // Unknown kinds: as if unmarked.
            _ => continue,
        }
        let Some(sandbox) = annotations.get(sandbox_id) else {
            return Err(SandboxError::Annotation {
                name: sandbox_id.to_owned(),
                problem: format!("container {id} is a pod's container but names no sandbox"),
            });
        };
        // The caller's text becomes a path under --root: checked first.
        validate_container_id(sandbox).map_err(|problem| SandboxError::BadId {
            sandbox: sandbox.clone(),
            id: id.to_owned(),
            problem,
        })?;
        if sandbox == id {
            return Ok(Some(Role::Sandbox));
        }
        return Ok(Some(Role::Member(sandbox.clone())));
    }
    Ok(None)
}

/// Whether `spec` is a podman pod's infra container: podman's
/// (`io.container.manager: libpod`) running its infra command, `catatonit
/// -P`. Nothing else marks it, and its members name it only by namespace
/// paths, once it runs; it is sized as a pod's sandbox so that they have
/// room.
pub fn is_podman_infra(spec: &Spec) -> bool {
    let libpod = spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get("io.container.manager"))
        .is_some_and(|manager| manager == "libpod");
    let args = spec
        .process()
        .as_ref()
        .and_then(|p| p.args().clone())
        .unwrap_or_default();
    let infra_command = match args.as_slice() {
        [program, flag] => program.rsplit('/').next() == Some("catatonit") && flag == "-P",
        _ => false,
    };
    libpod && infra_command
}

/// The pids named by `/proc/<pid>/ns/<type>` paths in linux.namespaces.
pub fn namespace_pids(spec: &Spec) -> Vec<i32> {
    let Some(namespaces) = spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()) else {
        return Vec::new();
    };
    let mut pids: Vec<i32> = namespaces
        .iter()
        .filter_map(|ns| ns.path().as_ref())
        .filter_map(|path| proc_pid(path.to_str()?))
        .collect();
    pids.dedup();
    pids
}

fn proc_pid(path: &str) -> Option<i32> {
    proc_namespace(path).map(|(pid, _)| pid)
}

/// The pid and namespace name of a `/proc/<pid>/ns/<name>` path.
pub fn proc_namespace(path: &str) -> Option<(i32, &str)> {
    let rest = path.strip_prefix("/proc/")?;
    let (pid, rest) = rest.split_once('/')?;
    let ns = rest.strip_prefix("ns/")?;
    if ns.is_empty() || ns.contains('/') {
        return None;
    }
    let pid = pid.parse().ok().filter(|pid| *pid > 0)?;
    Some((pid, ns))
}

/// The record of the runvm container under `root` whose live monitor is
/// `pid`, if any.
pub fn monitored(root: &StateRoot, pid: i32) -> Option<state::Record> {
    let ids = root.ids().ok()?;
    ids.iter()
        .filter_map(|id| state::peek(root, id).ok())
        .find(|record| record.live_pid() == pid)
}

/// The VM owner whose VM the live monitor `pid` is in, if `pid` is the
/// monitor of a runvm container under `root`.
fn monitored_by(root: &StateRoot, pid: i32) -> Option<String> {
    monitored(root, pid).map(|record| record.sandbox.unwrap_or(record.id))
}
