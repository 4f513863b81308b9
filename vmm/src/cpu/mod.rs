//! Per-vCPU architectural set-up that does not depend on how the kernel is
//! entered: CPUID, boot MSRs and the local APIC's interrupt pins.

use kvm_bindings::{kvm_msr_entry, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::error::Error;

const CPUID_LEAF_FEATURES: u32 = 0x1;
const CPUID_LEAF_TOPOLOGY: u32 = 0xb;
const CPUID_LEAF_TOPOLOGY_V2: u32 = 0x1f;
/// KVM's paravirtual feature leaf (KVM_CPUID_FEATURES).
const CPUID_LEAF_KVM_FEATURES: u32 = 0x4000_0001;

const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MISC_ENABLE_FAST_STRING: u64 = 1;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// MTRRs enabled, default memory type write-back: without it a guest with
/// MTRR support would map its RAM uncached.
const MTRR_ENABLED_WRITE_BACK: u64 = (1 << 11) | 6;

const APIC_LVT_LINT0: usize = 0x350;
const APIC_LVT_LINT1: usize = 0x360;
const APIC_DELIVERY_MODE_NMI: u32 = 0b100;
const APIC_DELIVERY_MODE_EXTINT: u32 = 0b111;

/// The host's supported CPUID, read once and adapted for each vCPU.
fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, Error> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))
}

/// The host's CPUID minus the KVM paravirtual features (a mask of
/// KVM_CPUID_FEATURES EAX bits) the host profile cannot serve.
pub fn guest_cpuid(kvm: &Kvm, hidden_kvm_features: u32) -> Result<CpuId, Error> {
    let mut cpuid = supported_cpuid(kvm)?;
    hide_kvm_features(&mut cpuid, hidden_kvm_features);
    Ok(cpuid)
}

fn hide_kvm_features(cpuid: &mut CpuId, hidden: u32) {
    for entry in cpuid.as_mut_slice() {
        if entry.function == CPUID_LEAF_KVM_FEATURES {
            entry.eax &= !hidden;
        }
    }
}

pub fn configure_vcpu(vcpu: &VcpuFd, id: u8, base_cpuid: &CpuId) -> Result<(), Error> {
    let mut cpuid = base_cpuid.clone();
    set_apic_id(&mut cpuid, id);
    vcpu.set_cpuid2(&cpuid)
        .map_err(Error::kvm("KVM_SET_CPUID2"))?;
    set_boot_msrs(vcpu)?;
    set_local_interrupt_pins(vcpu)
}

/// Each vCPU reports its own APIC id, matching the MP table.
fn set_apic_id(cpuid: &mut CpuId, id: u8) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            CPUID_LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x00ff_ffff) | (u32::from(id) << 24);
            }
            CPUID_LEAF_TOPOLOGY | CPUID_LEAF_TOPOLOGY_V2 => entry.edx = u32::from(id),
            _ => {}
        }
    }
}

fn set_boot_msrs(vcpu: &VcpuFd) -> Result<(), Error> {
    let entries = [
        kvm_msr_entry {
            index: MSR_IA32_MISC_ENABLE,
            data: MISC_ENABLE_FAST_STRING,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_MTRR_DEF_TYPE,
            data: MTRR_ENABLED_WRITE_BACK,
            ..Default::default()
        },
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| Error::KvmCapability("MSR list"))?;
    let written = vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
    if written != entries.len() {
        return Err(Error::KvmCapability(
            "the boot MSRs (IA32_MISC_ENABLE, MTRRdefType)",
        ));
    }
    Ok(())
}

/// LINT0 takes the 8259's interrupts (ExtINT) and LINT1 the NMI, as on a
/// PC; the MP table says the same.
fn set_local_interrupt_pins(vcpu: &VcpuFd) -> Result<(), Error> {
    let mut lapic = vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    for (offset, mode) in [
        (APIC_LVT_LINT0, APIC_DELIVERY_MODE_EXTINT),
        (APIC_LVT_LINT1, APIC_DELIVERY_MODE_NMI),
    ] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[offset + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !(0b111 << 8)) | (mode << 8);
        for (i, byte) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[offset + i] = *byte as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(Error::kvm("KVM_SET_LAPIC"))
}

#[cfg(test)]
mod tests {
    use kvm_bindings::kvm_cpuid_entry2;

    use super::*;

    fn leaf(function: u32, eax: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            eax,
            ..Default::default()
        }
    }

    #[test]
    fn hidden_kvm_features_are_cleared_only_in_their_leaf() {
        let mut cpuid = CpuId::from_entries(&[
            leaf(CPUID_LEAF_FEATURES, u32::MAX),
            leaf(CPUID_LEAF_KVM_FEATURES, u32::MAX),
        ])
        .expect("two entries fit");
        hide_kvm_features(&mut cpuid, (1 << 11) | (1 << 7));
        let entries = cpuid.as_slice();
        assert_eq!(entries[0].eax, u32::MAX);
        assert_eq!(entries[1].eax, !((1 << 11) | (1 << 7)));
    }

    #[test]
    fn apic_id_goes_into_leaf_1_ebx_and_topology_edx() {
        let mut cpuid =
            CpuId::from_entries(&[leaf(CPUID_LEAF_FEATURES, 0), leaf(CPUID_LEAF_TOPOLOGY, 0)])
                .expect("two entries fit");
        set_apic_id(&mut cpuid, 3);
        assert_eq!(cpuid.as_slice()[0].ebx >> 24, 3);
        assert_eq!(cpuid.as_slice()[1].edx, 3);
    }
}
