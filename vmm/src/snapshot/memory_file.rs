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

use crate::memory::{ram_ranges, GuestMemory};

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

    #[test]
    fn memory_round_trips_through_a_sparse_file_and_stays_private() {
        let mem = create_guest_memory(64 << 20).unwrap();
        mem.write_obj(0x1122_3344_5566_7788u64, GuestAddress(0x10_0000))
            .unwrap();
        mem.write_obj(0xabu8, GuestAddress((64 << 20) - 1)).unwrap();
        let path = std::env::temp_dir().join(format!("runvm-memfile-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
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
}
