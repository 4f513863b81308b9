//! A pod owned in-process: for a front end that is itself long-lived and
//! holds the pod's VM (the containerd shim, one process per pod), rather
//! than leaving a monitor process behind per container as the runc
//! command line does (see [`crate::monitor`]).
//!
//! The pieces are the runc CLI's: [`crate::vm::MicroVm`] with its share, and
//! [`Sandbox`] for binding each container into the share and letting it
//! go. What this adds is the bookkeeping an owner needs when it can be
//! SIGKILLed: `<root>/<pod>/owner.json` names the owning process, the VMM
//! and virtiofsd (pids with start times), so that [`clean_up`], run by
//! another process after the owner died, ends exactly those and removes
//! the pod's directory. The VM's own directory is `<root>/<pod>/vm`
//! ([`Home`]).
//!
//! The pod's network is the runc path's (see [`crate::network`]): the
//! namespace the first container's config.json names (CNI's) is attached
//! before the VM boots, its taps handed to the VMM, and detached when the
//! pod ends; owner.json names it from before the attach, so [`clean_up`]
//! detaches it after a killed owner too.
//!
//! The pod's host cgroup is the runc path's too (see [`crate::host_cgroup`]):
//! the one the config.json of the container that boots the pod names
//! (its `linux.cgroupsPath`, in systemd's form when it looks like it,
//! [`host_cgroup::path::is_systemd_form`]), made before the VM boots with
//! that container's memory limit, the CPU limits set once the VM is up.
//! The owner stays outside; the VMM and virtiofsd are spawned into it
//! (see [`host_cgroup::entry`]). It is removed when the pod ends, and
//! owner.json names it, so [`clean_up`] removes it after a killed owner.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::agent_client::{AgentClient, ClientError};
use crate::assets::{AssetError, Assets};
use crate::bundle::Bundle;
use crate::host_cgroup::limits::CpuLimits;
use crate::host_cgroup::{self, CgroupError, HostCgroup, Limits};
use crate::network::{self, Attachment, NetworkError, NetworkNamespace};
use crate::sandbox::namespaces::{pinned_by_owner, shared_namespaces_by, PidOwner};
use crate::sandbox::{BootError, Booted, Home, Role, Sandbox, SandboxError, VmSize};
use crate::share;
use crate::state::{self, HostProcess, StateError, StateRoot};
use crate::vm::{VmError, VmSpec};
use runvm_agent_api::network::GuestNetwork;

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
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("container {id}: {}", network::HOST_NETWORK_REFUSED)]
    HostNetwork { id: String },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

impl From<BootError> for PodError {
    fn from(e: BootError) -> PodError {
        match e {
            BootError::Network(e) => PodError::Network(e),
            BootError::Vm(e) => PodError::Vm(e),
        }
    }
}

/// Who holds a pod's VM, for [`clean_up`].
#[derive(Debug, Default, Serialize, Deserialize)]
struct Owner {
    owner: Option<HostProcess>,
    helpers: Vec<HostProcess>,
    /// The network namespace attached for the VM.
    #[serde(default)]
    netns: Option<PathBuf>,
    /// The pod's host cgroup.
    #[serde(default)]
    cgroup: Option<HostCgroup>,
}

/// A running pod VM and the containers bound into it.
pub struct Pod {
    home: Home,
    sandbox: Sandbox,
    vmm: u32,
    /// What the guest is told of the pod's network: for the container
    /// that owns the pod's network namespace.
    guest_network: Option<GuestNetwork>,
    /// Dropped after the VM (field order): the taps outlive their VMM.
    _network: Option<Attachment>,
    /// Removed after the VM is gone (field order, or [`Pod::shut_down`]).
    cgroup: CgroupGuard,
    /// The container whose config.json named the cgroup.
    cgroup_owner: String,
    /// The config.json of the pod's sandbox container, once added: the
    /// namespace files it names (CRI-O's pinned ones) are the pod's.
    sandbox_spec: std::sync::OnceLock<Spec>,
}

/// Where the pod's host processes go: the host cgroup that the config.json
/// (`spec`) of the pod's first container (`container`) names.
pub struct HostCgroupOf<'a> {
    pub container: &'a str,
    pub spec: &'a Spec,
}

