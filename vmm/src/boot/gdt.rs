//! Flat segment descriptors for the boot GDT and their KVM equivalents.

use kvm_bindings::kvm_segment;

/// A segment descriptor's access byte and flags nibble, as laid out in bits
/// 40..56 of the descriptor (`0xF0FF`: flags in the high byte's high nibble).
#[derive(Clone, Copy, Debug)]
pub struct SegmentKind(pub u16);

/// 32-bit code, execute/read, present, 4 KiB granular.
pub const CODE32: SegmentKind = SegmentKind(0xc09b);
/// 64-bit code (L bit), execute/read, present.
pub const CODE64: SegmentKind = SegmentKind(0xa09b);
/// Data, read/write, present, 4 KiB granular.
pub const DATA: SegmentKind = SegmentKind(0xc093);
/// A busy 32-bit TSS (what a task register must point at).
pub const TSS32_BUSY: SegmentKind = SegmentKind(0x008b);
/// A busy 64-bit TSS.
pub const TSS64_BUSY: SegmentKind = SegmentKind(0x808b);

/// Encodes a descriptor from its kind, base and 20-bit limit.
pub fn descriptor(kind: SegmentKind, base: u32, limit: u32) -> u64 {
    let flags = u64::from(kind.0 & 0xf0ff);
    let base = u64::from(base);
    let limit = u64::from(limit & 0xf_ffff);
    ((base & 0xff00_0000) << 32)
        | (flags << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The KVM view of the descriptor at `index` in the GDT.
pub fn kvm_segment_from(index: u16, entry: u64) -> kvm_segment {
    let access = ((entry >> 40) & 0xff) as u8;
    let flags = ((entry >> 52) & 0xf) as u8;
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let granular = flags & 0x8 != 0;
    kvm_segment {
        base,
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: access & 0xf,
        present: (access >> 7) & 1,
        dpl: (access >> 5) & 3,
        db: (flags >> 2) & 1,
        s: (access >> 4) & 1,
        l: (flags >> 1) & 1,
        g: u8::from(granular),
        avl: flags & 1,
        unusable: u8::from(access & 0x80 == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_code64_descriptor_matches_the_manual() {
        assert_eq!(descriptor(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }

    #[test]
    fn flat_data_segment_decodes_to_4_gib() {
        let seg = kvm_segment_from(2, descriptor(DATA, 0, 0xfffff));
        assert_eq!(seg.selector, 0x10);
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(
            (seg.type_, seg.s, seg.present, seg.db, seg.g),
            (3, 1, 1, 1, 1)
        );
        assert_eq!(seg.unusable, 0);
    }

    #[test]
    fn code64_sets_long_mode_bit() {
        let seg = kvm_segment_from(1, descriptor(CODE64, 0, 0xfffff));
        assert_eq!((seg.l, seg.db, seg.type_), (1, 0, 0xb));
    }
}
