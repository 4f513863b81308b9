//! Builds a VM from a [`VmConfig`] (booted from its kernel, or restored
//! from a snapshot by [`crate::snapshot`]) and runs it until it ends.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::{
    self, regs::setup_boot_vcpu, virtio_mmio_param, BootFiles, EXIT_PORT, ROOT_DISK_PARAMS,
};
use crate::config::VmConfig;
use crate::cpu;
use crate::devices::virtio::block::DiskImage;
use crate::devices::virtio::net::Tap;
use crate::devices::{
    Bus, ExitPort, FailureReporter, Serial, COM1_IRQ, COM1_PORT, I8042, I8042_BASE, I8042_LEN,
};
use crate::error::Error;
use crate::host::HostResources;
use crate::host_profile::HostProfile;
use crate::memory::{
    create_guest_memory, create_shared_guest_memory, virtio_mmio_slot, GuestMemory, RamRange,
};
use crate::runner::{run_vcpus, TerminationSignals};
use crate::snapshot::cpu_state::saved_msr_indices;
use crate::snapshot::Saver;
use crate::vcpu::{Vcpu, VcpuStop};

mod virtio_bus;

use virtio_bus::virtio_devices;
pub(crate) use virtio_bus::{build_mmio_bus, VirtioSlot};

/// KVM on Intel needs three pages for a real-mode TSS; they sit in the
/// device hole, where there is no RAM.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// How a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmExit {
    PowerOff,
    Reset,
    TripleFault,
    InternalError(String),
    /// The VMM received this signal and stopped the VM.
    Signal(i32),
    VcpuFailed(String),
    /// A device's backend went away or failed; the VM could not go on.
    DeviceFailed(String),
    /// The VM was saved to this snapshot directory, and stopped.
    Saved(PathBuf),
}

impl VmExit {
    /// The VMM's exit status for this ending: 0 only for a clean power-off.
    pub fn exit_code(&self) -> u8 {
        match self {
            VmExit::PowerOff | VmExit::Saved(_) => 0,
            VmExit::VcpuFailed(_) => 1,
            VmExit::Reset => 3,
            VmExit::TripleFault => 4,
            VmExit::InternalError(_) => 5,
            VmExit::DeviceFailed(_) => 6,
            VmExit::Signal(signo) => 128u8.saturating_add(*signo as u8),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            VmExit::PowerOff => "the guest powered off".into(),
            VmExit::Reset => "the guest reset (reboot, or kernel panic)".into(),
            VmExit::TripleFault => "the guest triple-faulted (KVM_EXIT_SHUTDOWN)".into(),
            VmExit::InternalError(report) => report.clone(),
            VmExit::Signal(signo) => format!("stopped by signal {signo}"),
            VmExit::VcpuFailed(reason) => reason.clone(),
            VmExit::DeviceFailed(reason) => reason.clone(),
            VmExit::Saved(dir) => format!("the VM was saved to {}", dir.display()),
        }
    }
}

impl From<VcpuStop> for VmExit {
    fn from(stop: VcpuStop) -> VmExit {
        match stop {
            VcpuStop::PowerOff => VmExit::PowerOff,
            VcpuStop::Reset => VmExit::Reset,
            VcpuStop::TripleFault => VmExit::TripleFault,
            VcpuStop::InternalError(report) => VmExit::InternalError(report),
            VcpuStop::Stopped => VmExit::VcpuFailed("a vCPU stopped unexpectedly".into()),
            VcpuStop::Failed(reason) => VmExit::VcpuFailed(reason),
        }
    }
}

/// Boots the VM described by `config` and runs it to its end. SIGTERM,
/// SIGINT and SIGHUP stop the VM cleanly.
pub fn run_vm(config: &VmConfig) -> Result<VmExit, Error> {
    run_vm_with(config, HostResources::open(config)?)
}

