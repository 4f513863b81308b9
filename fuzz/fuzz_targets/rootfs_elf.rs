//! rootfs-builder's ELF check on the agent and busybox binaries
//! (rootfs-builder/src/elf.rs): any bytes are accepted or refused, never a
//! panic, and the verdict on a well-formed header is the right one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runvm_rootfs_builder::elf::{check_static_executable, synthetic_elf, ElfError};

const PT_INTERP: u32 = 3;

fuzz_target!(|data: &[u8]| {
    if check_static_executable(data).is_ok() {
        assert_eq!(&data[..4], b"\x7fELF");
    }
    // The fuzz bytes as a type and program header types.
    let Some((head, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let e_type = u16::from_le_bytes(*head);
    let p_types: Vec<u32> = rest
        .chunks_exact(4)
        .take(64)
        .map(|c| u32::from_le_bytes(c.try_into().expect("four bytes")))
        .collect();
    let expected = if e_type != 2 && e_type != 3 {
        Err(ElfError::NotExecutable(e_type))
    } else if p_types.contains(&PT_INTERP) {
        Err(ElfError::Dynamic)
    } else {
        Ok(())
    };
    assert_eq!(
        check_static_executable(&synthetic_elf(e_type, &p_types)),
        expected
    );
});
