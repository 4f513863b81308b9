//! A transport's registers and queues in a snapshot, and a transport
//! rebuilt from them: a live device is handed its queues again (the driver
//! does not set it up a second time).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{MmioTransport, STATUS_DRIVER_OK, STATUS_FAILED};
use crate::devices::virtio::{ActiveQueue, Interrupt, VirtioDevice};
use crate::memory::GuestMemory;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub status: u32,
    pub device_features_select: u32,
    pub driver_features_select: u32,
    pub driver_features: u64,
    pub queue_select: u32,
    /// The device was serving its queues (DRIVER_OK).
    pub active: bool,
    pub interrupt_status: u32,
    pub queues: Vec<QueueSnapshot>,
}

/// virtio_queue's QueueState, which has no serde form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> QueueSnapshot {
        QueueSnapshot {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(q: QueueSnapshot) -> QueueState {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl MmioTransport {
    pub fn is_quiescent(&self) -> bool {
        !self.active || self.device.is_quiescent()
    }

    /// The transport's state, for a snapshot of the paused VM. A live
    /// device is stopped to take its queues back, and stays stopped: the
    /// VM does not run on after it has been saved.
    pub fn save(&mut self) -> Result<TransportState, String> {
        let queues: Vec<QueueSnapshot> = if self.active {
            self.device
                .pause()?
                .iter()
                .map(|q| q.state().into())
                .collect()
        } else {
            self.queues.iter().map(|q| q.state().into()).collect()
        };
        Ok(TransportState {
            status: self.status,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            active: self.active,
            interrupt_status: self.interrupt.status(),
            queues,
        })
    }

    /// A transport for `device` as `state` recorded it. Nothing in `state`
    /// is trusted: the queue count must be the device's, each queue must
    /// fit the device and guest memory, and the features must be ones the
    /// device offers.
    pub fn restore(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        interrupt: Arc<Interrupt>,
        notify: Vec<EventFd>,
        state: &TransportState,
    ) -> Result<MmioTransport, String> {
        let mut transport = MmioTransport::new(device, mem, interrupt, notify)?;
        let maxima = transport.device.queue_max_sizes().to_vec();
        if state.queues.len() != maxima.len() {
            return Err(format!(
                "{} queues recorded for a device with {}",
                state.queues.len(),
                maxima.len()
            ));
        }
        if state.driver_features & !transport.device.features() != 0 {
            return Err(format!(
                "driver features {:#x} the device does not offer",
                state.driver_features
            ));
        }
        let mut queues = Vec::with_capacity(maxima.len());
        for (index, (saved, max)) in state.queues.iter().zip(maxima).enumerate() {
            if saved.max_size != max {
                return Err(format!(
                    "queue {index} recorded with maximum size {} where the device has {max}",
                    saved.max_size
                ));
            }
            let queue = Queue::try_from(QueueState::from(*saved))
                .map_err(|e| format!("queue {index}: {e:?}"))?;
            if queue.ready() && !queue.is_valid(&transport.mem) {
                return Err(format!("queue {index} lies outside guest memory"));
            }
            queues.push(queue);
        }
        transport.status = state.status;
        transport.device_features_select = state.device_features_select;
        transport.driver_features_select = state.driver_features_select;
        transport.driver_features = state.driver_features;
        transport.queue_select = state.queue_select;
        transport.interrupt.restore_status(state.interrupt_status);
        let live = state.status & STATUS_DRIVER_OK != 0 && state.status & STATUS_FAILED == 0;
        if state.active != live {
            return Err(format!(
                "recorded as {} with status {:#x}",
                if state.active { "live" } else { "idle" },
                state.status
            ));
        }
        transport.queues = queues;
        transport.resume_pending = state.active;
        Ok(transport)
    }

    /// Hands a device restored as live its queues: once the restored VM's
    /// interrupt controllers and vCPUs are set, so that nothing the device
    /// raises is overwritten by them.
    pub fn resume(&mut self) -> Result<(), String> {
        if !std::mem::take(&mut self.resume_pending) {
            return Ok(());
        }
        let mut active = Vec::with_capacity(self.queues.len());
        for (queue, notify) in self.queues.iter_mut().zip(&self.notify) {
            let notify = notify.try_clone().map_err(|e| e.to_string())?;
            active.push(ActiveQueue {
                queue: std::mem::take(queue),
                notify,
            });
        }
        // A kick the guest made just before the snapshot may not have been
        // served: a spurious one is harmless, a lost one would hang a queue.
        // Made before the device runs, so it can tell them from new ones.
        for notify in &self.notify {
            let _ = notify.write(1);
        }
        self.device.restoring();
        self.device.activate(
            self.mem.clone(),
            self.driver_features,
            active,
            self.interrupt.clone(),
        )?;
        self.active = true;
        Ok(())
    }
}
