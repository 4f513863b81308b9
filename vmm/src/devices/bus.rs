//! Routes a vCPU's port access to the device owning that port.

use std::sync::{Arc, Mutex};

/// What a device access can ask of the VM as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestRequest {
    PowerOff,
    Reset,
}

pub trait PioDevice: Send {
    /// `offset` is relative to the device's first port.
    fn read(&mut self, offset: u16, data: &mut [u8]);
    fn write(&mut self, offset: u16, data: &[u8]) -> Option<GuestRequest>;
}

struct Mapping {
    base: u16,
    len: u16,
    device: Arc<Mutex<dyn PioDevice>>,
}

#[derive(Default)]
pub struct PioBus {
    mappings: Vec<Mapping>,
}

impl PioBus {
    /// Panics on overlapping ranges: the device layout is fixed in code.
    pub fn insert(&mut self, base: u16, len: u16, device: Arc<Mutex<dyn PioDevice>>) {
        let end = u32::from(base) + u32::from(len);
        assert!(
            self.mappings.iter().all(|m| {
                end <= u32::from(m.base) || u32::from(base) >= u32::from(m.base) + u32::from(m.len)
            }),
            "port range {base:#x}+{len} overlaps another device"
        );
        self.mappings.push(Mapping { base, len, device });
    }

    fn find(&self, port: u16) -> Option<(&Mapping, u16)> {
        self.mappings
            .iter()
            .find(|m| port >= m.base && u32::from(port) < u32::from(m.base) + u32::from(m.len))
            .map(|m| (m, port - m.base))
    }

    /// Reads from an unclaimed port return all ones, as on a PC.
    pub fn read(&self, port: u16, data: &mut [u8]) {
        match self.find(port) {
            Some((mapping, offset)) => lock(&mapping.device).read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes to an unclaimed port are dropped.
    pub fn write(&self, port: u16, data: &[u8]) -> Option<GuestRequest> {
        let (mapping, offset) = self.find(port)?;
        lock(&mapping.device).write(offset, data)
    }
}

/// A device whose lock was poisoned by a panicking vCPU thread is still
/// usable: device state is plain data.
fn lock<'a>(
    device: &'a Mutex<dyn PioDevice + 'static>,
) -> std::sync::MutexGuard<'a, dyn PioDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u16, u8)>);
    impl PioDevice for Recorder {
        fn read(&mut self, offset: u16, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u16, data: &[u8]) -> Option<GuestRequest> {
            self.0.push((offset, data[0]));
            None
        }
    }

    #[test]
    fn accesses_reach_the_device_with_relative_offsets() {
        let device = Arc::new(Mutex::new(Recorder(Vec::new())));
        let mut bus = PioBus::default();
        bus.insert(0x3f8, 8, device.clone());
        let mut data = [0u8; 1];
        bus.read(0x3fd, &mut data);
        assert_eq!(data, [5]);
        bus.write(0x3f8, b"x");
        assert_eq!(device.lock().unwrap().0, vec![(0, b'x')]);
    }

    #[test]
    fn unclaimed_ports_read_all_ones() {
        let bus = PioBus::default();
        let mut data = [0u8; 2];
        bus.read(0x80, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        assert_eq!(bus.write(0x80, &[1]), None);
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn overlapping_ranges_are_a_bug() {
        let mut bus = PioBus::default();
        bus.insert(0x60, 8, Arc::new(Mutex::new(Recorder(Vec::new()))));
        bus.insert(0x64, 1, Arc::new(Mutex::new(Recorder(Vec::new()))));
    }
}
