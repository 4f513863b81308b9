//! virtio-fs (virtio 1.2, section 5.11) whose queues are served by a
//! vhost-user backend such as virtiofsd.
//!
//! The VMM keeps the parts a guest sees through the transport: the device
//! id, the features offered, and the configuration space (the tag and the
//! number of request queues). Everything on the queues happens between the
//! guest and the backend, with no VMM thread in the data path:
//!
//! - guest RAM is a memfd the backend maps too (`SET_MEM_TABLE`);
//! - a queue's *kick* is the ioeventfd KVM signals when the driver writes
//!   that queue's index to QueueNotify (`SET_VRING_KICK`);
//! - a queue's *call* is the device's irqfd, so the backend raises the
//!   guest interrupt itself (`SET_VRING_CALL`). virtio-mmio's driver reads
//!   InterruptStatus and scans the queues only when the used-buffer bit is
//!   set; nobody in the VMM sees the backend's calls, so while the backend
//!   owns the rings the device *holds* that bit (see
//!   [`Interrupt::hold`](super::Interrupt::hold)): each interrupt on the
//!   line makes the driver look at its used rings, which are the
//!   authoritative record of what completed.
//!
//! [`backend`] speaks vhost-user; [`device`] is the virtio device;
//! [`pending`] is the device of a VM template, whose backend comes when
//! the template is restored.

pub mod backend;
pub mod device;
#[cfg(test)]
mod mock_backend;
pub mod pending;
pub mod watch;

pub use device::VhostUserFs;
pub use pending::PendingFs;

/// virtio device id of a file system device.
pub const VIRTIO_ID_FS: u32 = 26;
/// Bytes of the tag in the configuration space.
pub const TAG_SIZE: usize = 36;
/// Request queues the device has. virtiofsd serves one; queue 0 is the
/// high-priority queue (FORGET, INTERRUPT), then come the request queues.
pub const REQUEST_QUEUES: u32 = 1;
/// Every queue of the device.
pub const QUEUE_COUNT: usize = 1 + REQUEST_QUEUES as usize;
