//! A driver's register accesses, for tests of devices behind the
//! transport.

use super::*;

pub fn read(t: &mut MmioTransport, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    t.read(offset, &mut data);
    u32::from_le_bytes(data)
}

pub fn write(t: &mut MmioTransport, offset: u64, value: u32) {
    t.write(offset, &value.to_le_bytes());
}

/// ACKNOWLEDGE, DRIVER, `features` accepted, FEATURES_OK.
pub fn negotiate(t: &mut MmioTransport, features: u64) {
    write(t, REG_STATUS, STATUS_ACKNOWLEDGE);
    write(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    write(t, REG_DRIVER_FEATURES_SEL, 0);
    write(t, REG_DRIVER_FEATURES, features as u32);
    write(t, REG_DRIVER_FEATURES_SEL, 1);
    write(t, REG_DRIVER_FEATURES, (features >> 32) as u32);
    write(
        t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
}

/// Queue `index` of 16 entries, its rings at `base` and the next pages.
pub fn set_up_queue(t: &mut MmioTransport, index: u32, base: u64) {
    write(t, REG_QUEUE_SEL, index);
    write(t, REG_QUEUE_NUM, 16);
    write(t, REG_QUEUE_DESC_LOW, base as u32);
    write(t, REG_QUEUE_DESC_HIGH, 0);
    write(t, REG_QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
    write(t, REG_QUEUE_DRIVER_HIGH, 0);
    write(t, REG_QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
    write(t, REG_QUEUE_DEVICE_HIGH, 0);
    write(t, REG_QUEUE_READY, 1);
}

/// DRIVER_OK on top of what [`negotiate`] set: the device goes live.
pub fn driver_ok(t: &mut MmioTransport) {
    write(
        t,
        REG_STATUS,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
}

/// The status register: DRIVER_OK and nothing FAILED.
pub fn is_live(t: &mut MmioTransport) -> bool {
    read(t, REG_STATUS) & (STATUS_DRIVER_OK | STATUS_FAILED) == STATUS_DRIVER_OK
}

/// The driver kicks queue `index`.
pub fn notify(t: &mut MmioTransport, index: u32) {
    write(t, REG_QUEUE_NOTIFY, index);
}
