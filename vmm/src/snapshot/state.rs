//! What a snapshot records of a machine: the serialisable state of the
//! VM, its vCPUs and its devices. KVM's own structures are kept as KVM
//! gives them (kvm-bindings' serde form); KVM checks them again when they
//! are set. Every count is checked on load ([`MachineState::check`]).

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use serde::{Deserialize, Serialize};

use crate::config::{is_valid_fs_tag, MAX_FS_TAG_BYTES, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use crate::devices::virtio::mmio::TransportState;
use crate::devices::SerialState;
use crate::memory::MAX_VIRTIO_DEVICES;

/// More MSRs than KVM knows of on any host today.
pub const MAX_MSRS: usize = 1024;

#[derive(Serialize, Deserialize)]
pub struct MachineState {
    pub memory_mib: u64,
    /// The KVM paravirtual features hidden from the guest's CPUID (the
    /// host profile's choice): the restored guest must see the same CPU.
    pub hidden_kvm_features: u32,
    pub vm: VmState,
    pub vcpus: Vec<VcpuState>,
    pub serial: SerialState,
    /// In virtio-mmio slot order.
    pub devices: Vec<DeviceState>,
}

/// The in-kernel interrupt controllers, the PIT and kvmclock.
#[derive(Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub fpu: FpuState,
    /// None where KVM_GET_XSAVE / KVM_GET_XCRS are not offered.
    pub xsave: Option<kvm_xsave>,
    pub xcrs: Option<kvm_xcrs>,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    pub msrs: Vec<kvm_msr_entry>,
}

/// kvm_fpu, which kvm-bindings does not serialise.
#[derive(Serialize, Deserialize)]
pub struct FpuState {
    pub fpr: [[u8; 16]; 8],
    pub fcw: u16,
    pub fsw: u16,
    pub ftwx: u8,
    pub last_opcode: u16,
    pub last_ip: u64,
    pub last_dp: u64,
    pub xmm: [[u8; 16]; 16],
    pub mxcsr: u32,
}

impl From<&kvm_fpu> for FpuState {
    fn from(fpu: &kvm_fpu) -> FpuState {
        FpuState {
            fpr: fpu.fpr,
            fcw: fpu.fcw,
            fsw: fpu.fsw,
            ftwx: fpu.ftwx,
            last_opcode: fpu.last_opcode,
            last_ip: fpu.last_ip,
            last_dp: fpu.last_dp,
            xmm: fpu.xmm,
            mxcsr: fpu.mxcsr,
        }
    }
}

impl From<&FpuState> for kvm_fpu {
    fn from(fpu: &FpuState) -> kvm_fpu {
        kvm_fpu {
            fpr: fpu.fpr,
            fcw: fpu.fcw,
            fsw: fpu.fsw,
            ftwx: fpu.ftwx,
            last_opcode: fpu.last_opcode,
            last_ip: fpu.last_ip,
            last_dp: fpu.last_dp,
            xmm: fpu.xmm,
            mxcsr: fpu.mxcsr,
            ..Default::default()
        }
    }
}

/// Which device sits in a virtio-mmio slot. Only devices whose whole state
/// the VMM holds can be saved: a virtio-fs device served by a backend
/// (virtiofsd holds its queues) and a network card with a tap (frames in
/// flight) cannot, and a snapshot of a VM with them is refused (see the
/// module comment of [`crate::snapshot`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceKind {
    /// The read-only root disk; restored onto an image of this size.
    RootDisk { sectors: u64 },
    /// The vsock device; restored with the new VM's CID and socket.
    Vsock,
    /// A template's virtio-fs device, saved before any backend served it;
    /// restored bound to the backend given for its tag.
    Fs { tag: String },
    /// A template's network card, saved before it had a tap; restored
    /// bound to the tap of the `--net` given in its place (in order).
    Net,
}

#[derive(Serialize, Deserialize)]
pub struct DeviceState {
    pub kind: DeviceKind,
    pub transport: TransportState,
}

