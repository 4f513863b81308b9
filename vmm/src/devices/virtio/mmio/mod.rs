//! The virtio-mmio transport, register layout version 2 (virtio 1.2,
//! section 4.2.2). The guest finds each device through a
//! `virtio_mmio.device=<size>@<base>:<irq>` kernel parameter.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{ActiveQueue, Interrupt, VirtioDevice};
use crate::devices::bus::{BusDevice, GuestRequest};
use crate::memory::GuestMemory;

mod snapshot;
#[cfg(test)]
pub(crate) mod test_driver;

pub use snapshot::{QueueSnapshot, TransportState};

/// Each device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4d56_5552; // "RUVM"

// Register offsets.
const REG_MAGIC: u64 = 0x000;
const REG_VERSION: u64 = 0x004;
const REG_DEVICE_ID: u64 = 0x008;
const REG_VENDOR_ID: u64 = 0x00c;
const REG_DEVICE_FEATURES: u64 = 0x010;
const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
const REG_DRIVER_FEATURES: u64 = 0x020;
const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
const REG_QUEUE_SEL: u64 = 0x030;
const REG_QUEUE_NUM_MAX: u64 = 0x034;
const REG_QUEUE_NUM: u64 = 0x038;
const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
const REG_INTERRUPT_STATUS: u64 = 0x060;
const REG_INTERRUPT_ACK: u64 = 0x064;
const REG_STATUS: u64 = 0x070;
const REG_QUEUE_DESC_LOW: u64 = 0x080;
const REG_QUEUE_DESC_HIGH: u64 = 0x084;
const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const REG_CONFIG_GENERATION: u64 = 0x0fc;
const CONFIG_SPACE: u64 = 0x100;

// Device status bits.
const STATUS_ACKNOWLEDGE: u32 = 1;
const STATUS_DRIVER: u32 = 2;
const STATUS_DRIVER_OK: u32 = 4;
const STATUS_FEATURES_OK: u32 = 8;
const STATUS_FAILED: u32 = 128;

pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    interrupt: Arc<Interrupt>,
    /// One per queue, registered with KVM as ioeventfds on QueueNotify.
    notify: Vec<EventFd>,
    queues: Vec<Queue>,
    status: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    active: bool,
    /// Restored from a snapshot as live: `queues` go to the device when
    /// the restored VM is about to run (see [`MmioTransport::resume`]).
    resume_pending: bool,
}

