//! Just enough of the PC keyboard controller for the classic way to reset
//! a PC (`reboot=k`): writing 0xfe to its command port.

use super::bus::{BusDevice, GuestRequest};

/// Ports 0x60 (data) to 0x64 (command/status).
pub const I8042_BASE: u64 = 0x60;
pub const I8042_LEN: u64 = 5;
const COMMAND_OFFSET: u64 = 4;
const COMMAND_PULSE_RESET: u8 = 0xfe;

pub struct I8042;

impl BusDevice for I8042 {
    /// Status 0: no data waiting, input buffer empty, so a guest polling
    /// before a command never spins.
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
        (offset == COMMAND_OFFSET && data.first() == Some(&COMMAND_PULSE_RESET))
            .then_some(GuestRequest::Reset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pulse_reset_command_resets() {
        assert_eq!(I8042.write(4, &[0xfe]), Some(GuestRequest::Reset));
        assert_eq!(I8042.write(0, &[0xfe]), None);
        assert_eq!(I8042.write(4, &[0xad]), None);
    }
}