impl HostCgroupOf<'_> {
    /// The cgroup, made with the memory limit of a VM of `size`; the CPU
    /// limits to set once it has booted.
    fn make(&self, size: VmSize) -> Result<(HostCgroup, Limits), CgroupError> {
        let systemd = self
            .spec
            .linux()
            .as_ref()
            .and_then(|linux| linux.cgroups_path().as_deref())
            .is_some_and(|path| host_cgroup::path::is_systemd_form(&path.to_string_lossy()));
        let limits = Limits::for_vm(self.spec, size.memory_mib);
        let cgroup = HostCgroup::for_container(self.spec, self.container, systemd, limits.memory)?;
        Ok((cgroup, limits))
    }
}

/// The pod's host cgroup, removed when dropped: a pod dropped without
/// [`Pod::shut_down`] (its VM stopped by its own drop) leaves none.
struct CgroupGuard(Option<HostCgroup>);

impl CgroupGuard {
    /// Removes it now (waiting for what is left in it to leave, see
    /// [`HostCgroup::remove`]).
    async fn remove(mut self) -> Result<(), CgroupError> {
        let Some(cgroup) = self.0.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || cgroup.remove())
            .await
            .unwrap_or(Ok(()))
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if let Some(cgroup) = self.0.take() {
            let _ = cgroup.remove();
        }
    }
}