impl MmioTransport {
    /// `notify` holds one eventfd per queue of `device`.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        notify: Vec<EventFd>,
    ) -> Result<MmioTransport, String> {
        let queues = new_queues(device.as_ref())?;
        if notify.len() != queues.len() {
            return Err(format!(
                "{} notification eventfds for {} queues",
                notify.len(),
                queues.len()
            ));
        }
        Ok(MmioTransport {
            device,
            mem,
            interrupt,
            notify,
            queues,
            status: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            active: false,
            resume_pending: false,
        })
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may only change while the driver sets the device up.
    fn queue_config_allowed(&self) -> bool {
        !self.active && self.status & STATUS_FEATURES_OK != 0 && self.status & STATUS_FAILED == 0
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC => MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device.device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_select {
                0 => self.device.features() as u32,
                1 => (self.device.features() >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| q.max_size().into()),
            REG_QUEUE_READY => self.selected_queue().map_or(0, |q| q.ready().into()),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            // The configuration space never changes under the driver.
            REG_CONFIG_GENERATION => 0,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let setting_up = self.queue_config_allowed();
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_select = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            // Frozen once the device has accepted them.
            REG_DRIVER_FEATURES if self.status & STATUS_FEATURES_OK == 0 => {
                let shift = match self.driver_features_select {
                    0 => 0,
                    1 => 32,
                    _ => return,
                };
                let mask = 0xffff_ffffu64 << shift;
                self.driver_features = (self.driver_features & !mask) | (u64::from(value) << shift);
            }
            REG_QUEUE_SEL => self.queue_select = value,
            REG_QUEUE_NUM if setting_up => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_size(value as u16);
                }
            }
            REG_QUEUE_READY if setting_up => {
                if let Some(queue) = self.selected_queue() {
                    queue.set_ready(value == 1);
                }
            }
            REG_QUEUE_DESC_LOW | REG_QUEUE_DESC_HIGH if setting_up => {
                let (low, high) = split(offset == REG_QUEUE_DESC_LOW, value);
                if let Some(queue) = self.selected_queue() {
                    queue.set_desc_table_address(low, high);
                }
            }
            REG_QUEUE_DRIVER_LOW | REG_QUEUE_DRIVER_HIGH if setting_up => {
                let (low, high) = split(offset == REG_QUEUE_DRIVER_LOW, value);
                if let Some(queue) = self.selected_queue() {
                    queue.set_avail_ring_address(low, high);
                }
            }
            REG_QUEUE_DEVICE_LOW | REG_QUEUE_DEVICE_HIGH if setting_up => {
                let (low, high) = split(offset == REG_QUEUE_DEVICE_LOW, value);
                if let Some(queue) = self.selected_queue() {
                    queue.set_used_ring_address(low, high);
                }
            }
            REG_QUEUE_NOTIFY => {
                // Normally caught by KVM's ioeventfd; forward it if not.
                if let Some(event) = self.notify.get(value as usize) {
                    let _ = event.write(1);
                }
            }
            REG_INTERRUPT_ACK => self.interrupt.acknowledge(value),
            REG_STATUS => self.set_status(value),
            _ => {}
        }
    }

    fn set_status(&mut self, status: u32) {
        if status == 0 {
            self.reset();
            return;
        }
        // The driver may only add bits, in the order the spec lays down.
        if status & self.status != self.status {
            return;
        }
        let added = status & !self.status;
        if added & STATUS_FEATURES_OK != 0 {
            let offered = self.device.features();
            if self.driver_features & !offered != 0
                || self.driver_features & super::VIRTIO_F_VERSION_1 == 0
            {
                // Features the device never offered, or a legacy driver:
                // leave FEATURES_OK unset so the driver sees the refusal.
                self.status = status & !STATUS_FEATURES_OK;
                return;
            }
        }
        self.status = status;
        if added & STATUS_DRIVER_OK != 0 && !self.active {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let needed = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;
        let all_valid = self
            .queues
            .iter()
            .all(|q| !q.ready() || q.is_valid(&self.mem));
        if self.status & needed != needed || !all_valid {
            self.status |= STATUS_FAILED;
            return;
        }
        let mut active = Vec::with_capacity(self.queues.len());
        for (queue, notify) in self.queues.iter_mut().zip(&self.notify) {
            let Ok(notify) = notify.try_clone() else {
                self.status |= STATUS_FAILED;
                return;
            };
            // The device owns the live queues; reset() makes fresh ones.
            active.push(ActiveQueue {
                queue: std::mem::take(queue),
                notify,
            });
        }
        match self.device.activate(
            self.mem.clone(),
            self.driver_features,
            active,
            self.interrupt.clone(),
        ) {
            Ok(()) => self.active = true,
            Err(_) => self.status |= STATUS_FAILED,
        }
    }

    fn reset(&mut self) {
        if self.active && !self.device.reset() {
            // A device that cannot stop keeps its queues; the driver sees
            // the reset refused.
            self.status |= STATUS_FAILED;
            return;
        }
        self.active = false;
        self.status = 0;
        self.driver_features = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.queue_select = 0;
        match new_queues(self.device.as_ref()) {
            Ok(queues) => self.queues = queues,
            Err(_) => self.status = STATUS_FAILED,
        }
        self.interrupt.clear();
    }
}

fn new_queues(device: &dyn VirtioDevice) -> Result<Vec<Queue>, String> {
    device
        .queue_max_sizes()
        .iter()
        .map(|&max| Queue::new(max).map_err(|e| format!("queue of size {max}: {e:?}")))
        .collect()
}

