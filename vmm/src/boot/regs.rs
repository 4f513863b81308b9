//! The bootstrap vCPU's registers at the kernel's first instruction, for
//! both entry protocols, and the identity page tables the 64-bit protocol
//! needs.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use super::gdt::{self, SegmentKind};
use crate::error::Error;
use crate::memory::{
    GuestMemory, BOOT_STACK_POINTER, GDT_START, IDT_START, PDPT_START, PD_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Bit 1 of RFLAGS is reserved and always set.
const RFLAGS_RESERVED: u64 = 0x2;
const PAGE_PRESENT_WRITABLE: u64 = 0x3;
const PAGE_HUGE: u64 = 0x80;

/// Where and how the bootstrap vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryPoint {
    /// 32-bit protected mode, paging off, EBX = start info.
    Pvh { entry: u64 },
    /// Long mode on identity page tables, RSI = zero page.
    Linux64 { entry: u64 },
}

/// Sets registers, segments and FPU state of the bootstrap vCPU.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, mem: &GuestMemory, entry: EntryPoint) -> Result<(), Error> {
    let (gdt, regs) = match entry {
        EntryPoint::Pvh { entry } => (
            [gdt::CODE32, gdt::DATA, gdt::TSS32_BUSY],
            kvm_regs {
                rip: entry,
                rbx: PVH_INFO_START,
                rflags: RFLAGS_RESERVED,
                ..Default::default()
            },
        ),
        EntryPoint::Linux64 { entry } => (
            [gdt::CODE64, gdt::DATA, gdt::TSS64_BUSY],
            kvm_regs {
                rip: entry,
                rsp: BOOT_STACK_POINTER,
                rbp: BOOT_STACK_POINTER,
                rsi: ZERO_PAGE_START,
                rflags: RFLAGS_RESERVED,
                ..Default::default()
            },
        ),
    };
    let mut sregs = vcpu.get_sregs().map_err(Error::kvm("KVM_GET_SREGS"))?;
    write_gdt(mem, &gdt, &mut sregs)?;
    match entry {
        EntryPoint::Pvh { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryPoint::Linux64 { .. } => {
            sregs.cr3 = PML4_START;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_ET | CR0_PG;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
    }
    vcpu.set_sregs(&sregs)
        .map_err(Error::kvm("KVM_SET_SREGS"))?;
    vcpu.set_regs(&regs).map_err(Error::kvm("KVM_SET_REGS"))?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(Error::kvm("KVM_SET_FPU"))
}

/// Writes a null descriptor then `kinds` (code, data, TSS) to guest memory
/// and loads the matching hidden segment state into `sregs`.
fn write_gdt(
    mem: &GuestMemory,
    kinds: &[SegmentKind; 3],
    sregs: &mut kvm_sregs,
) -> Result<(), Error> {
    let mut table = [0u64; 4];
    for (slot, kind) in table[1..].iter_mut().zip(kinds) {
        *slot = gdt::descriptor(*kind, 0, 0xfffff);
    }
    // The TSS is never used for a task switch; a minimal limit will do.
    table[3] = gdt::descriptor(kinds[2], 0, 0x67);
    for (index, entry) in table.iter().enumerate() {
        write_u64(mem, GDT_START + index as u64 * 8, *entry, "boot GDT")?;
    }
    write_u64(mem, IDT_START, 0, "boot IDT")?;

    let code = gdt::kvm_segment_from(1, table[1]);
    let data = gdt::kvm_segment_from(2, table[2]);
    let tss = gdt::kvm_segment_from(3, table[3]);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    Ok(())
}

/// Identity-maps the first GiB with 2 MiB pages, enough for the 64-bit
/// entry code until the kernel builds its own tables.
pub fn write_identity_page_tables(mem: &GuestMemory) -> Result<(), Error> {
    write_u64(mem, PML4_START, PDPT_START | PAGE_PRESENT_WRITABLE, "PML4")?;
    write_u64(mem, PDPT_START, PD_START | PAGE_PRESENT_WRITABLE, "PDPT")?;
    for index in 0..512u64 {
        let entry = (index << 21) | PAGE_HUGE | PAGE_PRESENT_WRITABLE;
        write_u64(mem, PD_START + index * 8, entry, "page directory")?;
    }
    Ok(())
}

fn write_u64(mem: &GuestMemory, address: u64, value: u64, what: &'static str) -> Result<(), Error> {
    mem.write_obj(value, GuestAddress(address))
        .map_err(|e| Error::GuestWrite {
            what,
            address,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn identity_tables_map_2mib_pages() {
        let mem = create_guest_memory(64 << 20).unwrap();
        write_identity_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPT_START | 3);
        let pde: u64 = mem.read_obj(GuestAddress(PD_START + 8 * 5)).unwrap();
        assert_eq!(pde, (5 << 21) | 0x83);
    }
}