impl MachineState {
    /// The checks that need neither KVM nor the devices: counts and sizes
    /// within the VMM's own limits.
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(format!(
                "guest memory of {} MiB is outside {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB} MiB",
                self.memory_mib
            ));
        }
        if self.vcpus.is_empty() || self.vcpus.len() > usize::from(MAX_VCPUS) {
            return Err(format!(
                "{} vCPUs: between 1 and {MAX_VCPUS} are allowed",
                self.vcpus.len()
            ));
        }
        if let Some((id, vcpu)) = self
            .vcpus
            .iter()
            .enumerate()
            .find(|(_, vcpu)| vcpu.msrs.len() > MAX_MSRS)
        {
            return Err(format!(
                "vCPU {id} has {} MSRs, more than {MAX_MSRS}",
                vcpu.msrs.len()
            ));
        }
        if self.devices.len() > MAX_VIRTIO_DEVICES {
            return Err(format!(
                "{} virtio devices, more than {MAX_VIRTIO_DEVICES}",
                self.devices.len()
            ));
        }
        let disks = self
            .devices
            .iter()
            .filter(|d| matches!(d.kind, DeviceKind::RootDisk { .. }))
            .count();
        let vsocks = self
            .devices
            .iter()
            .filter(|d| d.kind == DeviceKind::Vsock)
            .count();
        if disks > 1 || vsocks > 1 {
            return Err("more than one root disk or vsock device".into());
        }
        check_fs_tags(&self.fs_tags())
    }

    /// The tags of the virtio-fs devices, in slot order.
    pub fn fs_tags(&self) -> Vec<&str> {
        self.devices
            .iter()
            .filter_map(|d| match &d.kind {
                DeviceKind::Fs { tag } => Some(tag.as_str()),
                _ => None,
            })
            .collect()
    }

    pub fn vcpu_count(&self) -> u8 {
        // check() bounds the count by MAX_VCPUS.
        u8::try_from(self.vcpus.len()).unwrap_or(u8::MAX)
    }

    pub fn root_disk_sectors(&self) -> Option<u64> {
        self.devices.iter().find_map(|d| match d.kind {
            DeviceKind::RootDisk { sectors } => Some(sectors),
            DeviceKind::Vsock | DeviceKind::Fs { .. } | DeviceKind::Net => None,
        })
    }

    pub fn has_vsock(&self) -> bool {
        self.devices.iter().any(|d| d.kind == DeviceKind::Vsock)
    }

    /// How many network cards the VM has.
    pub fn net_count(&self) -> usize {
        self.devices
            .iter()
            .filter(|d| d.kind == DeviceKind::Net)
            .count()
    }
}

/// Recorded virtio-fs tags are ones `--fs` accepts, each used once.
fn check_fs_tags(tags: &[&str]) -> Result<(), String> {
    for (index, tag) in tags.iter().enumerate() {
        if !is_valid_fs_tag(tag) {
            return Err(format!(
                "a virtio-fs tag of {} bytes: 1 to {MAX_FS_TAG_BYTES} without NUL are allowed",
                tag.len()
            ));
        }
        if tags[..index].contains(tag) {
            return Err(format!("the virtio-fs tag {tag:?} is used twice"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_fs_tags_are_valid_and_distinct() {
        assert!(check_fs_tags(&[]).is_ok());
        assert!(check_fs_tags(&["share", "logs"]).is_ok());
        let long = "x".repeat(MAX_FS_TAG_BYTES + 1);
        for bad in ["", "a\0b", long.as_str()] {
            let error = check_fs_tags(&["share", bad]).unwrap_err();
            assert!(error.contains("without NUL"), "{error}");
        }
        let error = check_fs_tags(&["share", "share"]).unwrap_err();
        assert!(error.contains("\"share\" is used twice"), "{error}");
    }

    #[test]
    fn an_fs_device_is_recorded_by_tag() {
        let kind = DeviceKind::Fs {
            tag: "share".into(),
        };
        let json = serde_json::to_string(&kind).unwrap();
        assert_eq!(json, r#"{"Fs":{"tag":"share"}}"#);
        assert_eq!(serde_json::from_str::<DeviceKind>(&json).unwrap(), kind);
    }
}
