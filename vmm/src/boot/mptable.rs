//! The Intel MultiProcessor Specification (1.4) table: without ACPI it is
//! how the guest kernel finds its CPUs and the I/O APIC.
//!
//! Layout at [`MPTABLE_START`]: the 16-byte floating pointer, then the
//! configuration table header and its entries.

use vm_memory::{Bytes, GuestAddress};

use crate::error::Error;
use crate::memory::{GuestMemory, MPTABLE_START};

pub const IOAPIC_ADDRESS: u32 = 0xfec0_0000;
pub const LAPIC_ADDRESS: u32 = 0xfee0_0000;
/// Interrupt lines the in-kernel I/O APIC has.
pub const IOAPIC_PINS: u8 = 24;
/// Largest table the 1 KiB area before 640 KiB can hold.
const MPTABLE_AREA_SIZE: usize = 0x400;

const FLOATING_POINTER_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const SPEC_REVISION: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const ISA_BUS_ID: u8 = 0;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;

const CPU_ENABLED: u8 = 1;
const CPU_BOOTSTRAP: u8 = 2;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus": edge, active high on ISA.
const INT_FLAGS_CONFORMING: u16 = 0;
/// Destination "all local APICs".
const ALL_LAPICS: u8 = 0xff;

/// The I/O APIC's id comes after the vCPUs' APIC ids.
pub fn ioapic_id(vcpus: u8) -> u8 {
    vcpus
}

/// Builds the table's bytes for `vcpus` CPUs, as placed at `base`.
pub fn build(vcpus: u8, base: u64) -> Vec<u8> {
    let mut entries = Vec::new();
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTSTRAP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        // CPU signature (family 6) and feature flags (FPU, APIC): what a
        // guest reads only when it has no CPUID, which ours always has.
        entries.extend_from_slice(&0x600u32.to_le_bytes());
        entries.extend_from_slice(&0x201u32.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    let ioapic = ioapic_id(vcpus);
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDRESS.to_le_bytes());
    for pin in 0..IOAPIC_PINS {
        // Pin 0 is the 8259's cascade (ExtINT); ISA IRQ n goes to pin n.
        let kind = if pin == 0 {
            INT_TYPE_EXTINT
        } else {
            INT_TYPE_INT
        };
        entries.push(ENTRY_IO_INTERRUPT);
        entries.push(kind);
        entries.extend_from_slice(&INT_FLAGS_CONFORMING.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, pin, ioapic, pin]);
    }
    for (kind, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries.push(ENTRY_LOCAL_INTERRUPT);
        entries.push(kind);
        entries.extend_from_slice(&INT_FLAGS_CONFORMING.to_le_bytes());
        entries.extend_from_slice(&[ISA_BUS_ID, 0, ALL_LAPICS, lint]);
    }
    let entry_count = u16::from(vcpus) + 1 + 1 + u16::from(IOAPIC_PINS) + 2;

    let table_address = base + FLOATING_POINTER_SIZE as u64;
    let table_length = (HEADER_SIZE + entries.len()) as u16;
    let mut header = Vec::with_capacity(HEADER_SIZE);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&table_length.to_le_bytes());
    header.push(SPEC_REVISION);
    header.push(0); // checksum, filled below
    header.extend_from_slice(b"RUNVM   "); // OEM id, 8 bytes
    header.extend_from_slice(b"MICROVM     "); // product id, 12 bytes
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&LAPIC_ADDRESS.to_le_bytes());
    header.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    debug_assert_eq!(header.len(), HEADER_SIZE);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_POINTER_SIZE);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&(table_address as u32).to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(SPEC_REVISION);
    floating.push(0); // checksum, filled below
    floating.extend_from_slice(&[0; 5]); // feature bytes: a table is present
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    floating
}

/// Writes the table for `vcpus` CPUs at [`MPTABLE_START`].
pub fn write(mem: &GuestMemory, vcpus: u8) -> Result<(), Error> {
    let bytes = build(vcpus, MPTABLE_START);
    if bytes.len() > MPTABLE_AREA_SIZE {
        return Err(Error::GuestWrite {
            what: "MP table",
            address: MPTABLE_START,
            reason: format!(
                "{} vCPUs need {} bytes, more than 1 KiB",
                vcpus,
                bytes.len()
            ),
        });
    }
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(|e| Error::GuestWrite {
            what: "MP table",
            address: MPTABLE_START,
            reason: e.to_string(),
        })
}

/// The byte that makes all bytes sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_VCPUS;

    fn sums_to_zero(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)) == 0
    }

    #[test]
    fn both_checksums_hold() {
        let bytes = build(4, MPTABLE_START);
        assert!(sums_to_zero(&bytes[..FLOATING_POINTER_SIZE]));
        assert!(sums_to_zero(&bytes[FLOATING_POINTER_SIZE..]));
    }

    #[test]
    fn floating_pointer_points_at_the_table() {
        let bytes = build(1, MPTABLE_START);
        assert_eq!(&bytes[..4], b"_MP_");
        let pointer = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
        assert_eq!(u64::from(pointer), MPTABLE_START + 16);
        assert_eq!(&bytes[16..20], b"PCMP");
    }

    #[test]
    fn header_length_and_count_match_the_entries() {
        let bytes = build(2, MPTABLE_START);
        let table = &bytes[FLOATING_POINTER_SIZE..];
        let length = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(length, table.len());
        let count = u16::from_le_bytes([table[34], table[35]]);
        // 2 CPUs + bus + I/O APIC + 24 pins + 2 local interrupts
        assert_eq!(count, 2 + 1 + 1 + 24 + 2);
        assert_eq!(table[HEADER_SIZE], ENTRY_PROCESSOR);
        assert_eq!(table[HEADER_SIZE + 3], CPU_ENABLED | CPU_BOOTSTRAP);
        assert_eq!(table[HEADER_SIZE + 20 + 3], CPU_ENABLED);
    }

    #[test]
    fn largest_vcpu_count_fits_its_area() {
        assert!(build(MAX_VCPUS, MPTABLE_START).len() <= MPTABLE_AREA_SIZE);
    }
}
