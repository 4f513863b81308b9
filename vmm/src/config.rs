//! What the caller asks of a VM, and the checks that can be made before
//! anything is created.

use std::path::PathBuf;

use crate::error::Error;
use crate::host_profile::HostProfileChoice;

/// Below this the guest kernel cannot even unpack its initramfs; refuse
/// early with a clear message instead of letting the guest panic.
pub const MIN_MEMORY_MIB: u64 = 64;
/// An upper bound that catches typos (`--memory 1280000`) before the host
/// is asked for the memory.
pub const MAX_MEMORY_MIB: u64 = 256 * 1024;
/// The MP table gives each vCPU an 8-bit APIC id; the guest kernel is built
/// with a small NR_CPUS. 32 is plenty for a pod and keeps both honest.
pub const MAX_VCPUS: u8 = 32;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH when the vmlinux has a PVH note, else the 64-bit boot protocol.
    Auto,
    /// 32-bit protected-mode entry through the PVH ELF note.
    Pvh,
    /// The Linux 64-bit boot protocol: long mode, `boot_params` in RSI.
    Linux64,
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialOutput {
    Stdout,
    File(PathBuf),
    None,
}

/// A virtio-vsock device backed by host Unix sockets (hybrid vsock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id: 3 or more, below u32::MAX (VMADDR_CID_ANY).
    pub guest_cid: u64,
    /// Host clients connect here; guest connections to port P go to
    /// `<socket>_P`.
    pub socket: PathBuf,
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Uncompressed ELF `vmlinux`.
    pub kernel: PathBuf,
    /// Optional initramfs (cpio, compressed or not).
    pub initrd: Option<PathBuf>,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// Appended to the kernel command line after runvm's own parameters.
    pub extra_cmdline: Vec<String>,
    /// Handed to the guest's init (after ` -- ` on the command line).
    pub init_args: Vec<String>,
    pub serial: SerialOutput,
    pub vsock: Option<VsockConfig>,
    pub host_profile: HostProfileChoice,
    pub boot_protocol: BootProtocol,
}

impl VmConfig {
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            memory_mib: 128,
            vcpus: 1,
            extra_cmdline: Vec::new(),
            init_args: Vec::new(),
            serial: SerialOutput::Stdout,
            vsock: None,
            host_profile: HostProfileChoice::Auto,
            boot_protocol: BootProtocol::Auto,
        }
    }

    /// Checks that need no file and no KVM.
    pub fn validate(&self) -> Result<(), Error> {
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(Error::MemoryTooSmall {
                requested_mib: self.memory_mib,
                minimum_mib: MIN_MEMORY_MIB,
            });
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(Error::MemoryTooLarge {
                requested_mib: self.memory_mib,
                maximum_mib: MAX_MEMORY_MIB,
            });
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(Error::InvalidVcpuCount {
                requested: self.vcpus,
                maximum: MAX_VCPUS,
            });
        }
        for arg in self.extra_cmdline.iter().chain(&self.init_args) {
            if arg.is_empty() || arg.chars().any(|c| c.is_whitespace() || c == '\0') {
                return Err(Error::InvalidCmdlineArgument(arg.clone()));
            }
        }
        if self.init_args.iter().any(|a| a == "--") {
            return Err(Error::InvalidCmdlineArgument("--".into()));
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < 3 || vsock.guest_cid >= u64::from(u32::MAX) {
                return Err(Error::InvalidGuestCid(vsock.guest_cid));
            }
        }
        Ok(())
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert!(VmConfig::new("/vmlinux").validate().is_ok());
    }

    #[test]
    fn too_little_memory_is_refused_with_the_minimum() {
        let mut config = VmConfig::new("/vmlinux");
        config.memory_mib = 16;
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("16 MiB"), "{message}");
        assert!(message.contains("64 MiB"), "{message}");
    }

    #[test]
    fn vcpu_count_is_bounded() {
        let mut config = VmConfig::new("/vmlinux");
        config.vcpus = 0;
        assert!(config.validate().is_err());
        config.vcpus = MAX_VCPUS + 1;
        assert!(config.validate().is_err());
        config.vcpus = MAX_VCPUS;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn guest_cid_must_be_a_guest_address() {
        let mut config = VmConfig::new("/vmlinux");
        for (cid, valid) in [(2, false), (3, true), (u64::from(u32::MAX), false)] {
            config.vsock = Some(VsockConfig {
                guest_cid: cid,
                socket: "/run/v.sock".into(),
            });
            assert_eq!(config.validate().is_ok(), valid, "cid {cid}");
        }
    }

    #[test]
    fn cmdline_arguments_cannot_smuggle_separators() {
        let mut config = VmConfig::new("/vmlinux");
        config.extra_cmdline = vec!["a b".into()];
        assert!(config.validate().is_err());
        config.extra_cmdline = vec![];
        config.init_args = vec!["--".into()];
        assert!(config.validate().is_err());
    }
}