/// The network namespace container `id` of `bundle` asks for, as the runc
/// path has it: one the caller prepared (a relative path is the bundle's),
/// or none for a new, empty one; the host's network is refused.
pub fn network_of(id: &str, bundle: &Bundle) -> Result<Option<PathBuf>, PodError> {
    match network::network_namespace(&bundle.spec) {
        NetworkNamespace::Host => Err(PodError::HostNetwork { id: id.to_owned() }),
        NetworkNamespace::New => Ok(None),
        NetworkNamespace::Path(path) => Ok(Some(bundle.dir.join(path))),
    }
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
    /// `<root>/<id>` (which must not exist yet), and waits for the agent;
    /// the interfaces of the network namespace at `netns` (see
    /// [`network_of`]) become the VM's; its host processes go into the
    /// host cgroup `cgroup` names. The VMM and virtiofsd die with the
    /// calling thread (see [`crate::vm::MicroVm`]): call it from a thread
    /// that lives as long as the pod.
    pub async fn boot(
        root: &StateRoot,
        id: &str,
        size: VmSize,
        netns: Option<&Path>,
        cgroup: Option<HostCgroupOf<'_>>,
    ) -> Result<Pod, PodError> {
        let home = home(root.dir(), id)?;
        let spec = VmSpec::with_share(Assets::locate()?, size);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(home.dir())
            .map_err(|source| VmError::Directory {
                path: home.dir().to_owned(),
                source,
            })?;
        let made = match cgroup.as_ref().map(|of| of.make(size)).transpose() {
            Ok(made) => made,
            Err(e) => {
                let _ = fs::remove_dir_all(home.dir());
                return Err(e.into());
            }
        };
        let cgroup_owner = cgroup.as_ref().map_or("", |of| of.container).to_owned();
        let (cgroup, limits) = made.unzip();
        let cgroup = CgroupGuard(cgroup);
        let mut owner = Owner {
            owner: HostProcess::current(),
            helpers: Vec::new(),
            netns: netns.map(Path::to_owned),
            cgroup: cgroup.0.clone(),
        };
        let entry = cgroup.0.as_ref().map(HostCgroup::entry);
        let booted = async {
            // Named before they are made or attached: a killed owner's
            // clean-up finds them.
            write_owner(&home, &owner)?;
            Ok::<_, PodError>(crate::sandbox::boot(root, home.clone(), &spec, netns, entry).await?)
        }
        .await;
        let booted = match booted {
            Ok(booted) => booted,
            Err(e) => {
                // The VM and the attachment went with their values; the
                // cgroup, the VM's log and the directory go too.
                let _ = cgroup.remove().await;
                let _ = fs::remove_dir_all(home.dir());
                return Err(e);
            }
        };
        let guest_network = booted.guest_network();
        let Booted {
            sandbox,
            network: attachment,
        } = booted;
        owner.helpers = sandbox.helpers().await;
        let pod = Pod {
            home,
            vmm: owner.helpers.first().map_or(0, |vmm| vmm.pid as u32),
            sandbox,
            guest_network,
            _network: attachment,
            cgroup,
            cgroup_owner,
            sandbox_spec: std::sync::OnceLock::new(),
        };
        // Once the VM is up: a CPU quota need not slow its boot down.
        let limited = match (&pod.cgroup.0, limits) {
            (Some(cgroup), Some(limits)) => cgroup.set_cpu(&limits.cpu),
            _ => Ok(()),
        };
        if let Err(e) = write_owner(&pod.home, &owner).and(limited.map_err(PodError::from)) {
            let _ = pod.shut_down().await;
            return Err(e);
        }
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

    /// A connection of its own to the VM's agent, for a long poll such as
    /// `WaitEvent` that must not keep the pod alive: it fails once the VM
    /// has stopped.
    pub async fn connect_agent(&self) -> Result<AgentClient, ClientError> {
        AgentClient::connect(&self.home.vsock_socket()).await
    }

    /// The pod's network as the guest is to set it up: passed on the
    /// create of the container that booted the pod, which owns the pod's
    /// network namespace in the guest. None without interfaces.
    pub fn guest_network(&self) -> Option<GuestNetwork> {
        self.guest_network.clone()
    }

    /// The VMM and virtiofsd.
    pub async fn helpers(&self) -> Vec<HostProcess> {
        self.sandbox.helpers().await
    }

    /// Binds container `id`'s rootfs and volumes from `bundle` into the
    /// VM's share; what to create it with. A member of a CRI pod (by its
    /// annotations) goes under its sandbox's pod cgroup and shares the
    /// namespaces its config.json names by the VMM's pid, which is the
    /// pid the pod's containers are reported with, so the sandbox's, or
    /// by the same file as the sandbox's config.json (CRI-O's pinned
    /// namespaces).
    pub async fn add(&self, id: &str, bundle: &Bundle) -> Result<Prepared, PodError> {
        network_of(id, bundle)?;
        let sandbox = match crate::sandbox::annotated_role(&bundle.spec, id)? {
            Some(Role::Member(sandbox)) => sandbox,
            role => {
                if role == Some(Role::Sandbox) {
                    let _ = self.sandbox_spec.set(bundle.spec.clone());
                }
                return Ok(self.sandbox.prepare(id, bundle).await?);
            }
        };
        let vmm = i32::try_from(self.vmm).unwrap_or(0);
        let mut shared = shared_namespaces_by(&bundle.spec, &sandbox, id, |pid| {
            (vmm != 0 && pid == vmm).then(|| PidOwner {
                container: sandbox.clone(),
                vm: sandbox.clone(),
            })
        })?;
        if let Some(sandbox_spec) = self.sandbox_spec.get() {
            shared.extend(pinned_by_owner(&bundle.spec, sandbox_spec, &sandbox));
        }
        Ok(self
            .sandbox
            .prepare_member(id, bundle, &sandbox, shared)
            .await?)
    }

    /// After an update of container `id`'s resources in the guest: if its
    /// config.json named the pod's host cgroup, the VM as a whole gets the
    /// new CPU limits there, as on the runc path (the memory stays: the
    /// VM's RAM was fixed when it booted).
    pub fn update_host_cpu(
        &self,
        id: &str,
        resources: &runvm_agent_api::oci::LinuxResources,
    ) -> Result<(), PodError> {
        let cpu = CpuLimits::of_update(resources);
        match (&self.cgroup.0, cpu) {
            (Some(cgroup), Some(cpu)) if id == self.cgroup_owner => Ok(cgroup.set_cpu(&cpu)?),
            _ => Ok(()),
        }
    }

    /// Container `id` leaves the VM: deleted in the guest, unbound.
    pub async fn remove(&self, id: &str) -> Result<(), PodError> {
        Ok(self.sandbox.release(id).await?)
    }

    /// Stops the VM, detaches the pod's network and removes the pod's
    /// host cgroup and directory.
    pub async fn shut_down(self) -> Result<(), PodError> {
        let Pod {
            home,
            sandbox,
            _network: attachment,
            cgroup,
            ..
        } = self;
        sandbox.shut_down().await;
        let detached = attachment.map_or(Ok(()), Attachment::detach);
        let removed = cgroup.remove().await;
        remove_home(&home);
        detached?;
        Ok(removed?)
    }
}

fn write_owner(home: &Home, owner: &Owner) -> Result<(), PodError> {
    let text = serde_json::to_vec(owner).unwrap_or_default();
    Ok(state::write_atomically(
        &home.dir().join(OWNER_FILE),
        &text,
    )?)
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
    if !HostProcess::kill_all(&owner.helpers, KILL_PATIENCE) {
        return Err(PodError::Cleanup {
            id: id.to_owned(),
            problem: "its VMM or virtiofsd did not end after SIGKILL".into(),
        });
    }
    if let Some(netns) = &owner.netns {
        network::detach(netns)?;
    }
    // What is left in it (the VMM's jailed child, virtiofsd's sandboxed
    // one, or all of them when the owner died before it named them) is
    // the pod's and goes with it.
    if let Some(cgroup) = &owner.cgroup {
        cgroup.remove()?;
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
    fn the_network_is_the_runc_paths() {
        use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, LinuxNamespaceType, Spec};
        let bundle = |path: Option<&str>| {
            let mut namespace = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
            if let Some(path) = path {
                namespace = namespace.path(path);
            }
            let namespaces = path.map_or(Vec::new(), |_| vec![namespace.build().expect("ns")]);
            let mut spec = Spec::default();
            let linux = LinuxBuilder::default().namespaces(namespaces).build();
            spec.set_linux(Some(linux.expect("linux")));
            Bundle {
                dir: PathBuf::from("/b"),
                spec,
            }
        };
        assert!(matches!(
            network_of("c", &bundle(None)),
            Err(PodError::HostNetwork { .. })
        ));
        let host = network_of("c", &bundle(None)).unwrap_err().to_string();
        assert!(host.contains("host networking"), "{host}");
        assert_eq!(
            network_of("c", &bundle(Some("/run/netns/cni-1"))).ok(),
            Some(Some(PathBuf::from("/run/netns/cni-1")))
        );
        assert_eq!(
            network_of("c", &bundle(Some("ns"))).ok(),
            Some(Some(PathBuf::from("/b/ns")))
        );
    }

    #[test]
    fn a_pod_that_does_not_exist_is_cleaned_up_without_error() {
        let root = std::env::temp_dir().join(format!("runvm-pod-test-{}", std::process::id()));
        assert!(clean_up(&root, "nothing-here").expect("nothing to do"));
        assert!(matches!(
            clean_up(&root, "../escape"),
            Err(PodError::BadId { .. })
        ));
    }

    /// An owner that is no longer there, with `cgroup`.
    fn dead_owner(cgroup: Option<HostCgroup>) -> Owner {
        Owner {
            owner: Some(HostProcess {
                pid: i32::MAX,
                start_time: 1,
            }),
            helpers: Vec::new(),
            netns: None,
            cgroup,
        }
    }

    #[test]
    fn a_dead_owners_directory_is_removed_and_a_live_ones_kept() {
        let root = std::env::temp_dir().join(format!("runvm-pod-owner-{}", std::process::id()));
        let dir = root.join("pod1");
        fs::create_dir_all(&dir).expect("dir");
        let live = Owner {
            owner: HostProcess::current(),
            helpers: Vec::new(),
            netns: None,
            cgroup: None,
        };
        fs::write(
            dir.join(OWNER_FILE),
            serde_json::to_vec(&live).expect("json"),
        )
        .expect("write");
        assert!(!clean_up(&root, "pod1").expect("left alone"));
        assert!(dir.exists());
        let dead = dead_owner(None);
        fs::write(
            dir.join(OWNER_FILE),
            serde_json::to_vec(&dead).expect("json"),
        )
        .expect("write");
        assert!(clean_up(&root, "pod1").expect("cleaned up"));
        assert!(!dir.exists());
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn a_dead_owners_cgroup_goes_with_what_is_left_in_it() {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid(2) has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to make cgroups");
            return;
        }
        let root = std::env::temp_dir().join(format!("runvm-pod-cgroup-{}", std::process::id()));
        let dir = root.join("pod2");
        fs::create_dir_all(&dir).expect("dir");
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"cgroupsPath": format!("runvm-unit-pod-{}/pod2", std::process::id())}
        }))
        .expect("spec");
        let of = HostCgroupOf {
            container: "pod2",
            spec: &spec,
        };
        let (cgroup, _) = of
            .make(VmSize {
                memory_mib: 128,
                vcpus: 1,
            })
            .expect("made");
        // A helper the dead owner never named, as after a kill mid-boot.
        let entry = cgroup.entry();
        let mut command = std::process::Command::new("sleep");
        command.arg("60");
        // SAFETY: join_self only opens, writes and closes.
        unsafe { command.pre_exec(move || entry.join_self()) };
        let mut left = command.spawn().expect("sleep");
        let dead = dead_owner(Some(cgroup.clone()));
        fs::write(
            dir.join(OWNER_FILE),
            serde_json::to_vec(&dead).expect("json"),
        )
        .expect("write");
        assert!(clean_up(&root, "pod2").expect("cleaned up"));
        let status = left.wait().expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "killed with its cgroup: {status}"
        );
        for made in &cgroup.dirs {
            let parent = made.path.parent().expect("a parent");
            assert!(!parent.exists(), "{} is left", parent.display());
        }
        assert!(!dir.exists());
        let _ = fs::remove_dir_all(&root);
    }
}