/// [`run_vm`] with the host resources already open (from `config`'s
/// paths): nothing is opened by path here but the devices' sockets.
pub fn run_vm_with(config: &VmConfig, host: HostResources) -> Result<VmExit, Error> {
    config.validate()?;
    let HostResources {
        kvm,
        boot: boot_files,
        root_disk,
        serial,
        profile,
        taps,
        snapshot_to,
        restore_from,
    } = host;
    let signals = TerminationSignals::block(snapshot_to.is_some())?;
    let vm = create_vm(&kvm)?;
    let failures = Arc::new(
        FailureReporter::new().map_err(Error::io("cannot create the device failure eventfd"))?,
    );
    let devices = DeviceHosts {
        root_disk,
        taps,
        serial,
        failures: &failures,
    };
    let built = match (restore_from, boot_files) {
        (Some(snapshot), _) => crate::snapshot::restore_vm(&kvm, &vm, config, snapshot, devices)?,
        (None, Some(boot_files)) => build_cold(&kvm, &vm, config, profile, boot_files, devices)?,
        (None, None) => {
            return Err(Error::Device {
                device: "boot",
                reason: "neither a kernel nor a snapshot to start from".into(),
            })
        }
    };
    let saver = match snapshot_to {
        Some(output) => Some(Saver {
            mem: built.mem,
            serial: built.serial,
            devices: built.slots,
            msr_indices: saved_msr_indices(&kvm)?,
            hidden_kvm_features: built.hidden_kvm_features,
            memory_mib: config.memory_mib,
            output,
        }),
        None => None,
    };
    run_vcpus(&vm, built.vcpus, &failures, signals, saver)
}

/// The host ends of a VM's devices, opened before it is built.
pub(crate) struct DeviceHosts<'a> {
    pub root_disk: Option<DiskImage>,
    pub taps: Vec<Option<Tap>>,
    pub serial: Box<dyn Write + Send>,
    pub failures: &'a Arc<FailureReporter>,
}

/// A VM ready to run, and what a snapshot of it would need.
pub(crate) struct BuiltVm {
    pub vcpus: Vec<Vcpu>,
    pub mem: GuestMemory,
    pub serial: Arc<Mutex<Serial>>,
    pub slots: Vec<VirtioSlot>,
    pub hidden_kvm_features: u32,
}

/// A VM with the in-kernel irqchip and PIT, and no memory yet.
pub(crate) fn create_vm(kvm: &Kvm) -> Result<VmFd, Error> {
    let vm = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(Error::kvm("KVM_CREATE_PIT2"))?;
    Ok(vm)
}

/// Boots from the kernel: fresh memory, boot structures and registers.
fn build_cold(
    kvm: &Kvm,
    vm: &VmFd,
    config: &VmConfig,
    profile: HostProfile,
    boot_files: BootFiles,
    hosts: DeviceHosts,
) -> Result<BuiltVm, Error> {
    let mem = if config.needs_shared_memory() {
        create_shared_guest_memory(config.memory_bytes())?
    } else {
        create_guest_memory(config.memory_bytes())?
    };
    register_guest_memory(vm, &mem, config.memory_mib)?;
    let (pio, serial) = build_pio_bus(vm, |irq| Ok(Serial::new(irq, hosts.serial)))?;
    let (mmio, slots) = build_mmio_bus(
        vm,
        &mem,
        config,
        hosts.root_disk,
        hosts.taps,
        hosts.failures,
        None,
    )?;
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));
    let cmdline = cmdline_for(config, profile, boot_files.preload_place())?;
    let entry = boot::prepare_guest(config, boot_files, &cmdline, &mem)?;

    let hidden_kvm_features = profile.hidden_kvm_features();
    let base_cpuid = cpu::guest_cpuid(kvm, hidden_kvm_features)?;
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        cpu::configure_vcpu(&fd, id, &base_cpuid)?;
        if id == 0 {
            setup_boot_vcpu(&fd, &mem, entry)?;
        }
        vcpus.push(new_vcpu(id, fd, &pio, &mmio, &mem));
    }
    Ok(BuiltVm {
        vcpus,
        mem,
        serial,
        slots,
        hidden_kvm_features,
    })
}

