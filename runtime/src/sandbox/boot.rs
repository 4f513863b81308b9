//! Booting a VM that holds a sandbox: the runc path's VM owner (its
//! monitor) and an in-process pod ([`crate::pod::Pod`]) boot it alike.

use std::path::Path;

use runvm_agent_api::network::GuestNetwork;

use super::{Home, Sandbox};
use crate::deadlines;
use crate::host_cgroup::Entry;
use crate::network::{Attachment, NetworkError};
use crate::state::StateRoot;
use crate::vm::{MicroVm, VmError, VmSpec};

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Vm(#[from] VmError),
}

/// A booted VM and the pod network attached for it.
pub struct Booted {
    pub sandbox: Sandbox,
    /// Detached when dropped unless kept (see [`Attachment`]); a field
    /// after the sandbox, so the taps outlive their VMM.
    pub network: Option<Attachment>,
}

impl Booted {
    /// The pod's network as the guest is to set it up; none without
    /// interfaces (a namespace with only `lo` gives the guest no device
    /// and nothing to do).
    pub fn guest_network(&self) -> Option<GuestNetwork> {
        self.network
            .as_ref()
            .map(|attachment| attachment.network.for_guest())
            .filter(|network| !network.interfaces.is_empty())
    }
}

/// Boots a VM of `spec` in `home` (its directory exists) and waits for
/// its agent. The network namespace at `netns` is attached first and the
/// VM gets its interfaces' taps. With `cgroup`, the VM's host processes
/// are spawned into that host cgroup (for a caller that is not in it
/// itself). On failure what was made is undone.
pub async fn boot(
    root: &StateRoot,
    home: Home,
    spec: &VmSpec,
    netns: Option<&Path>,
    cgroup: Option<Entry>,
) -> Result<Booted, BootError> {
    // On failure dropped after the VM that uses its taps.
    let network = netns.map(Attachment::attach).transpose()?;
    let taps = match &network {
        Some(network) => network.vm_taps()?,
        None => Vec::new(),
    };
    let vm_dir = home.vm_dir();
    let mut vm = MicroVm::boot_with_taps(spec, &vm_dir, Some(&home.vmm_log()), taps, cgroup)?;
    let agent = vm.connect_agent(deadlines::BOOT).await?;
    Ok(Booted {
        sandbox: Sandbox::new(root.clone(), home, vm, agent),
        network,
    })
}
