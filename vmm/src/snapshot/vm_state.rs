//! The VM-wide state KVM keeps: the two PICs and the I/O APIC of the
//! in-kernel irqchip, the PIT, and kvmclock.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;

use super::state::VmState;
use crate::error::Error;

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, Error> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(Error::kvm("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

pub fn save_vm(vm: &VmFd) -> Result<VmState, Error> {
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(Error::kvm("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(Error::kvm("KVM_GET_CLOCK"))?,
    })
}

/// Sets the irqchip and the PIT as recorded, and kvmclock to the recorded
/// time: the guest's clock resumes where the template's stopped (putting
/// its wall clock right is the guest agent's job).
pub fn restore_vm(vm: &VmFd, state: &VmState) -> Result<(), Error> {
    let expected = [
        (&state.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&state.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&state.ioapic, KVM_IRQCHIP_IOAPIC),
    ];
    for (chip, id) in expected {
        if chip.chip_id != id {
            return Err(Error::Snapshot {
                reason: format!("irqchip {} recorded where {id} belongs", chip.chip_id),
            });
        }
        vm.set_irqchip(chip)
            .map_err(Error::kvm("KVM_SET_IRQCHIP"))?;
    }
    vm.set_pit2(&state.pit)
        .map_err(Error::kvm("KVM_SET_PIT2"))?;
    // Only the time is set: the flags KVM_GET_CLOCK reports (TSC_STABLE,
    // REALTIME...) describe the old host's reading, not a request.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(Error::kvm("KVM_SET_CLOCK"))
}
