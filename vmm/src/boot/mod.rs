//! Everything the guest finds in memory and registers at its first
//! instruction: kernel, initramfs, command line, MP table, PVH start info or
//! zero page, GDT and page tables.

mod cmdline;
mod gdt;
mod images;
mod init_program;
pub mod loader_image;
pub mod mptable;
mod params;
pub mod regs;

pub use cmdline::{build_cmdline, virtio_mmio_param, EXIT_PORT, ROOT_DISK_PARAMS};
pub use images::{load_initrd, load_initrd_bytes, load_kernel, load_preload, LoadedKernel};
pub use init_program::{preload_param, preload_place_of};
pub use regs::EntryPoint;

use std::fs::File;

use crate::config::{BootProtocol, VmConfig};
use crate::error::Error;
use crate::memory::{low_ram_end, GuestMemory, RamRange};
use init_program::Preload;

/// The kernel, initramfs and init program files of a VM, opened before
/// the VM is built (a jailed VMM cannot reach their paths any more).
#[derive(Debug)]
pub struct BootFiles {
    kernel: File,
    initrd: Option<File>,
    preload: Option<Preload>,
}

impl BootFiles {
    pub fn open(config: &VmConfig) -> Result<BootFiles, Error> {
        let kernel = File::open(&config.kernel).map_err(|source| Error::KernelOpen {
            path: config.kernel.clone(),
            source,
        })?;
        let initrd = match &config.initrd {
            Some(path) => Some(File::open(path).map_err(|source| Error::InitrdOpen {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let preload = match &config.init_program {
            Some(path) => Some(Preload::open(config, path)?),
            None => None,
        };
        Ok(BootFiles {
            kernel,
            initrd,
            preload,
        })
    }

    /// Where the init program goes and its size, for the command line.
    pub fn preload_place(&self) -> Option<(RamRange, u64)> {
        self.preload.as_ref().map(|p| (p.place, p.size))
    }
}

/// Loads every boot image (from `files`, opened from `config`'s paths) and
/// structure into `mem`, with `cmdline` as the kernel command line, and
/// tells where the bootstrap vCPU starts.
pub fn prepare_guest(
    config: &VmConfig,
    files: BootFiles,
    cmdline: &str,
    mem: &GuestMemory,
) -> Result<EntryPoint, Error> {
    let BootFiles {
        kernel: mut kernel_file,
        initrd: initrd_file,
        preload,
    } = files;
    let kernel = load_kernel(&mut kernel_file, &config.kernel, mem)?;
    let mut top = low_ram_end(config.memory_bytes());
    let mut withheld = None;
    if let (Some(mut p), Some(path)) = (preload, &config.init_program) {
        if p.place.start < kernel.end {
            return Err(Error::InitProgram {
                path: path.clone(),
                reason: "it would overlap the kernel".into(),
            });
        }
        load_preload(&mut p.file, path, mem, p.place, p.size)?;
        top = p.place.start;
        withheld = Some(p.place);
    }
    let initrd = match (initrd_file, &config.initrd) {
        (Some(mut file), Some(path)) => Some(load_initrd(
            &mut file,
            path,
            mem,
            &kernel,
            config.memory_bytes(),
            top,
        )?),
        _ if config.init_program.is_some() => Some(load_initrd_bytes(
            loader_image::LOADER_INITRAMFS,
            mem,
            &kernel,
            config.memory_bytes(),
            top,
        )?),
        _ => None,
    };
    params::write_cmdline(mem, cmdline)?;
    mptable::write(mem, config.vcpus)?;

    let protocol = match (config.boot_protocol, kernel.pvh_entry) {
        (BootProtocol::Linux64, _) | (BootProtocol::Auto, None) => BootProtocol::Linux64,
        (BootProtocol::Pvh | BootProtocol::Auto, Some(_)) => BootProtocol::Pvh,
        (BootProtocol::Pvh, None) => {
            return Err(Error::NoPvhEntry {
                path: config.kernel.clone(),
            })
        }
    };
    let memory_size = config.memory_bytes();
    match (protocol, kernel.pvh_entry) {
        (BootProtocol::Pvh, Some(entry)) => {
            params::write_pvh_start_info(mem, memory_size, withheld, initrd)?;
            Ok(EntryPoint::Pvh { entry })
        }
        _ => {
            params::write_zero_page(mem, memory_size, withheld, initrd, cmdline.len())?;
            regs::write_identity_page_tables(mem)?;
            Ok(EntryPoint::Linux64 {
                entry: kernel.entry,
            })
        }
    }
}

/// Where the initramfs was placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub address: u64,
    pub size: u64,
}
