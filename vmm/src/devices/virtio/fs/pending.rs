//! A virtio-fs device whose backend comes later: a VM template's.
//!
//! virtio-mmio has no hotplug, so a template whose restored VMs get a
//! share must be booted with the device present. Booted with
//! `--fs tag=T,pending`, it has no backend: it presents the tag, the
//! request queue count and [`PENDING_FEATURES`], lets the driver set its
//! queues up and set DRIVER_OK, and processes nothing (a kick stays in the
//! ring for the backend to find). The snapshot records it with the
//! features the driver acked and its queues ([`crate::snapshot`]).
//!
//! A VM restored from the template binds the device to a backend
//! (`--fs tag=T,socket=S`): a [`VhostUserFs`] connected to it, which must
//! offer every feature the driver acked and have the recorded queue sizes
//! ([`check_backend_takes_over`]), and is then started on the recorded
//! rings from their recorded next available index (`SET_VRING_BASE`).

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};

use super::backend::{
    GUEST_VISIBLE_FEATURES, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use super::device::FsIdentity;
use super::{VhostUserFs, VIRTIO_ID_FS};
use crate::devices::virtio::held_queues::HeldQueues;
use crate::devices::virtio::mmio::TransportState;
use crate::devices::virtio::{ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemory;

/// What a pending device offers: every feature a served device may pass
/// to the guest, VERSION_1, INDIRECT_DESC and EVENT_IDX. virtiofsd 1.14
/// offers all three (its GET_FEATURES is 0x1_7400_0000), so a template's
/// driver may ack any of them; a backend offering fewer is refused at
/// restore.
pub const PENDING_FEATURES: u64 = GUEST_VISIBLE_FEATURES;

pub struct PendingFs {
    identity: FsIdentity,
    /// The driver's queues once it set DRIVER_OK, kept for the snapshot.
    queues: HeldQueues,
}

impl PendingFs {
    pub fn new(tag: &str, queue_size: u16) -> PendingFs {
        PendingFs {
            identity: FsIdentity::new(tag, queue_size),
            queues: HeldQueues::default(),
        }
    }

    pub fn tag(&self) -> &str {
        self.identity.tag()
    }
}

impl VirtioDevice for PendingFs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.identity.queue_max_sizes()
    }

    fn features(&self) -> u64 {
        PENDING_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.identity.read_config(offset, data);
    }

    fn activate(
        &mut self,
        _mem: GuestMemory,
        _features: u64,
        queues: Vec<ActiveQueue>,
        _interrupt: Arc<Interrupt>,
    ) -> Result<(), String> {
        // What a backend would refuse at restore is refused now, while
        // the template's driver can still see it.
        if !queues.iter().any(|active| active.queue.ready()) {
            return Err("the driver made no queue ready".into());
        }
        self.queues.hold(queues, "virtio-fs device")
    }

    fn reset(&mut self) -> bool {
        self.queues.drop_all();
        true
    }

    fn pause(&mut self) -> Result<Vec<Queue>, String> {
        self.queues.take("virtio-fs device")
    }
}

/// Whether `device`, connected to its backend in a restored VM, can take
/// over the rings the template's driver set up as `record` holds them.
pub fn check_backend_takes_over(
    device: &VhostUserFs,
    record: &TransportState,
) -> Result<(), String> {
    let missing = record.driver_features & !device.features();
    if missing != 0 {
        return Err(format!(
            "the backend does not offer {}, which the guest's driver of the device \
             tagged {:?} acked in the snapshot",
            feature_names(missing),
            device.tag()
        ));
    }
    let recorded = record.queues.iter().map(|queue| queue.max_size);
    if let Some((saved, _)) = recorded
        .zip(device.queue_max_sizes())
        .find(|(saved, max)| saved != *max)
    {
        return Err(format!(
            "the snapshot's device tagged {:?} has queues of {saved} entries: give it \
             queue-size={saved}",
            device.tag()
        ));
    }
    Ok(())
}

/// The virtio features in `bits`, by name where the device knows them.
pub fn feature_names(bits: u64) -> String {
    (0..64)
        .map(|bit| 1u64 << bit)
        .filter(|feature| bits & feature != 0)
        .map(|feature| match feature {
            VIRTIO_F_VERSION_1 => "VIRTIO_F_VERSION_1".to_string(),
            VIRTIO_RING_F_INDIRECT_DESC => "VIRTIO_RING_F_INDIRECT_DESC".to_string(),
            VIRTIO_RING_F_EVENT_IDX => "VIRTIO_RING_F_EVENT_IDX".to_string(),
            other => format!("feature bit {}", other.trailing_zeros()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
