//! The virtio devices of a VM on their virtio-mmio windows: which devices
//! a [`VmConfig`] asks for, in slot order, each built around its host end
//! (or restored from a snapshot's record) and wired into KVM.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{FsConfig, VmConfig};
use crate::devices::virtio::block::{Block, DiskImage};
use crate::devices::virtio::fs::pending::check_backend_takes_over;
use crate::devices::virtio::fs::{PendingFs, VhostUserFs};
use crate::devices::virtio::mmio::{MmioTransport, TransportState, REG_QUEUE_NOTIFY};
use crate::devices::virtio::net::{Net, PendingNet, Tap};
use crate::devices::virtio::vsock::device::Vsock;
use crate::devices::virtio::vsock::muxer::Muxer;
use crate::devices::virtio::{Interrupt, VirtioDevice};
use crate::devices::{Bus, FailureReporter};
use crate::error::Error;
use crate::memory::{virtio_mmio_slot, GuestMemory, MAX_VIRTIO_DEVICES, VIRTIO_MMIO_WINDOW};
use crate::snapshot::state::{DeviceKind, DeviceState};

/// A virtio-mmio slot's transport, and how a snapshot records its device
/// (or what a device that cannot be saved is).
pub(crate) struct VirtioSlot {
    pub saved_as: Result<DeviceKind, &'static str>,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// The virtio devices `config` asks for, in slot order. The order fixes
/// each device's MMIO window and IRQ, and so the guest's device names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum VirtioKind {
    /// The root disk: the only virtio-blk device, so the guest's /dev/vda.
    RootDisk,
    Vsock,
    /// The nth entry of `config.fs`.
    Fs(usize),
    /// The nth entry of `config.net`: after the others, so adding an
    /// interface moves no other device.
    Net(usize),
}

