//! One request from the driver: framing its descriptor chain, checking it,
//! and carrying it out. The driver is untrusted: every length, sector and
//! address it supplies is bounded before use, and a malformed chain ends
//! in an error status (or, when there is nowhere to put one, is dropped).

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::disk::DiskImage;
use super::{DISK_ID, ID_BYTES, MAX_REQUEST_BYTES, SECTOR_SIZE, SEG_MAX};
use crate::memory::GuestMemory;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// `struct virtio_blk_outhdr`: type, reserved, sector (little-endian).
pub const HEADER_SIZE: u64 = 16;
/// Header, [`SEG_MAX`] data segments, status.
const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    addr: GuestAddress,
    len: u32,
}

/// The chain read as the spec frames it (virtio 1.2, 2.6.4: the device
/// may not rely on how the driver splits it into descriptors): the
/// header is the first 16 device-readable bytes, the status the last
/// device-writable byte, and the data lies between.
struct Layout {
    readable: Vec<Segment>,
    /// Without the status byte.
    writable: Vec<Segment>,
    status: GuestAddress,
}

enum Framing {
    Usable(Layout),
    /// Has a status byte, but is no valid request.
    Malformed(GuestAddress),
    /// The last byte is not device-writable: no status can be reported.
    NoStatus,
}

/// Carries out the request in `descriptors` and returns the used length:
/// the bytes written into guest memory, status byte included, or 0 for a
/// chain dropped because it has no status byte.
pub fn handle<I>(descriptors: I, mem: &GuestMemory, disk: &DiskImage) -> u32
where
    I: IntoIterator<Item = Descriptor>,
{
    let layout = match frame(descriptors, mem) {
        Framing::Usable(layout) => layout,
        Framing::Malformed(status) => return complete(mem, status, VIRTIO_BLK_S_IOERR, 0),
        Framing::NoStatus => return 0,
    };
    match execute(&layout, mem, disk) {
        Ok(written) => complete(mem, layout.status, VIRTIO_BLK_S_OK, written),
        Err(status) => complete(mem, layout.status, status, 0),
    }
}

fn complete(mem: &GuestMemory, at: GuestAddress, status: u8, data_written: u32) -> u32 {
    match mem.write_obj(status, at) {
        Ok(()) => data_written + 1,
        Err(_) => 0,
    }
}

fn frame<I>(descriptors: I, mem: &GuestMemory) -> Framing
where
    I: IntoIterator<Item = Descriptor>,
{
    let (mut readable, mut writable) = (Vec::new(), Vec::new());
    let (mut count, mut misordered) = (0usize, false);
    let mut last = None;
    // The walk is bounded by the chain itself: virtio-queue follows at most
    // queue-size descriptors (or an indirect table's entries).
    for desc in descriptors {
        if desc.len() == 0 {
            continue;
        }
        let segment = Segment {
            addr: desc.addr(),
            len: desc.len(),
        };
        let device_writable = desc.is_write_only();
        last = Some((segment, device_writable));
        count += 1;
        // Past the limit the walk goes on only to find the status byte.
        if count > MAX_DESCRIPTORS {
            continue;
        }
        if device_writable {
            writable.push(segment);
        } else {
            // Readable buffers must all come before writable ones.
            misordered |= !writable.is_empty();
            readable.push(segment);
        }
    }
    let Some((tail, true)) = last else {
        return Framing::NoStatus;
    };
    let Some(status) = tail.addr.0.checked_add(u64::from(tail.len) - 1) else {
        return Framing::NoStatus;
    };
    let status = GuestAddress(status);
    if !mem.check_range(status, 1) {
        return Framing::NoStatus;
    }
    if misordered || count > MAX_DESCRIPTORS {
        return Framing::Malformed(status);
    }
    if let Some(segment) = writable.last_mut() {
        segment.len -= 1;
        if segment.len == 0 {
            writable.pop();
        }
    }
    Framing::Usable(Layout {
        readable,
        writable,
        status,
    })
}