pub(crate) fn new_vcpu(
    id: u8,
    fd: VcpuFd,
    pio: &Arc<Bus>,
    mmio: &Arc<Bus>,
    mem: &GuestMemory,
) -> Vcpu {
    let stats = crate::vcpu::open_stats(&fd);
    Vcpu {
        id,
        stats,
        fd,
        pio: pio.clone(),
        mmio: mmio.clone(),
        mem: mem.clone(),
    }
}

/// The kernel command line `config` gives the guest on this host.
pub fn guest_cmdline(config: &VmConfig) -> Result<String, Error> {
    config.validate()?;
    let preload = boot::preload_place_of(config)?;
    cmdline_for(config, HostProfile::resolve(config.host_profile), preload)
}

fn cmdline_for(
    config: &VmConfig,
    profile: HostProfile,
    preload: Option<(RamRange, u64)>,
) -> Result<String, Error> {
    let mut device_params: Vec<String> = virtio_devices(config)
        .into_iter()
        .filter_map(|(index, _)| virtio_mmio_slot(index))
        .map(|(base, irq)| virtio_mmio_param(base, irq))
        .collect();
    if config.root_disk.is_some() {
        device_params.extend(ROOT_DISK_PARAMS.iter().map(|p| p.to_string()));
    }
    if config.snapshot_to.is_some() {
        device_params.extend(profile.snapshot_params());
    }
    if let Some((place, size)) = preload {
        device_params.push(boot::preload_param(place, size));
    }
    boot::build_cmdline(
        profile,
        &device_params,
        &config.extra_cmdline,
        &config.init_args,
    )
}

pub(crate) fn register_guest_memory(
    vm: &VmFd,
    mem: &GuestMemory,
    memory_mib: u64,
) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let host_address = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| Error::GuestMemory {
                mib: memory_mib,
                reason: e.to_string(),
            })?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host_address as u64,
        };
        // SAFETY: the mapping belongs to `mem`, which outlives the VM: every
        // vCPU thread holds a clone of it until it is joined.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// The port-I/O devices; `serial` makes the UART from its irqfd.
pub(crate) fn build_pio_bus(
    vm: &VmFd,
    serial: impl FnOnce(EventFd) -> Result<Serial, Error>,
) -> Result<(Bus, Arc<Mutex<Serial>>), Error> {
    let serial_irq =
        EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("cannot create the serial irqfd"))?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(Error::kvm("KVM_IRQFD"))?;
    let serial = Arc::new(Mutex::new(serial(serial_irq)?));

    let mut bus = Bus::default();
    bus.insert(COM1_PORT, Serial::PORT_COUNT, serial.clone());
    bus.insert(EXIT_PORT, 1, Arc::new(Mutex::new(ExitPort)));
    bus.insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(I8042)));
    Ok((bus, serial))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VsockConfig;
    use virtio_bus::VirtioKind;

    #[test]
    fn the_root_disk_comes_first_and_its_parameters_before_init_args() {
        let mut config = VmConfig::new("/vmlinux");
        config.root_disk = Some("/root.ext4".into());
        config.vsock = Some(VsockConfig {
            guest_cid: 3,
            socket: "/run/v.sock".into(),
        });
        config.init_args = vec!["--poweroff".into()];
        assert_eq!(
            virtio_devices(&config),
            vec![(0, VirtioKind::RootDisk), (1, VirtioKind::Vsock)]
        );
        let line = cmdline_for(&config, HostProfile::Hardware, None).unwrap();
        assert!(
            line.ends_with(
                "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6 \
                 root=/dev/vda ro rootfstype=ext4 init=/init -- --poweroff"
            ),
            "{line}"
        );
    }

    #[test]
    fn without_a_root_disk_nothing_changes() {
        let mut config = VmConfig::new("/vmlinux");
        config.initrd = Some("/initramfs.cpio".into());
        let line = cmdline_for(&config, HostProfile::Hardware, None).unwrap();
        assert!(!line.contains("root="), "{line}");
        assert!(!line.contains("virtio_mmio"), "{line}");
    }
}
