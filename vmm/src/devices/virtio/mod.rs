//! virtio devices (virtio 1.x) and the MMIO transport that presents them
//! to the guest.

pub mod block;
pub mod fs;
pub mod held_queues;
pub mod mmio;
pub mod net;
pub mod vsock;

use std::sync::atomic::{AtomicU32, Ordering};

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use crate::memory::GuestMemory;

/// Feature bit every modern device offers: the virtio 1.x layout.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;

/// Interrupt status bits of the MMIO transport.
pub const INTERRUPT_USED_BUFFER: u32 = 1;
pub const INTERRUPT_CONFIG_CHANGE: u32 = 2;

/// The device's interrupt line: a status word the driver reads and
/// acknowledges through the transport, and the irqfd that raises the line.
pub struct Interrupt {
    status: AtomicU32,
    /// Bits that read as set whatever the driver acknowledges; see
    /// [`Interrupt::hold`].
    held: AtomicU32,
    irqfd: EventFd,
}

impl Interrupt {
    pub fn new(irqfd: EventFd) -> Interrupt {
        Interrupt {
            status: AtomicU32::new(0),
            held: AtomicU32::new(0),
            irqfd,
        }
    }

    /// The eventfd KVM turns into the guest interrupt. A vhost-user backend
    /// gets it as its call fd and raises the line without the VMM.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }

    /// Makes `bits` read as set in InterruptStatus until released, for a
    /// device whose interrupts are raised by someone else through the
    /// irqfd, so that the VMM cannot set the status bit at the time. The
    /// driver then treats every interrupt on the line as "used buffers":
    /// it checks its used rings, which say what really completed.
    pub fn hold(&self, bits: u32) {
        self.held.fetch_or(bits, Ordering::AcqRel);
    }

    pub fn release(&self, bits: u32) {
        self.held.fetch_and(!bits, Ordering::AcqRel);
    }

    /// Tells the driver that used buffers are waiting.
    pub fn signal_used_buffer(&self) {
        self.raise(INTERRUPT_USED_BUFFER);
    }

    pub fn signal_config_change(&self) {
        self.raise(INTERRUPT_CONFIG_CHANGE);
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        // A full eventfd counter already means "raised".
        let _ = self.irqfd.write(1);
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire) | self.held.load(Ordering::Acquire)
    }

    /// The driver's InterruptACK: held bits stay set.
    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// A restored device's pending bits, as its snapshot recorded them.
    pub fn restore_status(&self, bits: u32) {
        self.status.store(bits, Ordering::Release);
    }

    /// Device reset: nothing pending, nothing held.
    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.held.store(0, Ordering::Release);
    }
}

/// Copies what a driver reads at `offset` of a read-only configuration
/// space `config` into `data`; bytes past its end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = start
            .checked_add(i)
            .and_then(|at| config.get(at))
            .copied()
            .unwrap_or(0);
    }
}

/// A device's worker thread and the eventfd that tells it to stop; the
/// thread hands back what it owned.
pub struct DeviceThread<T> {
    stop: EventFd,
    thread: std::thread::JoinHandle<T>,
}

impl<T> DeviceThread<T> {
    pub fn new(stop: EventFd, thread: std::thread::JoinHandle<T>) -> DeviceThread<T> {
        DeviceThread { stop, thread }
    }

    /// Stops the thread and waits for it: what it handed back, or None
    /// if it panicked.
    pub fn stop(self) -> Option<T> {
        let _ = self.stop.write(1);
        self.thread.join().ok()
    }
}

/// A split queue set up as a driver would, for device tests: rings at
/// (descriptors, available, used), `size` entries.
#[cfg(test)]
pub fn test_queue(mem: &GuestMemory, rings: (u64, u64, u64), max: u16, size: u16) -> Queue {
    use virtio_queue::QueueT;
    let (desc, avail, used) = rings;
    let mut queue = Queue::new(max).unwrap();
    queue.set_size(size);
    queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    queue.set_ready(true);
    assert!(queue.is_valid(mem));
    queue
}

/// The queues a driver set up, handed to the device when it becomes live.
pub struct ActiveQueue {
    pub queue: Queue,
    /// Signalled (through KVM's ioeventfd) when the driver notifies.
    pub notify: EventFd,
}

/// What a device type provides; the transport does the rest.
pub trait VirtioDevice: Send {
    /// The virtio device id (e.g. 19 for vsock).
    fn device_type(&self) -> u32;
    /// The largest size of each queue; their count is the device's queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered, including [`VIRTIO_F_VERSION_1`].
    fn features(&self) -> u64;
    /// The device-specific configuration space, read by the driver.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Most devices have a read-only configuration space.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK: start serving. `features` are the ones it
    /// accepted. An error puts the device into the FAILED state.
    fn activate(
        &mut self,
        mem: GuestMemory,
        features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: std::sync::Arc<Interrupt>,
    ) -> Result<(), String>;
    /// The driver reset the device: stop serving and drop the queues.
    /// Returns false when the device cannot be reset.
    fn reset(&mut self) -> bool;
    /// For a snapshot of the paused VM: stop serving and hand back the live
    /// queues, in order; the device stays stopped. A device whose state
    /// lives outside the VMM (a vhost-user backend, a tap) refuses.
    fn pause(&mut self) -> Result<Vec<Queue>, String> {
        Err(format!(
            "virtio device type {} cannot be saved in a snapshot",
            self.device_type()
        ))
    }
    /// Called before [`VirtioDevice::activate`] when the device comes back
    /// live from a snapshot, with the queues it had.
    fn restoring(&mut self) {}
    /// Whether the device holds nothing a snapshot would lose (such as a
    /// host connection); a snapshot waits a while for this.
    fn is_quiescent(&self) -> bool {
        true
    }
}
