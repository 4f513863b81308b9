//! COM1: a 16550 UART (vm-superio) whose output goes to the console sink
//! and whose interrupt reaches the guest through an irqfd.

use std::io::Write;

use serde::{Deserialize, Serialize};
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

    /// The UART's registers, for a snapshot.
    pub fn save(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// A UART as `state` recorded it; a receive FIFO longer than the
    /// UART's is refused.
    pub fn restore(
        irq: EventFd,
        output: Box<dyn Write + Send>,
        state: &SerialState,
    ) -> Result<Serial, String> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        let uart = vm_superio::Serial::from_state(&state, IrqTrigger(irq), NoEvents, output)
            .map_err(|e| format!("serial port: {e:?}"))?;
        Ok(Serial { uart })
    }
}

/// vm-superio's SerialState, which has no serde form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
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
