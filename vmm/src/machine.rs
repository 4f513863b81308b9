//! Builds a VM from a [`VmConfig`] and runs it until it ends.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::boot::{self, regs::setup_boot_vcpu, virtio_mmio_param, EXIT_PORT, ROOT_DISK_PARAMS};
use crate::config::VmConfig;
use crate::cpu;
use crate::devices::virtio::block::{Block, DiskImage};
use crate::devices::virtio::fs::VhostUserFs;
use crate::devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::net::{Net, Tap};
use crate::devices::virtio::vsock::device::Vsock;
use crate::devices::virtio::vsock::muxer::Muxer;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::{
    Bus, ExitPort, FailureReporter, Serial, COM1_IRQ, COM1_PORT, I8042, I8042_BASE, I8042_LEN,
};
use crate::error::Error;
use crate::host::HostResources;
use crate::host_profile::HostProfile;
use crate::memory::{
    create_guest_memory, create_shared_guest_memory, virtio_mmio_slot, GuestMemory,
    MAX_VIRTIO_DEVICES, VIRTIO_MMIO_WINDOW,
};
use crate::seccomp::ThreadKind;
use crate::vcpu::{install_kick_handler, kick_signal, Vcpu, VcpuStop};

/// KVM on Intel needs three pages for a real-mode TSS; they sit in the
/// device hole, where there is no RAM.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// How long to wait for vCPU threads to leave the guest once asked.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);

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
}

impl VmExit {
    /// The VMM's exit status for this ending: 0 only for a clean power-off.
    pub fn exit_code(&self) -> u8 {
        match self {
            VmExit::PowerOff => 0,
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
    } = host;
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

    let mem = if config.needs_shared_memory() {
        create_shared_guest_memory(config.memory_bytes())?
    } else {
        create_guest_memory(config.memory_bytes())?
    };
    register_guest_memory(&vm, &mem, config.memory_mib)?;
    let failures = Arc::new(
        FailureReporter::new().map_err(Error::io("cannot create the device failure eventfd"))?,
    );
    let pio = Arc::new(build_pio_bus(&vm, serial)?);
    let mmio = Arc::new(build_mmio_bus(
        &vm, &mem, config, root_disk, taps, &failures,
    )?);
    let cmdline = cmdline_for(config, profile)?;
    let entry = boot::prepare_guest(config, boot_files, &cmdline, &mem)?;

    let base_cpuid = cpu::guest_cpuid(&kvm, profile.hidden_kvm_features())?;
    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for id in 0..config.vcpus {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        cpu::configure_vcpu(&fd, id, &base_cpuid)?;
        if id == 0 {
            setup_boot_vcpu(&fd, &mem, entry)?;
        }
        let stats = crate::vcpu::open_stats(&fd);
        vcpus.push(Vcpu {
            id,
            stats,
            fd,
            pio: pio.clone(),
            mmio: mmio.clone(),
            mem: mem.clone(),
        });
    }
    run_vcpus(vcpus, &failures)
}

/// The kernel command line `config` gives the guest on this host.
pub fn guest_cmdline(config: &VmConfig) -> Result<String, Error> {
    config.validate()?;
    cmdline_for(config, HostProfile::resolve(config.host_profile))
}

fn cmdline_for(config: &VmConfig, profile: HostProfile) -> Result<String, Error> {
    let mut device_params: Vec<String> = virtio_devices(config)
        .into_iter()
        .filter_map(|(index, _)| virtio_mmio_slot(index))
        .map(|(base, irq)| virtio_mmio_param(base, irq))
        .collect();
    if config.root_disk.is_some() {
        device_params.extend(ROOT_DISK_PARAMS.iter().map(|p| p.to_string()));
    }
    boot::build_cmdline(
        profile,
        &device_params,
        &config.extra_cmdline,
        &config.init_args,
    )
}

/// The virtio devices `config` asks for, in slot order. The order fixes
/// each device's MMIO window and IRQ, and so the guest's device names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VirtioKind {
    /// The root disk: the only virtio-blk device, so the guest's /dev/vda.
    RootDisk,
    Vsock,
    /// The nth entry of `config.fs`.
    Fs(usize),
    /// The nth entry of `config.net`: after the others, so adding an
    /// interface moves no other device.
    Net(usize),
}

