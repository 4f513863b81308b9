//! Routes a vCPU's port-I/O or MMIO access to the device owning that
//! address. One bus type serves both address spaces.

use std::sync::{Arc, Mutex, MutexGuard};

/// What a device access can ask of the VM as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestRequest {
    PowerOff,
    Reset,
}

pub trait BusDevice: Send {
    /// `offset` is relative to the device's first address.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest>;
}

struct Mapping {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

impl Mapping {
    fn contains(&self, address: u64) -> bool {
        address >= self.base && address - self.base < self.len
    }
}

#[derive(Default)]
pub struct Bus {
    mappings: Vec<Mapping>,
}

impl Bus {
    /// Panics on an empty or overlapping range: the device layout is fixed
    /// in code, so either is a bug.
    pub fn insert(&mut self, base: u64, len: u64, device: Arc<Mutex<dyn BusDevice>>) {
        let free = base
            .checked_add(len)
            .filter(|_| len > 0)
            .is_some_and(|end| {
                self.mappings
                    .iter()
                    .all(|m| end <= m.base || base >= m.base + m.len)
            });
        assert!(
            free,
            "address range {base:#x}+{len:#x} is empty or overlaps another device"
        );
        self.mappings.push(Mapping { base, len, device });
    }

    fn find(&self, address: u64) -> Option<(&Mapping, u64)> {
        self.mappings
            .iter()
            .find(|m| m.contains(address))
            .map(|m| (m, address - m.base))
    }

    /// Reads from an unclaimed address return all ones, like a floating bus.
    pub fn read(&self, address: u64, data: &mut [u8]) {
        match self.find(address) {
            Some((mapping, offset)) => lock(&mapping.device).read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Writes to an unclaimed address are dropped.
    pub fn write(&self, address: u64, data: &[u8]) -> Option<GuestRequest> {
        let (mapping, offset) = self.find(address)?;
        lock(&mapping.device).write(offset, data)
    }
}

/// A device whose lock was poisoned by a panicking vCPU thread is still
/// usable: device state is plain data.
fn lock(device: &Mutex<dyn BusDevice>) -> MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Recorder(Vec<(u64, u8)>);
    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<GuestRequest> {
            self.0.push((offset, data[0]));
            None
        }
    }

    #[test]
    fn accesses_reach_the_device_with_relative_offsets() {
        let device = Arc::new(Mutex::new(Recorder(Vec::new())));
        let mut bus = Bus::default();
        bus.insert(0x3f8, 8, device.clone());
        let mut data = [0u8; 1];
        bus.read(0x3fd, &mut data);
        assert_eq!(data, [5]);
        bus.write(0x3f8, b"x");
        assert_eq!(device.lock().unwrap().0, vec![(0, b'x')]);
    }

    #[test]
    fn unclaimed_addresses_read_all_ones() {
        let bus = Bus::default();
        let mut data = [0u8; 2];
        bus.read(0x80, &mut data);
        assert_eq!(data, [0xff, 0xff]);
        assert_eq!(bus.write(0x80, &[1]), None);
    }

    #[test]
    #[should_panic(expected = "overlaps")]
    fn overlapping_ranges_are_a_bug() {
        let mut bus = Bus::default();
        bus.insert(0x60, 8, Arc::new(Mutex::new(Recorder(Vec::new()))));
        bus.insert(0x64, 1, Arc::new(Mutex::new(Recorder(Vec::new()))));
    }
}
