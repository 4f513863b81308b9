//! The queues of a VM template's device that serves nothing yet (a
//! pending virtio-fs device or network card): held from the driver's
//! DRIVER_OK until the snapshot takes them.

use virtio_queue::Queue;

use super::ActiveQueue;

#[derive(Default)]
pub struct HeldQueues {
    queues: Option<Vec<ActiveQueue>>,
}

impl HeldQueues {
    /// Keeps what the driver set up; `device` names it in errors.
    pub fn hold(&mut self, queues: Vec<ActiveQueue>, device: &str) -> Result<(), String> {
        if self.queues.is_some() {
            return Err(format!("the {device} is already active"));
        }
        self.queues = Some(queues);
        Ok(())
    }

    /// The driver reset the device.
    pub fn drop_all(&mut self) {
        self.queues = None;
    }

    /// For the snapshot: the queues, in order.
    pub fn take(&mut self, device: &str) -> Result<Vec<Queue>, String> {
        let queues = self
            .queues
            .take()
            .ok_or_else(|| format!("the {device} was not set up by the guest's driver"))?;
        Ok(queues.into_iter().map(|active| active.queue).collect())
    }
}
