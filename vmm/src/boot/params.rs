//! The structures through which the kernel learns its memory map, command
//! line and initramfs: the PVH `hvm_start_info`, or the zero page
//! (`boot_params`) of the 64-bit boot protocol.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress};

use super::InitrdPlacement;
use crate::error::Error;
use crate::memory::{
    usable_ram_map, GuestMemory, RamRange, CMDLINE_START, PVH_INFO_START, PVH_MEMMAP_START,
    ZERO_PAGE_START,
};

const E820_RAM: u32 = 1;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// The module list sits in the start-info page, after `hvm_start_info`.
const PVH_MODLIST_START: u64 = PVH_INFO_START + 0x800;
/// Zero-page values from Documentation/arch/x86/boot.rst.
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

pub fn write_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<(), Error> {
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|e| Error::GuestWrite {
            what: "kernel command line",
            address: CMDLINE_START,
            reason: e.to_string(),
        })
}

pub fn write_pvh_start_info(
    mem: &GuestMemory,
    memory_size: u64,
    withheld: Option<RamRange>,
    initrd: Option<InitrdPlacement>,
) -> Result<(), Error> {
    let memmap: Vec<hvm_memmap_table_entry> = usable_ram_map(memory_size, withheld)
        .into_iter()
        .map(|range| hvm_memmap_table_entry {
            addr: range.start,
            size: range.size,
            type_: E820_RAM,
            reserved: 0,
        })
        .collect();
    let module = initrd.map(|initrd| hvm_modlist_entry {
        paddr: initrd.address,
        size: initrd.size,
        ..Default::default()
    });
    // PVH finds the command line by its NUL terminator: no length needed.
    let start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        nr_modules: u32::from(module.is_some()),
        modlist_paddr: if module.is_some() {
            PVH_MODLIST_START
        } else {
            0
        },
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some(module) = module {
        params.set_modules(&[module], GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem).map_err(|e| {
        Error::GuestWrite {
            what: "PVH start info",
            address: PVH_INFO_START,
            reason: e.to_string(),
        }
    })
}

pub fn write_zero_page(
    mem: &GuestMemory,
    memory_size: u64,
    withheld: Option<RamRange>,
    initrd: Option<InitrdPlacement>,
    cmdline_len: usize,
) -> Result<(), Error> {
    let mut zero_page = boot_params::default();
    zero_page.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    zero_page.hdr.header = KERNEL_HDR_MAGIC;
    zero_page.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    zero_page.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    zero_page.hdr.cmd_line_ptr = CMDLINE_START as u32;
    zero_page.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        zero_page.hdr.ramdisk_image = initrd.address as u32;
        zero_page.hdr.ramdisk_size = initrd.size as u32;
    }
    let map = usable_ram_map(memory_size, withheld);
    if map.len() > zero_page.e820_table.len() {
        return Err(Error::GuestWrite {
            what: "E820 map",
            address: ZERO_PAGE_START,
            reason: format!("{} entries do not fit the zero page", map.len()),
        });
    }
    for (slot, range) in zero_page.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr: range.start,
            size: range.size,
            r#type: E820_RAM,
        };
    }
    zero_page.e820_entries = map.len() as u8;
    let params = BootParams::new(&zero_page, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(&params, mem).map_err(|e| {
        Error::GuestWrite {
            what: "zero page",
            address: ZERO_PAGE_START,
            reason: e.to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn pvh_start_info_points_at_map_cmdline_and_initrd() {
        let mem = create_guest_memory(128 << 20).unwrap();
        let initrd = InitrdPlacement {
            address: 0x700_0000,
            size: 0x1234,
        };
        write_pvh_start_info(&mem, 128 << 20, None, Some(initrd)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.cmdline_paddr, CMDLINE_START);
        assert_eq!(info.memmap_entries, 2);
        assert_eq!(info.nr_modules, 1);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x700_0000, 0x1234));
        let last: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
        assert_eq!(last.addr + last.size, 128 << 20);
    }

    #[test]
    fn zero_page_carries_the_e820_map() {
        let mem = create_guest_memory(128 << 20).unwrap();
        write_zero_page(&mem, 128 << 20, None, None, 42).unwrap();
        let page: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!(page.e820_entries, 2);
        assert_eq!({ page.hdr.cmdline_size }, 42);
        assert_eq!({ page.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
    }
}
