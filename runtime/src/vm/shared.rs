//! A [`MicroVm`]'s share: what the VM's containers see of the host's
//! files (see [`crate::share`]).

use std::path::Path;

use runvm_agent_api::{RequestBody, ResponseBody, SHARE_TAG};

use super::{MicroVm, VmError};
use crate::agent_client::{AgentClient, ClientError};
use crate::share::{Share, ShareError};

impl MicroVm {
    /// The share's mounts: /proc/self/mountinfo in the share's own mount
    /// namespace (the host's mount table never shows them).
    pub fn share_mountinfo(&self) -> Result<String, VmError> {
        let share = self.share.as_ref().ok_or(VmError::NoShare)?;
        Ok(share.mountinfo().map_err(ShareError::Namespace)?)
    }

    /// virtiofsd's pid and its sandboxed child's, while they run.
    pub fn virtiofsd_pids(&self) -> Vec<u32> {
        self.share
            .as_ref()
            .map(Share::virtiofsd_pids)
            .unwrap_or_default()
    }

    /// Binds the bundle's root filesystem `rootfs` (a host directory) into
    /// the share for container `id`, read-only if `readonly` (the spec's
    /// `root.readonly`), and has the agent mount the share first if it has
    /// not yet. Returns the guest path to give `CreateContainer`.
    pub async fn share_rootfs(
        &mut self,
        agent: &AgentClient,
        id: &str,
        rootfs: &Path,
        readonly: bool,
    ) -> Result<String, VmError> {
        if self.share.is_none() {
            return Err(VmError::NoShare);
        }
        runvm_agent_api::validate_container_id(id)
            .map_err(|e| VmError::Share(ShareError::InvalidId(e)))?;
        if !self.share_mounted {
            let tag = SHARE_TAG.to_owned();
            match agent.call(RequestBody::MountShare { tag }).await? {
                ResponseBody::Done => self.share_mounted = true,
                other => return Err(ClientError::Unexpected(other).into()),
            }
        }
        let share = self.share.as_mut().ok_or(VmError::NoShare)?;
        Ok(share.add_rootfs(id, rootfs, readonly)?)
    }

    /// Binds a host file or directory that container `id` mounts into the
    /// share (after its rootfs); returns the guest path to mount from.
    pub fn share_bind(
        &mut self,
        id: &str,
        source: &crate::share::MountSource,
        flags: crate::share::BindFlags,
    ) -> Result<String, VmError> {
        let share = self.share.as_mut().ok_or(VmError::NoShare)?;
        Ok(share.add_bind(id, source, flags)?)
    }

    /// Unbinds container `id`'s rootfs from the share (after the container
    /// was deleted in the guest).
    pub fn unshare_rootfs(&mut self, id: &str) -> Result<(), VmError> {
        let share = self.share.as_mut().ok_or(VmError::NoShare)?;
        Ok(share.remove_rootfs(id)?)
    }
}
