//! The port through which runvm's guest kernel says it is done (see
//! `guest-kernel/patches`): 0 for power-off or halt, 1 for reset (reboot,
//! or a panic with `panic=-1`).

use super::bus::{BusDevice, GuestRequest};

pub struct ExitPort;

impl BusDevice for ExitPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<GuestRequest> {
        match data.first() {
            Some(0) => Some(GuestRequest::PowerOff),
            Some(_) => Some(GuestRequest::Reset),
            None => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_powers_off_and_anything_else_resets() {
        assert_eq!(ExitPort.write(0, &[0]), Some(GuestRequest::PowerOff));
        assert_eq!(ExitPort.write(0, &[1]), Some(GuestRequest::Reset));
        assert_eq!(ExitPort.write(0, &[]), None);
    }
}
