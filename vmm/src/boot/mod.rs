//! Everything the guest finds in memory and registers at its first
//! instruction: kernel, initramfs, command line, MP table, PVH start info or
//! zero page, GDT and page tables.

mod cmdline;
mod gdt;
mod images;
pub mod mptable;
mod params;
pub mod regs;

pub use cmdline::{build_cmdline, virtio_mmio_param, EXIT_PORT, ROOT_DISK_PARAMS};
pub use images::{load_initrd, load_kernel, LoadedKernel};
pub use regs::EntryPoint;

use crate::config::{BootProtocol, VmConfig};
use crate::error::Error;
use crate::memory::GuestMemory;

/// Loads every boot image and structure into `mem`, with `cmdline` as the
/// kernel command line, and tells where the bootstrap vCPU starts.
pub fn prepare_guest(
    config: &VmConfig,
    cmdline: &str,
    mem: &GuestMemory,
) -> Result<EntryPoint, Error> {
    let kernel = load_kernel(&config.kernel, mem)?;
    let initrd = match &config.initrd {
        Some(path) => Some(load_initrd(path, mem, &kernel, config.memory_bytes())?),
        None => None,
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
            params::write_pvh_start_info(mem, memory_size, initrd)?;
            Ok(EntryPoint::Pvh { entry })
        }
        _ => {
            params::write_zero_page(mem, memory_size, initrd, cmdline.len())?;
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
