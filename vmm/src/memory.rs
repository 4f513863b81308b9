//! The guest physical address map and the guest RAM behind it.
//!
//! ```text
//! 0x0000_0500  GDT                 (boot only)
//! 0x0000_0520  IDT                 (boot only, empty)
//! 0x0000_6000  PVH start_info      (PVH boot)
//! 0x0000_7000  PVH memory map, or the zero page (64-bit boot)
//! 0x0000_8ff0  boot stack          (64-bit boot)
//! 0x0000_9000  boot page tables    (64-bit boot: PML4, PDPT, PD)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  MP table            (last KiB of base memory, where Linux looks)
//! 0x0010_0000  high memory: the kernel at its ELF physical address, then
//!              free RAM; a preloaded image (left out of the memory map)
//!              sits at the top of low RAM, the initramfs just below it
//! 0xc000_0000  device hole up to 4 GiB
//! 0xd000_0000  virtio-mmio windows, 4 KiB each (IRQ 5 and up)
//! 0x1_0000_0000 RAM above the hole, for guests larger than 3 GiB
//! ```

use std::fs::File;
use std::os::fd::FromRawFd;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::error::Error;

pub type GuestMemory = GuestMemoryMmap<()>;

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MEMMAP_START: u64 = 0x7000;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPT_START: u64 = 0xa000;
pub const PD_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
/// Linux on x86 reads at most this much command line (COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
pub const MPTABLE_START: u64 = 0x9fc00;
/// End of the RAM below the legacy video/BIOS area.
pub const BASE_MEMORY_END: u64 = MPTABLE_START;
pub const HIMEM_START: u64 = 0x10_0000;
pub const DEVICE_HOLE_START: u64 = 0xc000_0000;
pub const DEVICE_HOLE_END: u64 = 0x1_0000_0000;
/// virtio-mmio register windows, one 4 KiB page per device.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_WINDOW: u64 = 0x1000;
/// I/O APIC pins 5 and up go to virtio devices (4 is COM1).
pub const VIRTIO_FIRST_IRQ: u32 = 5;
/// Pins 5..=23 of the I/O APIC.
pub const MAX_VIRTIO_DEVICES: usize = 19;

/// Where the `index`th virtio-mmio device lives: its window and its IRQ.
pub fn virtio_mmio_slot(index: usize) -> Option<(u64, u32)> {
    (index < MAX_VIRTIO_DEVICES).then(|| {
        (
            VIRTIO_MMIO_START + index as u64 * VIRTIO_MMIO_WINDOW,
            VIRTIO_FIRST_IRQ + index as u32,
        )
    })
}

/// A contiguous range of guest RAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    pub start: u64,
    pub size: u64,
}

impl RamRange {
    pub fn end(&self) -> u64 {
        self.start + self.size
    }
}

/// The RAM ranges of a guest of `size` bytes: below the device hole, and
/// the remainder above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<RamRange> {
    let low = size.min(DEVICE_HOLE_START);
    let mut ranges = vec![RamRange {
        start: 0,
        size: low,
    }];
    if size > low {
        ranges.push(RamRange {
            start: DEVICE_HOLE_END,
            size: size - low,
        });
    }
    ranges
}

/// The memory map reported to the guest (E820 or PVH): every RAM range,
/// minus the MP table and legacy area below 1 MiB, and minus `withheld`
/// (a preloaded image's pages, which the guest kernel must not use as RAM:
/// its init maps them through /dev/mem, which serves only what is not RAM).
pub fn usable_ram_map(size: u64, withheld: Option<RamRange>) -> Vec<RamRange> {
    let mut map = Vec::new();
    for range in ram_ranges(size) {
        if range.start == 0 {
            map.push(RamRange {
                start: 0,
                size: BASE_MEMORY_END,
            });
            map.push(RamRange {
                start: HIMEM_START,
                size: range.end() - HIMEM_START,
            });
        } else {
            map.push(range);
        }
    }
    let Some(hole) = withheld else {
        return map;
    };
    let mut carved = Vec::with_capacity(map.len() + 1);
    for range in map {
        let (start, end) = (range.start, range.end());
        if hole.end() <= start || hole.start >= end {
            carved.push(range);
            continue;
        }
        if hole.start > start {
            carved.push(RamRange {
                start,
                size: hole.start - start,
            });
        }
        if hole.end() < end {
            carved.push(RamRange {
                start: hole.end(),
                size: end - hole.end(),
            });
        }
    }
    carved
}

/// End of the RAM below the device hole: a preloaded image, else the
/// initramfs, goes just under it.
pub fn low_ram_end(size: u64) -> u64 {
    size.min(DEVICE_HOLE_START)
}

/// Where a preloaded image of `image_size` bytes goes in a guest of
/// `memory_size` bytes: whole pages at the top of low RAM. None if it
/// would not leave the kernel's first 16 MiB below it (the caller then
/// reports that the images do not fit).
pub fn preload_placement(memory_size: u64, image_size: u64) -> Option<RamRange> {
    const PAGE: u64 = 4096;
    let size = image_size.checked_add(PAGE - 1)? & !(PAGE - 1);
    let start = low_ram_end(memory_size).checked_sub(size)?;
    (image_size > 0 && start >= 16 << 20).then_some(RamRange { start, size })
}

pub fn create_guest_memory(size: u64) -> Result<GuestMemory, Error> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|r| (GuestAddress(r.start), r.size as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::GuestMemory {
        mib: size >> 20,
        reason: e.to_string(),
    })
}