fn virtio_devices(config: &VmConfig) -> Vec<(usize, VirtioKind)> {
    let mut kinds = Vec::new();
    if config.root_disk.is_some() {
        kinds.push(VirtioKind::RootDisk);
    }
    if config.vsock.is_some() {
        kinds.push(VirtioKind::Vsock);
    }
    kinds.extend((0..config.fs.len()).map(VirtioKind::Fs));
    kinds.extend((0..config.net.len()).map(VirtioKind::Net));
    kinds.into_iter().enumerate().collect()
}

fn build_mmio_bus(
    vm: &VmFd,
    mem: &GuestMemory,
    config: &VmConfig,
    mut root_disk: Option<DiskImage>,
    taps: Vec<Tap>,
    failures: &Arc<FailureReporter>,
) -> Result<Bus, Error> {
    let mut bus = Bus::default();
    let mut taps = taps.into_iter();
    for (index, kind) in virtio_devices(config) {
        let (base, irq) = virtio_mmio_slot(index).ok_or(Error::Device {
            device: "virtio",
            reason: format!("more than {MAX_VIRTIO_DEVICES} devices"),
        })?;
        let device: Box<dyn VirtioDevice> = match (kind, &config.vsock) {
            (VirtioKind::RootDisk, _) => match root_disk.take() {
                Some(disk) => Box::new(Block::new(disk)),
                None => continue,
            },
            (VirtioKind::Vsock, Some(vsock)) => {
                let muxer = Muxer::bind(vsock.guest_cid, &vsock.socket).map_err(|source| {
                    Error::VsockSocket {
                        path: vsock.socket.clone(),
                        source,
                    }
                })?;
                Box::new(Vsock::new(vsock.guest_cid, muxer))
            }
            (VirtioKind::Vsock, None) => continue,
            (VirtioKind::Fs(n), _) => {
                let Some(fs) = config.fs.get(n) else {
                    continue;
                };
                let device =
                    VhostUserFs::connect(&fs.tag, &fs.socket, fs.queue_size, failures.clone())
                        .map_err(|reason| Error::FsBackend {
                            socket: fs.socket.clone(),
                            reason,
                        })?;
                Box::new(device)
            }
            (VirtioKind::Net(n), _) => {
                let (Some(net), Some(tap)) = (config.net.get(n), taps.next()) else {
                    continue;
                };
                Box::new(Net::new(tap, net.options))
            }
        };
        let transport = attach_virtio_device(vm, mem, device, base, irq)?;
        bus.insert(base, VIRTIO_MMIO_WINDOW, Arc::new(Mutex::new(transport)));
    }
    Ok(bus)
}

/// Wires a device's interrupt (irqfd) and queue notifications (one
/// ioeventfd per queue on QueueNotify) into KVM.
fn attach_virtio_device(
    vm: &VmFd,
    mem: &GuestMemory,
    device: Box<dyn VirtioDevice>,
    base: u64,
    irq: u32,
) -> Result<MmioTransport, Error> {
    let irqfd = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("cannot create an irqfd"))?;
    vm.register_irqfd(&irqfd, irq)
        .map_err(Error::kvm("KVM_IRQFD"))?;
    let mut notify = Vec::new();
    for index in 0..device.queue_max_sizes().len() as u32 {
        let event =
            EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("cannot create an ioeventfd"))?;
        vm.register_ioevent(
            &event,
            &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
            index,
        )
        .map_err(Error::kvm("KVM_IOEVENTFD"))?;
        notify.push(event);
    }
    MmioTransport::new(device, mem.clone(), Arc::new(Interrupt::new(irqfd)), notify).map_err(
        |reason| Error::Device {
            device: "virtio-mmio",
            reason,
        },
    )
}

fn register_guest_memory(vm: &VmFd, mem: &GuestMemory, memory_mib: u64) -> Result<(), Error> {
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

fn build_pio_bus(vm: &VmFd, output: Box<dyn Write + Send>) -> Result<Bus, Error> {
    let serial_irq =
        EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("cannot create the serial irqfd"))?;
    vm.register_irqfd(&serial_irq, COM1_IRQ)
        .map_err(Error::kvm("KVM_IRQFD"))?;

    let mut bus = Bus::default();
    bus.insert(
        COM1_PORT,
        Serial::PORT_COUNT,
        Arc::new(Mutex::new(Serial::new(serial_irq, output))),
    );
    bus.insert(EXIT_PORT, 1, Arc::new(Mutex::new(ExitPort)));
    bus.insert(I8042_BASE, I8042_LEN, Arc::new(Mutex::new(I8042)));
    Ok(bus)
}

