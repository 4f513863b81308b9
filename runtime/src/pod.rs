//! A pod owned in-process: for a front end that is itself long-lived and
//! holds the pod's VM (the containerd shim, one process per pod), rather
//! than leaving a monitor process behind per container as the runc
//! command line does (see [`crate::monitor`]).
//!
//! The pieces are the runc CLI's: [`MicroVm`] with its share, and
//! [`Sandbox`] for binding each container into the share and letting it
//! go. What this adds is the bookkeeping an owner needs when it can be
//! SIGKILLed: `<root>/<pod>/owner.json` names the owning process, the VMM
//! and virtiofsd (pids with start times), so that [`clean_up`], run by
//! another process after the owner died, ends exactly those and removes
//! the pod's directory. The VM's own directory is `<root>/<pod>/vm`
//! ([`Home`]).

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::agent_client::AgentClient;
use crate::assets::{AssetError, Assets};
use crate::bundle::Bundle;
use crate::deadlines;
use crate::sandbox::namespaces::{shared_namespaces_by, PidOwner};
use crate::sandbox::{Home, Role, Sandbox, SandboxError, VmSize};
use crate::share;
use crate::state::{self, HostProcess, StateError, StateRoot};
use crate::vm::{MicroVm, VmError, VmSpec};

pub use crate::sandbox::Prepared;

/// How long [`clean_up`] waits for the processes it killed.
const KILL_PATIENCE: Duration = Duration::from_secs(10);
const OWNER_FILE: &str = "owner.json";

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Assets(#[from] AssetError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("invalid pod id {id:?}: {problem}")]
    BadId { id: String, problem: String },
    #[error("pod {id}: {problem}")]
    Cleanup { id: String, problem: String },
}

/// Who holds a pod's VM, for [`clean_up`].
#[derive(Debug, Default, Serialize, Deserialize)]
struct Owner {
    owner: Option<HostProcess>,
    helpers: Vec<HostProcess>,
}

/// A running pod VM and the containers bound into it.
pub struct Pod {
    home: Home,
    sandbox: Sandbox,
    vmm: u32,
}

/// The pod's directory under `root`, its id checked.
fn home(root: &Path, id: &str) -> Result<Home, PodError> {
    runvm_agent_api::validate_container_id(id).map_err(|problem| PodError::BadId {
        id: id.to_owned(),
        problem,
    })?;
    Ok(Home::named(root, id))
}

impl Pod {
    /// Boots pod `id`'s VM of `size` with its share, its directory
    /// `<root>/<id>` (which must not exist yet), and waits for the agent.
    /// The VMM and virtiofsd die with the calling thread (see
    /// [`MicroVm`]): call it from a thread that lives as long as the pod.
    pub async fn boot(root: &StateRoot, id: &str, size: VmSize) -> Result<Pod, PodError> {
        let home = home(root.dir(), id)?;
        let assets = Assets::locate()?;
        let spec = VmSpec::with_share(assets, size);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(home.dir())
            .map_err(|source| VmError::Directory {
                path: home.dir().to_owned(),
                source,
            })?;
        let booted = async {
            let mut vm = MicroVm::boot_logged(&spec, &home.vm_dir(), Some(&home.vmm_log()))?;
            let agent = vm.connect_agent(deadlines::BOOT).await?;
            Ok::<_, PodError>(Sandbox::new(root.clone(), home.clone(), vm, agent))
        }
        .await;
        let mut pod = match booted {
            Ok(sandbox) => Pod {
                home,
                sandbox,
                vmm: 0,
            },
            Err(e) => {
                // The VM went with its value; its log and the directory go too.
                let _ = fs::remove_dir_all(home.dir());
                return Err(e);
            }
        };
        let owner = Owner {
            owner: HostProcess::current(),
            helpers: pod.sandbox.helpers().await,
        };
        pod.vmm = owner.helpers.first().map_or(0, |vmm| vmm.pid as u32);
        let text = serde_json::to_vec(&owner).unwrap_or_default();
        state::write_atomically(&pod.home.dir().join(OWNER_FILE), &text)?;
        Ok(pod)
    }

    pub fn id(&self) -> &str {
        &self.home.sandbox
    }

    /// The host process that stands for the VM (the VMM's).
    pub fn vmm_pid(&self) -> u32 {
        self.vmm
    }

    pub fn agent(&self) -> &AgentClient {
        self.sandbox.agent()
    }

    /// The VMM and virtiofsd.
    pub async fn helpers(&self) -> Vec<HostProcess> {
        self.sandbox.helpers().await
    }

