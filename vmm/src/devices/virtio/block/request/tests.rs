use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::devices::virtio::block::disk::tests::patterned_disk;

const F_WRITE: u16 = 2;
const MEM_SIZE: u64 = 0x10_0000;
const HEADER: u64 = 0x1000;
const DATA: u64 = 0x2000;
const STATUS: u64 = 0x8000;
const UNTOUCHED: u8 = 0xee;
const DISK_SECTORS: u64 = 8;

fn memory() -> GuestMemory {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)]).unwrap();
    mem.write_slice(&vec![UNTOUCHED; MEM_SIZE as usize], GuestAddress(0))
        .unwrap();
    mem
}

fn header(mem: &GuestMemory, request_type: u32, sector: u64) {
    mem.write_obj(request_type.to_le(), GuestAddress(HEADER))
        .unwrap();
    mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
    mem.write_obj(sector.to_le(), GuestAddress(HEADER + 8))
        .unwrap();
}

fn r(addr: u64, len: u32) -> Descriptor {
    Descriptor::new(addr, len, 0, 0)
}

fn w(addr: u64, len: u32) -> Descriptor {
    Descriptor::new(addr, len, F_WRITE, 0)
}

fn byte(mem: &GuestMemory, addr: u64) -> u8 {
    mem.read_obj(GuestAddress(addr)).unwrap()
}

fn bytes(mem: &GuestMemory, addr: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    mem.read_slice(&mut out, GuestAddress(addr)).unwrap();
    out
}

/// What the patterned disk holds at byte `offset`.
fn disk_byte(offset: u64) -> u8 {
    (offset / SECTOR_SIZE + offset) as u8
}

/// Runs a request of `request_type` at `sector` framed as `descriptors`.
fn run(request_type: u32, sector: u64, descriptors: Vec<Descriptor>) -> (GuestMemory, u32) {
    let mem = memory();
    header(&mem, request_type, sector);
    let used = handle(descriptors, &mem, &patterned_disk(DISK_SECTORS));
    (mem, used)
}

#[test]
fn a_read_fills_every_segment_and_reports_data_plus_status() {
    let chain = vec![
        r(HEADER, 16),
        w(DATA, 512),
        w(DATA + 0x1000, 1024),
        w(STATUS, 1),
    ];
    let (mem, used) = run(VIRTIO_BLK_T_IN, 2, chain);
    assert_eq!(used, 512 + 1024 + 1);
    assert_eq!(byte(&mem, STATUS), VIRTIO_BLK_S_OK);
    let first: Vec<u8> = (1024..1536).map(disk_byte).collect();
    let second: Vec<u8> = (1536..2560).map(disk_byte).collect();
    assert_eq!(bytes(&mem, DATA, 512), first);
    assert_eq!(bytes(&mem, DATA + 0x1000, 1024), second);
    assert_eq!(byte(&mem, DATA + 512), UNTOUCHED);
}

#[test]
fn framing_does_not_depend_on_descriptor_boundaries() {
    // Header split in two, status sharing the data's descriptor.
    let chain = vec![r(HEADER, 10), r(HEADER + 10, 6), w(DATA, 513)];
    let (mem, used) = run(VIRTIO_BLK_T_IN, 7, chain);
    assert_eq!(used, 513);
    assert_eq!(byte(&mem, DATA + 512), VIRTIO_BLK_S_OK);
    let expected: Vec<u8> = (3584..4096).map(disk_byte).collect();
    assert_eq!(bytes(&mem, DATA, 512), expected);
}

#[test]
fn empty_descriptors_are_skipped() {
    let chain = vec![
        r(HEADER, 16),
        w(DATA, 0),
        w(DATA, 512),
        w(STATUS, 1),
        w(0, 0),
    ];
    let (mem, used) = run(VIRTIO_BLK_T_IN, 0, chain);
    assert_eq!((used, byte(&mem, STATUS)), (513, VIRTIO_BLK_S_OK));
}

#[test]
fn get_id_returns_the_padded_serial() {
    let chain = vec![r(HEADER, 16), w(DATA, 20), w(STATUS, 1)];
    let (mem, used) = run(VIRTIO_BLK_T_GET_ID, 0, chain);
    assert_eq!(used, 21);
    assert_eq!(byte(&mem, STATUS), VIRTIO_BLK_S_OK);
    let mut expected = b"runvm-root".to_vec();
    expected.resize(20, 0);
    assert_eq!(bytes(&mem, DATA, 20), expected);
}

#[test]
fn get_id_fills_no_more_than_the_buffer_or_20_bytes() {
    let (mem, used) = run(
        VIRTIO_BLK_T_GET_ID,
        0,
        vec![r(HEADER, 16), w(DATA, 4), w(STATUS, 1)],
    );
    assert_eq!(used, 5);
    assert_eq!(bytes(&mem, DATA, 5), b"runv\xee");
    let (mem, used) = run(
        VIRTIO_BLK_T_GET_ID,
        0,
        vec![r(HEADER, 16), w(DATA, 64), w(STATUS, 1)],
    );
    assert_eq!(used, 21);
    assert_eq!(byte(&mem, DATA + 20), UNTOUCHED);
}