/// Guest RAM another process can map: one memfd holding every RAM range
/// back to back, mapped shared. A vhost-user backend receives the memfd
/// and the offsets with VHOST_USER_SET_MEM_TABLE.
///
/// Only used when a device needs it: anonymous private memory stays the
/// default, so a VM without such a device is unchanged (transparent huge
/// pages, and RSS counted as anonymous rather than shmem).
pub fn create_shared_guest_memory(size: u64) -> Result<GuestMemory, Error> {
    let failed = |reason: String| Error::GuestMemory {
        mib: size >> 20,
        reason,
    };
    let file = Arc::new(sealed_memfd(size).map_err(|e| failed(format!("memfd: {e}")))?);
    let mut offset = 0;
    let mut ranges = Vec::new();
    for range in ram_ranges(size) {
        ranges.push((
            GuestAddress(range.start),
            range.size as usize,
            Some(FileOffset::from_arc(file.clone(), offset)),
        ));
        offset += range.size;
    }
    GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(|e| failed(e.to_string()))
}

/// A memfd of `size` bytes whose size nobody can change any more: a
/// backend truncating it would otherwise make the VMM's accesses fault.
fn sealed_memfd(size: u64) -> std::io::Result<File> {
    let size =
        libc::off_t::try_from(size).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: the name is a NUL-terminated string literal.
    let fd = unsafe {
        libc::memfd_create(
            c"runvm-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let file = unsafe { File::from_raw_fd(fd) };
    // SAFETY: plain fcntl/ftruncate calls on a valid fd.
    unsafe {
        if libc::ftruncate(fd, size) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        if libc::fcntl(fd, libc::F_ADD_SEALS, seals) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn shared_memory_is_one_sealed_memfd_with_the_ranges_back_to_back() {
        use std::os::fd::AsRawFd;
        let mem = create_shared_guest_memory(4 << 30).unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        let low = regions[0].file_offset().unwrap();
        let high = regions[1].file_offset().unwrap();
        assert_eq!(low.start(), 0);
        assert_eq!(high.start(), DEVICE_HOLE_START);
        assert_eq!(regions[1].start_addr().0, DEVICE_HOLE_END);
        let fd = low.file().as_raw_fd();
        assert_eq!(fd, high.file().as_raw_fd());
        // SAFETY: F_GET_SEALS on a valid fd.
        let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
        assert_eq!(
            seals,
            libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL
        );
        // The guest's writes land in the file.
        mem.write_obj(0x1234_5678u32, GuestAddress(DEVICE_HOLE_END + 8))
            .unwrap();
        let mut word = [0u8; 4];
        // SAFETY: pread into a local buffer.
        let n = unsafe {
            libc::pread(
                fd,
                word.as_mut_ptr().cast(),
                4,
                (DEVICE_HOLE_START + 8) as libc::off_t,
            )
        };
        assert_eq!(n, 4);
        assert_eq!(u32::from_ne_bytes(word), 0x1234_5678);
    }

    #[test]
    fn default_memory_is_anonymous() {
        let mem = create_guest_memory(64 << 20).unwrap();
        assert!(mem.iter().all(|region| region.file_offset().is_none()));
    }

    #[test]
    fn a_preloaded_image_is_left_out_of_the_memory_map() {
        let place = preload_placement(128 << 20, 2_149_176).unwrap();
        assert_eq!(place.end(), 128 << 20);
        assert_eq!(place.start % 4096, 0);
        assert_eq!(place.size, 2_150_400);
        let map = usable_ram_map(128 << 20, Some(place));
        assert_eq!(map.last().unwrap().end(), place.start);
        assert_eq!(
            map.iter().map(|r| r.size).sum::<u64>() + place.size,
            usable_ram_map(128 << 20, None)
                .iter()
                .map(|r| r.size)
                .sum::<u64>()
        );
        // Above the device hole the map is carved the same way.
        let high = RamRange {
            start: DEVICE_HOLE_END + (1 << 20),
            size: 1 << 20,
        };
        let map = usable_ram_map(4 << 30, Some(high));
        assert!(map
            .iter()
            .all(|r| r.end() <= high.start || r.start >= high.end()));
        assert_eq!(map.len(), 4);
        // Nothing that would not leave the kernel room, and nothing empty.
        assert_eq!(preload_placement(128 << 20, 120 << 20), None);
        assert_eq!(preload_placement(128 << 20, 0), None);
        assert_eq!(preload_placement(128 << 20, u64::MAX), None);
    }

    #[test]
    fn small_guest_is_one_range() {
        assert_eq!(
            ram_ranges(128 << 20),
            vec![RamRange {
                start: 0,
                size: 128 << 20
            }]
        );
    }

    #[test]
    fn large_guest_skips_the_device_hole() {
        let ranges = ram_ranges(4 << 30);
        assert_eq!(ranges.len(), 2);
        assert_eq!(ranges[0].end(), DEVICE_HOLE_START);
        assert_eq!(ranges[1].start, DEVICE_HOLE_END);
        assert_eq!(ranges[0].size + ranges[1].size, 4 << 30);
    }

    #[test]
    fn usable_map_leaves_out_the_legacy_area() {
        let map = usable_ram_map(128 << 20, None);
        assert_eq!(map[0].end(), BASE_MEMORY_END);
        assert_eq!(map[1].start, HIMEM_START);
        assert_eq!(map[1].end(), 128 << 20);
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut areas = [
            (GDT_START, 0x20),
            (IDT_START, 0x8),
            (PVH_INFO_START, 0x1000),
            (PVH_MEMMAP_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPT_START, 0x1000),
            (PD_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (MPTABLE_START, 0x400),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
    }

    // The 64-bit boot stack grows down from just below the page tables.
    const _: () = assert!(BOOT_STACK_POINTER < PML4_START && BOOT_STACK_POINTER > PVH_MEMMAP_START);
}