fn split(low: bool, value: u32) -> (Option<u32>, Option<u32>) {
    if low {
        (Some(value), None)
    } else {
        (None, Some(value))
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device.read_config(offset - CONFIG_SPACE, data);
            return;
        }
        // Registers are 32 bits wide and read whole.
        if data.len() != 4 || !offset.is_multiple_of(4) {
            data.fill(0);
            return;
        }
        let value = self.read_register(offset);
        data.copy_from_slice(&value.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        if offset >= CONFIG_SPACE {
            self.device.write_config(offset - CONFIG_SPACE, data);
            return None;
        }
        if let (Ok(bytes), true) = (<[u8; 4]>::try_from(data), offset.is_multiple_of(4)) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::test_driver::{negotiate, read, set_up_queue, write};
    use super::*;
    use crate::memory::create_guest_memory;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Record {
        activated_with: Option<(u64, usize)>,
        resets: usize,
    }

    struct Dummy(Arc<Mutex<Record>>);

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            19
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn features(&self) -> u64 {
            super::super::VIRTIO_F_VERSION_1 | 1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 0x40);
        }
        fn activate(
            &mut self,
            _mem: GuestMemory,
            features: u64,
            queues: Vec<ActiveQueue>,
            _interrupt: Arc<Interrupt>,
        ) -> Result<(), String> {
            self.0.lock().unwrap().activated_with = Some((features, queues.len()));
            Ok(())
        }
        fn reset(&mut self) -> bool {
            self.0.lock().unwrap().resets += 1;
            true
        }
    }

    fn transport() -> (MmioTransport, Arc<Mutex<Record>>) {
        let record = Arc::new(Mutex::new(Record::default()));
        let mem = create_guest_memory(64 << 20).unwrap();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let notify = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let transport =
            MmioTransport::new(Box::new(Dummy(record.clone())), mem, interrupt, notify).unwrap();
        (transport, record)
    }

    #[test]
    fn identifies_as_a_version_2_device() {
        let (mut t, _) = transport();
        assert_eq!(read(&mut t, REG_MAGIC), MAGIC_VALUE);
        assert_eq!(read(&mut t, REG_VERSION), 2);
        assert_eq!(read(&mut t, REG_DEVICE_ID), 19);
        write(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(read(&mut t, REG_DEVICE_FEATURES), 1);
        write(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(read(&mut t, REG_QUEUE_NUM_MAX), 16);
        write(&mut t, REG_QUEUE_SEL, 7);
        assert_eq!(read(&mut t, REG_QUEUE_NUM_MAX), 0);
    }

    #[test]
    fn config_space_reads_go_to_the_device() {
        let (mut t, _) = transport();
        let mut byte = [0u8; 1];
        t.read(CONFIG_SPACE + 2, &mut byte);
        assert_eq!(byte, [0x42]);
    }

    #[test]
    fn unaligned_or_narrow_register_accesses_are_ignored() {
        let (mut t, _) = transport();
        let mut two = [0xaa; 2];
        t.read(REG_MAGIC, &mut two);
        assert_eq!(two, [0, 0]);
        t.write(REG_STATUS + 1, &[1, 0, 0, 0]);
        assert_eq!(read(&mut t, REG_STATUS), 0);
    }

    #[test]
    fn features_not_offered_are_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t, super::super::VIRTIO_F_VERSION_1 | 1 << 5);
        assert_eq!(read(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn a_legacy_driver_is_refused() {
        let (mut t, _) = transport();
        negotiate(&mut t, 1);
        assert_eq!(read(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn driver_ok_activates_with_the_accepted_features_and_queues() {
        let (mut t, record) = transport();
        let features = super::super::VIRTIO_F_VERSION_1;
        negotiate(&mut t, features);
        set_up_queue(&mut t, 0, 0x10_0000);
        set_up_queue(&mut t, 1, 0x20_0000);
        write(&mut t, REG_STATUS, 0xf);
        assert_eq!(read(&mut t, REG_STATUS), 0xf);
        assert_eq!(record.lock().unwrap().activated_with, Some((features, 2)));
    }

    #[test]
    fn a_queue_outside_guest_memory_fails_the_device() {
        let (mut t, record) = transport();
        negotiate(&mut t, super::super::VIRTIO_F_VERSION_1);
        set_up_queue(&mut t, 0, 0x7fff_0000); // beyond 64 MiB of RAM
        write(&mut t, REG_STATUS, 0xf);
        assert_ne!(read(&mut t, REG_STATUS) & STATUS_FAILED, 0);
        assert_eq!(record.lock().unwrap().activated_with, None);
    }

    #[test]
    fn writing_zero_status_resets_an_active_device() {
        let (mut t, record) = transport();
        negotiate(&mut t, super::super::VIRTIO_F_VERSION_1);
        set_up_queue(&mut t, 0, 0x10_0000);
        write(&mut t, REG_STATUS, 0xf);
        write(&mut t, REG_STATUS, 0);
        assert_eq!(read(&mut t, REG_STATUS), 0);
        assert_eq!(record.lock().unwrap().resets, 1);
        write(&mut t, REG_QUEUE_SEL, 0);
        assert_eq!(read(&mut t, REG_QUEUE_READY), 0);
    }

    #[test]
    fn queue_registers_are_frozen_once_live() {
        let (mut t, _) = transport();
        negotiate(&mut t, super::super::VIRTIO_F_VERSION_1);
        set_up_queue(&mut t, 0, 0x10_0000);
        write(&mut t, REG_STATUS, 0xf);
        write(&mut t, REG_QUEUE_SEL, 1);
        write(&mut t, REG_QUEUE_READY, 1);
        assert_eq!(read(&mut t, REG_QUEUE_READY), 0);
    }

    #[test]
    fn a_held_interrupt_bit_survives_acknowledgement_until_reset() {
        let (mut t, _) = transport();
        t.interrupt.hold(super::super::INTERRUPT_USED_BUFFER);
        assert_eq!(read(&mut t, REG_INTERRUPT_STATUS), 1);
        write(&mut t, REG_INTERRUPT_ACK, 1);
        assert_eq!(read(&mut t, REG_INTERRUPT_STATUS), 1);
        write(&mut t, REG_STATUS, 0);
        assert_eq!(read(&mut t, REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn interrupt_status_is_acknowledged_bit_by_bit() {
        let (mut t, _) = transport();
        t.interrupt.signal_used_buffer();
        t.interrupt.signal_config_change();
        assert_eq!(read(&mut t, REG_INTERRUPT_STATUS), 3);
        write(&mut t, REG_INTERRUPT_ACK, 1);
        assert_eq!(read(&mut t, REG_INTERRUPT_STATUS), 2);
    }
}
