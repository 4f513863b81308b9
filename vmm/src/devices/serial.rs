//! COM1: a 16550 UART (vm-superio) whose output goes to the console sink
//! and whose interrupt reaches the guest through an irqfd.

use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use super::bus::{BusDevice, GuestRequest};

pub const COM1_PORT: u64 = 0x3f8;
pub const COM1_PORT_COUNT: u64 = 8;
pub const COM1_IRQ: u32 = 4;

/// Raises the UART's interrupt by signalling the irqfd KVM listens on.
pub struct IrqTrigger(EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}

pub struct Serial {
    uart: vm_superio::Serial<IrqTrigger, NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    /// `irq` must be registered with KVM as the irqfd of [`COM1_IRQ`].
    pub fn new(irq: EventFd, output: Box<dyn Write + Send>) -> Serial {
        Serial {
            uart: vm_superio::Serial::new(IrqTrigger(irq), output),
        }
    }

    pub const PORT_COUNT: u64 = COM1_PORT_COUNT;
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data.len()) {
            (Ok(offset), 1) => data[0] = self.uart.read(offset),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        if let (Ok(offset), [value]) = (u8::try_from(offset), data) {
            // A console that cannot be written to must not stop the guest;
            // the bytes are lost, as on a disconnected serial line.
            let _ = self.uart.write(offset, *value);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_the_data_register_reach_the_sink() {
        let sink = Shared::default();
        let mut serial = Serial::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Box::new(sink.clone()),
        );
        for b in b"ok\n" {
            serial.write(0, &[*b]);
        }
        assert_eq!(sink.0.lock().unwrap().as_slice(), b"ok\n");
    }

    #[test]
    fn wide_accesses_are_ignored() {
        let mut serial = Serial::new(
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            Box::new(std::io::sink()),
        );
        let mut data = [0u8; 2];
        serial.read(0, &mut data);
        assert_eq!(data, [0xff, 0xff]);
    }
}
