//! A vCPU's state: read from a paused vCPU, and set on a new one.
//!
//! The order follows what KVM needs: on save, the MP state first (reading
//! it flushes pending local APIC events); on restore the registers before
//! the local APIC, the local APIC before the MSRs (the TSC deadline is
//! only accepted once the timer mode is set), the vCPU events last.

use kvm_bindings::{kvm_msr_entry, Msrs};
use kvm_ioctls::{Cap, Kvm, VcpuFd};

use super::state::{FpuState, VcpuState, MAX_MSRS};
use crate::error::Error;

/// The MSRs KVM says it can save and restore (KVM_GET_MSR_INDEX_LIST),
/// read before the VMM confines itself.
pub fn saved_msr_indices(kvm: &Kvm) -> Result<Vec<u32>, Error> {
    let list = kvm
        .get_msr_index_list()
        .map_err(Error::kvm("KVM_GET_MSR_INDEX_LIST"))?;
    let mut indices = list.as_slice().to_vec();
    indices.truncate(MAX_MSRS);
    Ok(indices)
}

pub fn save_vcpu(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, Error> {
    let mp_state = vcpu
        .get_mp_state()
        .map_err(Error::kvm("KVM_GET_MP_STATE"))?;
    let regs = vcpu.get_regs().map_err(Error::kvm("KVM_GET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    let fpu = vcpu.get_fpu().map_err(Error::kvm("KVM_GET_FPU"))?;
    let xsave = vcpu.get_xsave().ok();
    let xcrs = vcpu.get_xcrs().ok();
    let debugregs = vcpu
        .get_debug_regs()
        .map_err(Error::kvm("KVM_GET_DEBUGREGS"))?;
    let lapic = vcpu.get_lapic().map_err(Error::kvm("KVM_GET_LAPIC"))?;
    let msrs = read_msrs(vcpu, msr_indices)?;
    let events = vcpu
        .get_vcpu_events()
        .map_err(Error::kvm("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        regs,
        sregs,
        fpu: FpuState::from(&fpu),
        xsave,
        xcrs,
        debugregs,
        lapic,
        mp_state,
        events,
        msrs,
    })
}

/// Every MSR of `indices` KVM will read. KVM_GET_MSRS stops at the first
/// one it cannot read (one the host lacks): that one is left out and the
/// read goes on after it.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, Error> {
    let mut saved = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let entries: Vec<kvm_msr_entry> = rest
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs =
            Msrs::from_entries(&entries).map_err(|_| Error::KvmCapability("MSR list"))?;
        let read = vcpu
            .get_msrs(&mut msrs)
            .map_err(Error::kvm("KVM_GET_MSRS"))?
            .min(rest.len());
        saved.extend_from_slice(&msrs.as_slice()[..read]);
        rest = rest.get(read + 1..).unwrap_or_default();
    }
    Ok(saved)
}

pub fn restore_vcpu(kvm: &Kvm, vcpu: &VcpuFd, state: &VcpuState) -> Result<(), Error> {
    vcpu.set_mp_state(state.mp_state)
        .map_err(Error::kvm("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs)
        .map_err(Error::kvm("KVM_SET_REGS"))?;
    vcpu.set_sregs(&state.sregs)
        .map_err(Error::kvm("KVM_SET_SREGS"))?;
    match &state.xsave {
        Some(xsave) => {
            // KVM reads as much xsave area as the guest's features need:
            // more than kvm_xsave holds only with KVM_CAP_XSAVE2 saying so.
            let needed = kvm.check_extension_int(Cap::Xsave2);
            if usize::try_from(needed).unwrap_or(usize::MAX) > std::mem::size_of_val(xsave) {
                return Err(Error::Snapshot {
                    reason: format!(
                        "this host's xsave area ({needed} bytes) is larger than the snapshot's"
                    ),
                });
            }
            // SAFETY: `xsave` is a whole kvm_xsave, and KVM reads no more
            // than its size (checked just above).
            unsafe { vcpu.set_xsave(xsave) }.map_err(Error::kvm("KVM_SET_XSAVE"))?;
        }
        None => vcpu
            .set_fpu(&(&state.fpu).into())
            .map_err(Error::kvm("KVM_SET_FPU"))?,
    }
    if let Some(xcrs) = &state.xcrs {
        vcpu.set_xcrs(xcrs).map_err(Error::kvm("KVM_SET_XCRS"))?;
    }
    vcpu.set_debug_regs(&state.debugregs)
        .map_err(Error::kvm("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&state.lapic)
        .map_err(Error::kvm("KVM_SET_LAPIC"))?;
    let msrs = Msrs::from_entries(&state.msrs).map_err(|_| Error::Snapshot {
        reason: format!("{} MSRs do not fit KVM's list", state.msrs.len()),
    })?;
    let written = vcpu.set_msrs(&msrs).map_err(Error::kvm("KVM_SET_MSRS"))?;
    if let Some(refused) = state.msrs.get(written) {
        return Err(Error::Snapshot {
            reason: format!("KVM refused MSR {:#x} = {:#x}", refused.index, refused.data),
        });
    }
    vcpu.set_vcpu_events(&state.events)
        .map_err(Error::kvm("KVM_SET_VCPU_EVENTS"))
}