    /// Binds container `id`'s rootfs and volumes from `bundle` into the
    /// VM's share; what to create it with. A member of a CRI pod (by its
    /// annotations) goes under its sandbox's pod cgroup and shares the
    /// namespaces its config.json names by the VMM's pid, which is the
    /// pid the pod's containers are reported with, so the sandbox's.
    pub async fn add(&self, id: &str, bundle: &Bundle) -> Result<Prepared, PodError> {
        let sandbox = match crate::sandbox::annotated_role(&bundle.spec, id)? {
            Some(Role::Member(sandbox)) => sandbox,
            _ => return Ok(self.sandbox.prepare(id, bundle).await?),
        };
        let vmm = i32::try_from(self.vmm).unwrap_or(0);
        let shared = shared_namespaces_by(&bundle.spec, &sandbox, id, |pid| {
            (vmm != 0 && pid == vmm).then(|| PidOwner {
                container: sandbox.clone(),
                vm: sandbox.clone(),
            })
        })?;
        Ok(self
            .sandbox
            .prepare_member(id, bundle, &sandbox, shared)
            .await?)
    }

    /// Container `id` leaves the VM: deleted in the guest, unbound.
    pub async fn remove(&self, id: &str) -> Result<(), PodError> {
        Ok(self.sandbox.release(id).await?)
    }

    /// Stops the VM and removes the pod's directory.
    pub async fn shut_down(self) {
        let Pod { home, sandbox, .. } = self;
        sandbox.shut_down().await;
        remove_home(&home);
    }
}

/// After the owner of pod `id` under `root` is gone: ends the VMM and
/// virtiofsd it recorded (if they still run) and removes the pod's
/// directory. A pod whose owner still runs is left alone (`false`); one
/// that does not exist is no error.
pub fn clean_up(root: &Path, id: &str) -> Result<bool, PodError> {
    let home = home(root, id)?;
    if !home.dir().exists() {
        return Ok(true);
    }
    let owner: Owner = fs::read(home.dir().join(OWNER_FILE))
        .ok()
        .and_then(|text| serde_json::from_slice(&text).ok())
        .unwrap_or_default();
    if owner.owner.is_some_and(|owner| owner.is_alive()) {
        return Ok(false);
    }
    let alive: Vec<HostProcess> = owner
        .helpers
        .into_iter()
        .filter(HostProcess::is_alive)
        .collect();
    for process in &alive {
        // SAFETY: kill(2) on a process matched with its start time.
        unsafe { libc::kill(process.pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + KILL_PATIENCE;
    while alive.iter().any(HostProcess::is_alive) {
        if Instant::now() >= deadline {
            return Err(PodError::Cleanup {
                id: id.to_owned(),
                problem: "its VMM or virtiofsd did not end after SIGKILL".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mounted = share::mounts_below(home.dir());
    if !mounted.is_empty() {
        return Err(PodError::Cleanup {
            id: id.to_owned(),
            problem: format!("refusing to remove its directory, mounts remain: {mounted:?}"),
        });
    }
    remove_home(&home);
    Ok(true)
}

fn remove_home(home: &Home) {
    // Never recurse into a mount (see MicroVm's Drop): the VM's directory
    // has gone with it unless something under it stayed mounted.
    if share::mounts_below(home.dir()).is_empty() {
        let _ = fs::remove_dir_all(home.dir());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_that_does_not_exist_is_cleaned_up_without_error() {
        let root = std::env::temp_dir().join(format!("runvm-pod-test-{}", std::process::id()));
        assert!(clean_up(&root, "nothing-here").expect("nothing to do"));
        assert!(matches!(
            clean_up(&root, "../escape"),
            Err(PodError::BadId { .. })
        ));
    }

    #[test]
    fn a_dead_owners_directory_is_removed_and_a_live_ones_kept() {
        let root = std::env::temp_dir().join(format!("runvm-pod-owner-{}", std::process::id()));
        let dir = root.join("pod1");
        fs::create_dir_all(&dir).expect("dir");
        let live = Owner {
            owner: HostProcess::current(),
            helpers: Vec::new(),
        };
        fs::write(
            dir.join(OWNER_FILE),
            serde_json::to_vec(&live).expect("json"),
        )
        .expect("write");
        assert!(!clean_up(&root, "pod1").expect("left alone"));
        assert!(dir.exists());
        let dead = Owner {
            owner: Some(HostProcess {
                pid: i32::MAX,
                start_time: 1,
            }),
            helpers: Vec::new(),
        };
        fs::write(
            dir.join(OWNER_FILE),
            serde_json::to_vec(&dead).expect("json"),
        )
        .expect("write");
        assert!(clean_up(&root, "pod1").expect("cleaned up"));
        assert!(!dir.exists());
        let _ = fs::remove_dir_all(&root);
    }
}