/// Runs every vCPU on its own thread and waits for the first to stop or
/// for a termination signal; then stops the rest.
/// A device failure reported to `failures` ends the VM too.
fn run_vcpus(vcpus: Vec<Vcpu>, failures: &FailureReporter) -> Result<VmExit, Error> {
    let signals = TerminationSignals::block()?;
    install_kick_handler().map_err(Error::io("cannot install the vCPU kick handler"))?;
    let stopped =
        EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("cannot create an eventfd"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (reports, stops) = mpsc::channel();
    // Device threads are started from here on by the spawner (see
    // crate::seccomp), so that a confined vCPU can activate devices.
    crate::seccomp::start_spawner().map_err(Error::io("cannot start the thread spawner"))?;

    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for vcpu in vcpus {
        let stop = stop.clone();
        let reports = reports.clone();
        let stopped = stopped
            .try_clone()
            .map_err(Error::io("cannot clone an eventfd"))?;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{}", vcpu.id))
            .spawn(move || {
                // Confined before the guest runs a single instruction.
                let reason = match crate::seccomp::apply(ThreadKind::Vcpu) {
                    Ok(()) => vcpu.run(&stop),
                    Err(error) => VcpuStop::Failed(error.to_string()),
                };
                let _ = reports.send(reason);
                let _ = stopped.write(1);
            })
            .map_err(Error::io("cannot start a vCPU thread"))?;
        threads.push(thread);
    }
    // Every thread the main thread starts is running: confine it too.
    if let Err(error) = crate::seccomp::apply(ThreadKind::Main) {
        stop_vcpus(&stop, threads);
        return Err(error.into());
    }

    let outcome = match signals.wait_for_signal_or(&[&stopped, failures.event()])? {
        Some(signo) => VmExit::Signal(signo),
        // A failed backend explains whatever the guest did next.
        None => match failures.first() {
            Some(reason) => VmExit::DeviceFailed(reason),
            None => stops.try_recv().map(VmExit::from).unwrap_or_else(|_| {
                VmExit::VcpuFailed("a vCPU thread ended without a report".into())
            }),
        },
    };
    stop_vcpus(&stop, threads);
    Ok(outcome)
}

/// Sets the stop flag and kicks each vCPU until its thread ends. A kick can
/// land just before the thread re-enters the guest, hence the repetition.
fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<()>>) {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
    let mut running = threads;
    while !running.is_empty() && Instant::now() < deadline {
        for thread in &running {
            let _ = thread.kill(kick_signal());
        }
        std::thread::sleep(Duration::from_millis(5));
        let (finished, still_running): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|t| t.is_finished());
        for thread in finished {
            let _ = thread.join();
        }
        running = still_running;
    }
    // A thread still in the guest now is abandoned; the process exits next.
}

/// SIGTERM, SIGINT and SIGHUP, blocked in every thread and read through a
/// signalfd, so they end the VM cleanly instead of killing the process.
struct TerminationSignals {
    fd: File,
}

impl TerminationSignals {
    const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

    fn block() -> Result<TerminationSignals, Error> {
        let what = "cannot set up the termination signals";
        // SAFETY: plain libc calls on a local, initialised sigset_t.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signo in Self::SIGNALS {
                libc::sigaddset(&mut set, signo);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(Error::io(what)(std::io::Error::from_raw_os_error(rc)));
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(Error::io(what)(std::io::Error::last_os_error()));
            }
            use std::os::fd::FromRawFd;
            Ok(TerminationSignals {
                fd: File::from_raw_fd(fd),
            })
        }
    }

    /// Blocks until a termination signal arrives (its number) or one of
    /// `events` is signalled (None).
    fn wait_for_signal_or(&self, events: &[&EventFd]) -> Result<Option<i32>, Error> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut fds: Vec<libc::pollfd> = std::iter::once(self.fd.as_raw_fd())
            .chain(events.iter().map(|event| event.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        loop {
            // SAFETY: `fds` is a valid array of two pollfd structures.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io("poll failed")(err));
            }
            if fds[1..].iter().any(|fd| fd.revents != 0) {
                return Ok(None);
            }
            if fds[0].revents != 0 {
                let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
                (&self.fd)
                    .read_exact(&mut info)
                    .map_err(Error::io("cannot read the signalfd"))?;
                let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                return Ok(Some(signo as i32));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VsockConfig;

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
        let line = cmdline_for(&config, HostProfile::Hardware).unwrap();
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
        let line = cmdline_for(&config, HostProfile::Hardware).unwrap();
        assert!(!line.contains("root="), "{line}");
        assert!(!line.contains("virtio_mmio"), "{line}");
    }
}