#[test]
fn writes_are_refused_on_a_read_only_disk() {
    let chain = vec![r(HEADER, 16), r(DATA, 512), w(STATUS, 1)];
    let (mem, used) = run(VIRTIO_BLK_T_OUT, 0, chain);
    assert_eq!((used, byte(&mem, STATUS)), (1, VIRTIO_BLK_S_IOERR));
}

#[test]
fn other_request_types_are_unsupported() {
    for request_type in [4, 11, 13, 99, u32::MAX] {
        let (mem, used) = run(request_type, 0, vec![r(HEADER, 16), w(STATUS, 1)]);
        assert_eq!(used, 1, "type {request_type}");
        assert_eq!(byte(&mem, STATUS), VIRTIO_BLK_S_UNSUPP);
    }
}

#[test]
fn reads_beyond_the_capacity_fail() {
    for (sector, len) in [
        (DISK_SECTORS, 512),
        (DISK_SECTORS - 1, 1024),
        (u64::MAX, 512),
        (u64::MAX / SECTOR_SIZE, 512),
    ] {
        let chain = vec![r(HEADER, 16), w(DATA, len), w(STATUS, 1)];
        let (mem, used) = run(VIRTIO_BLK_T_IN, sector, chain);
        assert_eq!(used, 1, "sector {sector}");
        assert_eq!(byte(&mem, STATUS), VIRTIO_BLK_S_IOERR);
        assert_eq!(byte(&mem, DATA), UNTOUCHED);
    }
    // The last sector itself is readable.
    let chain = vec![r(HEADER, 16), w(DATA, 512), w(STATUS, 1)];
    assert_eq!(run(VIRTIO_BLK_T_IN, DISK_SECTORS - 1, chain).1, 513);
}

#[test]
fn absurd_or_partial_sector_lengths_fail() {
    for len in [100, 513, u32::MAX - 1] {
        let chain = vec![r(HEADER, 16), w(DATA, len), w(STATUS, 1)];
        let (mem, used) = run(VIRTIO_BLK_T_IN, 0, chain);
        assert_eq!((used, byte(&mem, STATUS)), (1, VIRTIO_BLK_S_IOERR), "{len}");
    }
}

#[test]
fn data_outside_guest_memory_fails_before_anything_is_read() {
    let chain = vec![
        r(HEADER, 16),
        w(DATA, 512),
        w(MEM_SIZE - 256, 512),
        w(STATUS, 1),
    ];
    let (mem, used) = run(VIRTIO_BLK_T_IN, 0, chain);
    assert_eq!((used, byte(&mem, STATUS)), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(byte(&mem, DATA), UNTOUCHED);
}

#[test]
fn a_read_into_a_device_readable_buffer_fails() {
    let chain = vec![r(HEADER, 16), r(DATA, 512), w(STATUS, 1)];
    let (mem, used) = run(VIRTIO_BLK_T_IN, 0, chain);
    assert_eq!((used, byte(&mem, STATUS)), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(byte(&mem, DATA), UNTOUCHED);
}

#[test]
fn a_short_header_fails() {
    let (mem, used) = run(VIRTIO_BLK_T_IN, 0, vec![r(HEADER, 15), w(STATUS, 1)]);
    assert_eq!((used, byte(&mem, STATUS)), (1, VIRTIO_BLK_S_IOERR));
}

#[test]
fn readable_after_writable_fails() {
    let chain = vec![
        r(HEADER, 16),
        w(DATA, 512),
        r(DATA + 0x1000, 16),
        w(STATUS, 1),
    ];
    let (mem, used) = run(VIRTIO_BLK_T_IN, 0, chain);
    assert_eq!((used, byte(&mem, STATUS)), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(byte(&mem, DATA), UNTOUCHED);
}

#[test]
fn too_many_descriptors_fail_with_a_status() {
    let mut chain = vec![r(HEADER, 16)];
    chain.extend((0..SEG_MAX as u64 + 1).map(|i| w(DATA + i * 512, 512)));
    chain.push(w(STATUS, 1));
    let (mem, used) = run(VIRTIO_BLK_T_IN, 0, chain);
    assert_eq!((used, byte(&mem, STATUS)), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(byte(&mem, DATA), UNTOUCHED);
}

#[test]
fn a_chain_without_a_status_byte_is_dropped_untouched() {
    for chain in [
        vec![],
        vec![r(HEADER, 16)],
        vec![r(HEADER, 16), r(DATA, 512)],
        // The status descriptor is not device-writable.
        vec![r(HEADER, 16), w(DATA, 512), r(STATUS, 1)],
        // The status byte is outside guest memory.
        vec![r(HEADER, 16), w(DATA, 512), w(MEM_SIZE, 1)],
        vec![r(HEADER, 16), w(u64::MAX, 2)],
    ] {
        let (mem, used) = run(VIRTIO_BLK_T_IN, 0, chain.clone());
        assert_eq!(used, 0, "{chain:?}");
        assert_eq!(byte(&mem, DATA), UNTOUCHED);
        assert_eq!(byte(&mem, STATUS), UNTOUCHED);
    }
}
