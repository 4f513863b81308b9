//! Loading the kernel and the initramfs from files into guest memory.

use std::fs::File;
use std::path::Path;

use linux_loader::loader::{elf::Elf, elf::PvhBootCapability, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use super::InitrdPlacement;
use crate::error::Error;
use crate::memory::{low_ram_end, GuestMemory, HIMEM_START};

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

pub fn load_kernel(path: &Path, mem: &GuestMemory) -> Result<LoadedKernel, Error> {
    let mut file = File::open(path).map_err(|source| Error::KernelOpen {
        path: path.to_path_buf(),
        source,
    })?;
    let loaded = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
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

/// Puts the initramfs at the top of the RAM below the device hole, page
/// aligned, where it cannot overlap the kernel.
pub fn load_initrd(
    path: &Path,
    mem: &GuestMemory,
    kernel: &LoadedKernel,
    memory_size: u64,
) -> Result<InitrdPlacement, Error> {
    let open_error = |source| Error::InitrdOpen {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(open_error)?;
    let size = file.metadata().map_err(open_error)?.len();
    let does_not_fit = || Error::ImagesDoNotFit {
        memory_mib: memory_size >> 20,
        kernel_mib: kernel.end.div_ceil(1 << 20),
        initrd_mib: size.div_ceil(1 << 20),
    };
    let address = low_ram_end(memory_size)
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel.end)
        .ok_or_else(does_not_fit)?;
    let count = usize::try_from(size).map_err(|_| does_not_fit())?;
    mem.read_exact_volatile_from(GuestAddress(address), &mut file, count)
        .map_err(|e| Error::GuestWrite {
            what: "initramfs",
            address,
            reason: e.to_string(),
        })?;
    Ok(InitrdPlacement { address, size })
}
