//! Guest RAM in a snapshot: written to a file (every RAM range back to
//! back, as in [`crate::memory::create_shared_guest_memory`]'s memfd), and
//! mapped back privately, copy-on-write: the VMs restored from one
//! snapshot share its pages in the host's page cache until they write
//! them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};

use crate::memory::{create_shared_guest_memory, ram_ranges, GuestMemory};

const PAGE: usize = 4096;

/// Each RAM range of `mem`, as bytes.
fn ranges(mem: &GuestMemory) -> Result<Vec<&[u8]>, String> {
    mem.iter()
        .map(|region| {
            let address = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| e.to_string())?;
            // SAFETY: the region's whole mapping, alive as long as `mem`
            // is borrowed. Nobody writes it meanwhile: the vCPUs and the
            // device threads are stopped before a snapshot.
            Ok(unsafe { std::slice::from_raw_parts(address.cast_const(), region.len() as usize) })
        })
        .collect()
}

/// Writes `mem` to `file` (emptied first). Pages of zeros are left as
/// holes. Returns the file's length and the CRC-32 of its contents.
pub fn write_memory(mem: &GuestMemory, file: &File) -> Result<(u64, u32), String> {
    let ranges = ranges(mem)?;
    let total: u64 = ranges.iter().map(|r| r.len() as u64).sum();
    let io = |e: std::io::Error| format!("cannot write the memory file: {e}");
    file.set_len(0).map_err(io)?;
    file.set_len(total).map_err(io)?;
    let mut crc = crc32fast::Hasher::new();
    let mut offset = 0u64;
    for bytes in ranges {
        crc.update(bytes);
        let mut page = 0;
        let pages = bytes.len().div_ceil(PAGE);
        while page < pages {
            let is_zero = |p: usize| {
                let end = ((p + 1) * PAGE).min(bytes.len());
                bytes[p * PAGE..end].iter().all(|&b| b == 0)
            };
            if is_zero(page) {
                page += 1;
                continue;
            }
            // A run of pages with data goes out in one write.
            let start = page;
            while page < pages && !is_zero(page) {
                page += 1;
            }
            let end = (page * PAGE).min(bytes.len());
            file.write_all_at(&bytes[start * PAGE..end], offset + (start * PAGE) as u64)
                .map_err(io)?;
        }
        offset += bytes.len() as u64;
    }
    file.sync_all().map_err(io)?;
    Ok((total, crc.finalize()))
}

/// Guest RAM of `size` bytes mapped privately from `file`, laid out as
/// [`write_memory`] wrote it.
pub fn map_memory(file: &File, size: u64) -> Result<GuestMemory, String> {
    let file = Arc::new(
        file.try_clone()
            .map_err(|e| format!("cannot use the memory file: {e}"))?,
    );
    let mut offset = 0;
    let mut regions = Vec::new();
    for range in ram_ranges(size) {
        let length = usize::try_from(range.size).map_err(|e| e.to_string())?;
        let mapping = MmapRegionBuilder::new(length)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| format!("cannot map the memory file: {e}"))?;
        let region = GuestRegionMmap::new(mapping, GuestAddress(range.start))
            .ok_or("a RAM range overflows the guest address space")?;
        regions.push(region);
        offset += range.size;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| e.to_string())
}

/// Guest RAM of `size` bytes that a vhost-user backend can map (a memfd,
/// [`create_shared_guest_memory`]) holding a copy of `file`, and the
/// copy's CRC-32: a private mapping of the file would show the backend
/// the template's pages, not the guest's. Only the file's data is read and
/// only its pages are touched (the memfd's holes read as zeros), so the
/// guest's RAM is not all allocated as a checksum of it would.
pub fn copy_memory(file: &File, size: u64) -> Result<(GuestMemory, u32), String> {
    let mem = create_shared_guest_memory(size).map_err(|e| e.to_string())?;
    let mut crc = crc32fast::Hasher::new();
    let mut offset = 0u64;
    for region in mem.iter() {
        let address = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| e.to_string())?;
        let length = usize::try_from(region.len()).map_err(|e| e.to_string())?;
        // SAFETY: the region's whole mapping, alive while `mem` is; nothing
        // else uses the memory yet (no vCPU, no device runs).
        let bytes = unsafe { std::slice::from_raw_parts_mut(address, length) };
        copy_data(file, offset, bytes, &mut crc)
            .map_err(|e| format!("cannot read the memory file: {e}"))?;
        offset += region.len();
    }
    Ok((mem, crc.finalize()))
}

