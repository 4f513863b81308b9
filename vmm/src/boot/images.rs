//! Loading the kernel and the initramfs from files into guest memory.

use std::fs::File;
use std::path::Path;

use linux_loader::loader::{elf::Elf, elf::PvhBootCapability, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use super::InitrdPlacement;
use crate::error::Error;
use crate::memory::{GuestMemory, RamRange, HIMEM_START};

const PAGE_SIZE: u64 = 4096;

#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    /// The ELF entry point (the 64-bit boot protocol's `startup_64`).
    pub entry: u64,
    /// First guest-physical byte after the kernel image.
    pub end: u64,
    /// The 32-bit PVH entry point, when the kernel has one.
    pub pvh_entry: Option<u64>,
}

/// Loads the kernel from `file`, opened from `path` (named in errors).
pub fn load_kernel(file: &mut File, path: &Path, mem: &GuestMemory) -> Result<LoadedKernel, Error> {
    let loaded = Elf::load(mem, None, file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
        Error::KernelLoad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    let pvh_entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(address) => Some(address.0),
        _ => None,
    };
    Ok(LoadedKernel {
        entry: loaded.kernel_load.0,
        end: loaded.kernel_end,
        pvh_entry,
    })
}

/// Puts the initramfs just below `top` (the end of the RAM below the
/// device hole, or a preloaded image's start), page aligned, where it
/// cannot overlap the kernel. `file` was opened from `path` (named in
/// errors).
pub fn load_initrd(
    file: &mut File,
    path: &Path,
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    memory_size: u64,
    top: u64,
) -> Result<InitrdPlacement, Error> {
    let open_error = |source| Error::InitrdOpen {
        path: path.to_path_buf(),
        source,
    };
    let size = file.metadata().map_err(open_error)?.len();
    let address = initrd_address(size, top, kernel, memory_size)?;
    let count = usize::try_from(size).map_err(|_| does_not_fit(size, kernel, memory_size))?;
    read_into_guest(file, mem, address, count, "initramfs")?;
    Ok(InitrdPlacement { address, size })
}

/// Puts `archive` (an initramfs built in memory) just below `top`, as
/// [`load_initrd`] does with a file.
pub fn load_initrd_bytes(
    archive: &[u8],
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    memory_size: u64,
    top: u64,
) -> Result<InitrdPlacement, Error> {
    let size = archive.len() as u64;
    let address = initrd_address(size, top, kernel, memory_size)?;
    mem.write_slice(archive, GuestAddress(address))
        .map_err(|e| Error::GuestWrite {
            what: "initramfs",
            address,
            reason: e.to_string(),
        })?;
    Ok(InitrdPlacement { address, size })
}

/// The page-aligned address just below `top` for an initramfs of `size`
/// bytes, if that is above the kernel.
fn initrd_address(
    size: u64,
    top: u64,
    kernel: &LoadedKernel,
    memory_size: u64,
) -> Result<u64, Error> {
    top.checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel.end)
        .ok_or_else(|| does_not_fit(size, kernel, memory_size))
}

fn does_not_fit(size: u64, kernel: &LoadedKernel, memory_size: u64) -> Error {
    Error::ImagesDoNotFit {
        memory_mib: memory_size >> 20,
        kernel_mib: kernel.end.div_ceil(1 << 20),
        initrd_mib: size.div_ceil(1 << 20),
    }
}

/// Copies the preloaded image (`file`, opened from `path`) into `place`,
/// the guest pages [`crate::memory::preload_placement`] chose; the rest of
/// its last page stays zero (fresh guest RAM).
pub fn load_preload(
    file: &mut File,
    path: &Path,
    mem: &GuestMemory,
    place: RamRange,
    size: u64,
) -> Result<(), Error> {
    let count = usize::try_from(size).map_err(|_| Error::InitProgram {
        path: path.to_path_buf(),
        reason: format!("{size} bytes"),
    })?;
    read_into_guest(file, mem, place.start, count, "preloaded image")
}

/// Reads `count` bytes of `file`, from where it stands, into guest memory
/// at `address`; `what` names them in the error.
fn read_into_guest(
    file: &mut File,
    mem: &GuestMemory,
    address: u64,
    count: usize,
    what: &'static str,
) -> Result<(), Error> {
    mem.read_exact_volatile_from(GuestAddress(address), file, count)
        .map_err(|e| Error::GuestWrite {
            what,
            address,
            reason: e.to_string(),
        })
}