/// The request's outcome: the data bytes written, or the error status.
fn execute(layout: &Layout, mem: &GuestMemory, disk: &DiskImage) -> Result<u32, u8> {
    let (request_type, sector) = read_header(mem, &layout.readable).ok_or(VIRTIO_BLK_S_IOERR)?;
    let readable_data = total_len(&layout.readable) - HEADER_SIZE;
    match request_type {
        VIRTIO_BLK_T_IN | VIRTIO_BLK_T_GET_ID => {
            // Data the device fills must be device-writable.
            if readable_data != 0 {
                return Err(VIRTIO_BLK_S_IOERR);
            }
            let data_len = total_len(&layout.writable);
            if data_len > MAX_REQUEST_BYTES || !layout.writable.iter().all(|s| in_memory(mem, s)) {
                return Err(VIRTIO_BLK_S_IOERR);
            }
            if request_type == VIRTIO_BLK_T_IN {
                read(mem, disk, &layout.writable, sector, data_len)
            } else {
                get_id(mem, &layout.writable, data_len)
            }
        }
        // The device is read-only (VIRTIO_BLK_F_RO).
        VIRTIO_BLK_T_OUT => Err(VIRTIO_BLK_S_IOERR),
        _ => Err(VIRTIO_BLK_S_UNSUPP),
    }
}

/// The header's type and sector, gathered from however many readable
/// descriptors hold it; None when the chain is too short.
fn read_header(mem: &GuestMemory, readable: &[Segment]) -> Option<(u32, u64)> {
    let mut header = [0u8; HEADER_SIZE as usize];
    let mut filled = 0usize;
    for segment in readable {
        if filled == header.len() {
            break;
        }
        let take = (header.len() - filled).min(segment.len as usize);
        mem.read_slice(&mut header[filled..filled + take], segment.addr)
            .ok()?;
        filled += take;
    }
    if filled < header.len() {
        return None;
    }
    let request_type = u32::from_le_bytes(header[0..4].try_into().ok()?);
    let sector = u64::from_le_bytes(header[8..16].try_into().ok()?);
    Some((request_type, sector))
}

fn read(
    mem: &GuestMemory,
    disk: &DiskImage,
    data: &[Segment],
    sector: u64,
    data_len: u64,
) -> Result<u32, u8> {
    if !data_len.is_multiple_of(SECTOR_SIZE) {
        return Err(VIRTIO_BLK_S_IOERR);
    }
    let start = sector
        .checked_mul(SECTOR_SIZE)
        .filter(|start| {
            start
                .checked_add(data_len)
                .is_some_and(|end| end <= disk.capacity_bytes())
        })
        .ok_or(VIRTIO_BLK_S_IOERR)?;
    let mut offset = start;
    for segment in data {
        for slice in mem.get_slices(segment.addr, segment.len as usize) {
            let slice = slice.map_err(|_| VIRTIO_BLK_S_IOERR)?;
            disk.read_exact_at(&slice, offset)
                .map_err(|_| VIRTIO_BLK_S_IOERR)?;
            offset += slice.len() as u64;
        }
    }
    // At most MAX_REQUEST_BYTES, which fits.
    u32::try_from(data_len).map_err(|_| VIRTIO_BLK_S_IOERR)
}

/// Writes the NUL-padded id into as much of the buffer as it fills.
fn get_id(mem: &GuestMemory, data: &[Segment], data_len: u64) -> Result<u32, u8> {
    let mut id = [0u8; ID_BYTES];
    id[..DISK_ID.len()].copy_from_slice(DISK_ID);
    let mut remaining = &id[..data_len.min(ID_BYTES as u64) as usize];
    for segment in data {
        if remaining.is_empty() {
            break;
        }
        let take = remaining.len().min(segment.len as usize);
        mem.write_slice(&remaining[..take], segment.addr)
            .map_err(|_| VIRTIO_BLK_S_IOERR)?;
        remaining = &remaining[take..];
    }
    Ok(data_len.min(ID_BYTES as u64) as u32)
}

fn total_len(segments: &[Segment]) -> u64 {
    segments.iter().map(|s| u64::from(s.len)).sum()
}

fn in_memory(mem: &GuestMemory, segment: &Segment) -> bool {
    mem.check_range(segment.addr, segment.len as usize)
}

#[cfg(test)]
mod tests;