pub(super) fn virtio_devices(config: &VmConfig) -> Vec<(usize, VirtioKind)> {
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

/// The virtio devices `config` asks for, on their MMIO windows. With
/// `saved` (a snapshot's devices, in slot order) each transport is
/// restored from its record, which must be for the same kind of device.
pub(crate) fn build_mmio_bus(
    vm: &VmFd,
    mem: &GuestMemory,
    config: &VmConfig,
    mut root_disk: Option<DiskImage>,
    taps: Vec<Option<Tap>>,
    failures: &Arc<FailureReporter>,
    saved: Option<&[DeviceState]>,
) -> Result<(Bus, Vec<VirtioSlot>), Error> {
    let mut bus = Bus::default();
    let mut slots = Vec::new();
    let mut taps = taps.into_iter();
    for (index, kind) in virtio_devices(config) {
        let (base, irq) = virtio_mmio_slot(index).ok_or(Error::Device {
            device: "virtio",
            reason: format!("more than {MAX_VIRTIO_DEVICES} devices"),
        })?;
        let saved_here = saved.and_then(|saved| saved.get(index));
        let SlotDevice {
            device,
            kind,
            unsaveable,
        } = match (kind, &config.vsock) {
            (VirtioKind::RootDisk, _) => match root_disk.take() {
                Some(disk) => {
                    let sectors = disk.sectors();
                    SlotDevice::saveable(Block::new(disk), DeviceKind::RootDisk { sectors })
                }
                None => continue,
            },
            (VirtioKind::Vsock, Some(vsock)) => {
                let muxer = Muxer::bind(vsock.guest_cid, &vsock.socket).map_err(|source| {
                    Error::VsockSocket {
                        path: vsock.socket.clone(),
                        source,
                    }
                })?;
                SlotDevice::saveable(Vsock::new(vsock.guest_cid, muxer), DeviceKind::Vsock)
            }
            (VirtioKind::Vsock, None) => continue,
            (VirtioKind::Fs(n), _) => match config.fs.get(n) {
                Some(fs) => fs_device(fs, failures, saved_here)?,
                None => continue,
            },
            (VirtioKind::Net(n), _) => {
                let (Some(net), Some(tap)) = (config.net.get(n), taps.next()) else {
                    continue;
                };
                match tap {
                    // A template's: see `net::pending`.
                    None => SlotDevice::saveable(PendingNet::new(net.options), DeviceKind::Net),
                    Some(tap) => SlotDevice {
                        device: Box::new(Net::new(tap, net.options)),
                        kind: Ok(DeviceKind::Net),
                        unsaveable: Some("virtio-net device with a tap"),
                    },
                }
            }
        };
        let record = match saved {
            Some(saved) => Some(matching_record(saved, index, kind.clone())?),
            None => None,
        };
        let saved_as = match unsaveable {
            Some(what) => Err(what),
            None => kind,
        };
        let transport = Arc::new(Mutex::new(attach_virtio_device(
            vm, mem, device, base, irq, record,
        )?));
        bus.insert(base, VIRTIO_MMIO_WINDOW, transport.clone());
        slots.push(VirtioSlot {
            saved_as,
            transport,
        });
    }
    if let Some(saved) = saved {
        if saved.len() != slots.len() {
            return Err(Error::Snapshot {
                reason: format!(
                    "the snapshot has {} virtio devices, this VM {}: give the restored VM \
                     the same devices (a root disk, a vsock socket, an --fs per share tag, \
                     a --net per card)",
                    saved.len(),
                    slots.len()
                ),
            });
        }
    }
    Ok((bus, slots))
}

/// A device for a virtio-mmio slot: what a snapshot records it as (or the
/// name of a kind no snapshot holds), and what it is if it cannot be saved.
struct SlotDevice {
    device: Box<dyn VirtioDevice>,
    kind: Result<DeviceKind, &'static str>,
    unsaveable: Option<&'static str>,
}

impl SlotDevice {
    fn saveable(device: impl VirtioDevice + 'static, kind: DeviceKind) -> SlotDevice {
        SlotDevice {
            device: Box::new(device),
            kind: Ok(kind),
            unsaveable: None,
        }
    }
}

/// A virtio-fs device: a template's, with no backend yet, or one
/// connected to its backend. Restored from `saved`, the backend must be
/// able to take over the recorded rings.
fn fs_device(
    fs: &FsConfig,
    failures: &Arc<FailureReporter>,
    saved: Option<&DeviceState>,
) -> Result<SlotDevice, Error> {
    let kind = DeviceKind::Fs {
        tag: fs.tag.clone(),
    };
    let Some(socket) = fs.socket() else {
        return Ok(SlotDevice::saveable(
            PendingFs::new(&fs.tag, fs.queue_size),
            kind,
        ));
    };
    let backend_error = |reason| Error::FsBackend {
        socket: socket.to_path_buf(),
        reason,
    };
    let device = VhostUserFs::connect(&fs.tag, socket, fs.queue_size, failures.clone())
        .map_err(backend_error)?;
    if let Some(record) = saved.filter(|record| record.kind == kind) {
        check_backend_takes_over(&device, &record.transport).map_err(backend_error)?;
    }
    Ok(SlotDevice {
        device: Box::new(device),
        kind: Ok(kind),
        // A template's is pending instead: `--fs tag=TAG,pending`.
        unsaveable: Some("virtio-fs device served by a backend"),
    })
}

/// The record of the device in slot `index`, if it is for `kind`.
fn matching_record<'a>(
    saved: &'a [DeviceState],
    index: usize,
    kind: Result<DeviceKind, &'static str>,
) -> Result<&'a TransportState, Error> {
    let record = saved.get(index);
    match (record, kind) {
        (Some(record), Ok(kind)) if record.kind == kind => Ok(&record.transport),
        (record, kind) => Err(Error::Snapshot {
            reason: format!(
                "virtio slot {index} holds {:?} in the snapshot but {:?} in this VM",
                record.map(|r| &r.kind),
                kind.map_err(|name| name.to_string())
            ),
        }),
    }
}

/// Wires a device's interrupt (irqfd) and queue notifications (one
/// ioeventfd per queue on QueueNotify) into KVM.
fn attach_virtio_device(
    vm: &VmFd,
    mem: &GuestMemory,
    device: Box<dyn VirtioDevice>,
    base: u64,
    irq: u32,
    saved: Option<&TransportState>,
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
    let interrupt = Arc::new(Interrupt::new(irqfd));
    match saved {
        None => MmioTransport::new(device, mem.clone(), interrupt, notify).map_err(|reason| {
            Error::Device {
                device: "virtio-mmio",
                reason,
            }
        }),
        Some(state) => MmioTransport::restore(device, mem.clone(), interrupt, notify, state)
            .map_err(|reason| Error::Snapshot {
                reason: format!("virtio-mmio device at {base:#x}: {reason}"),
            }),
    }
}