/// Fills `into` from `file` at `start`, reading only the extents that hold
/// data (SEEK_DATA/SEEK_HOLE; a file system without them reports one
/// extent up to the end of the file), and adds what it holds to `crc`.
fn copy_data(
    file: &File,
    start: u64,
    into: &mut [u8],
    crc: &mut crc32fast::Hasher,
) -> std::io::Result<()> {
    let end = start + into.len() as u64;
    let mut at = start;
    while at < end {
        // None: only a hole up to the end of the file.
        let data = seek(file, at, libc::SEEK_DATA)?.unwrap_or(end).min(end);
        add_zeros(crc, data - at);
        if data == end {
            break;
        }
        let hole = seek(file, data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        let extent = &mut into[(data - start) as usize..(hole - start) as usize];
        file.read_exact_at(extent, data)?;
        crc.update(extent);
        at = hole;
    }
    Ok(())
}

fn add_zeros(crc: &mut crc32fast::Hasher, mut count: u64) {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while count > 0 {
        let chunk = count.min(ZEROS.len() as u64);
        crc.update(&ZEROS[..chunk as usize]);
        count -= chunk;
    }
}

/// lseek(2) with `whence`; None where no data follows `offset` (ENXIO).
fn seek(file: &File, offset: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let offset = libc::off_t::try_from(offset)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EOVERFLOW))?;
    // SAFETY: lseek on a descriptor `file` owns; no memory is passed.
    let found = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if found < 0 {
        let error = std::io::Error::last_os_error();
        return match error.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(error),
        };
    }
    Ok(Some(found as u64))
}

/// The CRC-32 of `mem` as [`write_memory`] computes it.
pub fn checksum(mem: &GuestMemory) -> Result<u32, String> {
    let mut crc = crc32fast::Hasher::new();
    for bytes in ranges(mem)? {
        crc.update(bytes);
    }
    Ok(crc.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;
    use vm_memory::Bytes;

    /// A new file in the temporary directory, for one test.
    fn scratch_file(prefix: &str) -> (std::path::PathBuf, File) {
        let path = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    #[test]
    fn memory_round_trips_through_a_sparse_file_and_stays_private() {
        let mem = create_guest_memory(64 << 20).unwrap();
        mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x10_0000))
            .unwrap();
        mem.write_obj(0xabu8, GuestAddress((64 << 20) - 1)).unwrap();
        let (path, file) = scratch_file("runvm-memfile");
        let (len, crc) = write_memory(&mem, &file).unwrap();
        assert_eq!(len, 64 << 20);
        // Two pages of data, the rest holes.
        use std::os::unix::fs::MetadataExt;
        assert!(file.metadata().unwrap().blocks() * 512 < 1 << 20);

        let restored = map_memory(&file, 64 << 20).unwrap();
        assert_eq!(checksum(&restored).unwrap(), crc);
        let value: u64 = restored.read_obj(GuestAddress(0x10_0000)).unwrap();
        assert_eq!(value, 0x1122_3344_5566_7788);
        // A write stays in this mapping: the file, shared by every VM
        // restored from it, is unchanged.
        restored.write_obj(0u64, GuestAddress(0x10_0000)).unwrap();
        let mut word = [0u8; 8];
        file.read_exact_at(&mut word, 0x10_0000).unwrap();
        assert_eq!(u64::from_le_bytes(word), 0x1122_3344_5566_7788);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_copy_for_a_backend_is_shared_memory_with_the_file_s_contents() {
        let size = 64 << 20;
        let mem = create_guest_memory(size).unwrap();
        // Data at the start, in the middle and at the very end.
        let marks = [
            (GuestAddress(0), 0x11u8),
            (GuestAddress(0x123_4567), 0x22),
            (GuestAddress(size - 1), 0x33),
        ];
        for (address, value) in marks {
            mem.write_obj(value, address).unwrap();
        }
        let (path, file) = scratch_file("runvm-memcopy");
        let (_, crc) = write_memory(&mem, &file).unwrap();

        let (copy, copied_crc) = copy_memory(&file, size).unwrap();
        assert_eq!(copied_crc, crc);
        assert!(copy.iter().all(|region| region.file_offset().is_some()));
        assert_eq!(checksum(&copy).unwrap(), crc);
        for (address, value) in marks {
            assert_eq!(copy.read_obj::<u8>(address).unwrap(), value);
        }
        // Writes stay in the copy.
        copy.write_obj(0u8, GuestAddress(0)).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, 0).unwrap();
        assert_eq!(byte, [0x11]);
        // A damaged file gives another checksum.
        file.write_all_at(&[0x77], 0x200_0000).unwrap();
        assert_ne!(copy_memory(&file, size).unwrap().1, crc);
        std::fs::remove_file(&path).unwrap();
    }
}
