//! A sanity check on the agent: it must be a 64-bit ELF executable with no
//! program interpreter, since the image holds no dynamic loader or libc.
//! A dynamically linked /init otherwise fails deep in the guest boot with
//! nothing more than "No working init found".

/// Why a binary cannot be the guest's /init.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("not a 64-bit little-endian ELF file")]
    Unsupported,
    #[error("not an executable (ELF type {0})")]
    NotExecutable(u16),
    #[error("truncated ELF program headers")]
    Truncated,
    #[error(
        "dynamically linked (it has an ELF interpreter); build it static, e.g. \
         RUSTFLAGS=\"-C target-feature=+crt-static\""
    )]
    Dynamic,
}

const PT_INTERP: u32 = 3;
const ET_EXEC: u16 = 2;
const ET_DYN: u16 = 3;

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(off..off.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// Check that `bin` is a static (or static-pie) 64-bit ELF executable.
pub fn check_static_executable(bin: &[u8]) -> Result<(), ElfError> {
    if bin.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ElfError::NotElf);
    }
    // EI_CLASS = ELFCLASS64, EI_DATA = ELFDATA2LSB.
    if bin.get(4..6) != Some([2u8, 1].as_slice()) {
        return Err(ElfError::Unsupported);
    }
    let e_type = u16_at(bin, 0x10).ok_or(ElfError::Truncated)?;
    if e_type != ET_EXEC && e_type != ET_DYN {
        return Err(ElfError::NotExecutable(e_type));
    }
    let phoff = u64_at(bin, 0x20).ok_or(ElfError::Truncated)?;
    let phentsize = u16_at(bin, 0x36).ok_or(ElfError::Truncated)?;
    let phnum = u16_at(bin, 0x38).ok_or(ElfError::Truncated)?;
    let phoff = usize::try_from(phoff).map_err(|_| ElfError::Truncated)?;
    for i in 0..usize::from(phnum) {
        let off = usize::from(phentsize)
            .checked_mul(i)
            .and_then(|o| o.checked_add(phoff))
            .ok_or(ElfError::Truncated)?;
        if u32_at(bin, off).ok_or(ElfError::Truncated)? == PT_INTERP {
            return Err(ElfError::Dynamic);
        }
    }
    Ok(())
}

/// A minimal 64-bit ELF header with the given type and program headers
/// (`p_type` values only), for tests.
#[doc(hidden)]
pub fn synthetic_elf(e_type: u16, p_types: &[u32]) -> Vec<u8> {
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let mut b = vec![0u8; EHDR + PHDR * p_types.len()];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // ELFCLASS64
    b[5] = 1; // little endian
    b[6] = 1; // EV_CURRENT
    b[0x10..0x12].copy_from_slice(&e_type.to_le_bytes());
    b[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    b[0x20..0x28].copy_from_slice(&(EHDR as u64).to_le_bytes());
    b[0x34..0x36].copy_from_slice(&(EHDR as u16).to_le_bytes());
    b[0x36..0x38].copy_from_slice(&(PHDR as u16).to_le_bytes());
    b[0x38..0x3a].copy_from_slice(&(p_types.len() as u16).to_le_bytes());
    for (i, t) in p_types.iter().enumerate() {
        let off = EHDR + PHDR * i;
        b[off..off + 4].copy_from_slice(&t.to_le_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const PT_LOAD: u32 = 1;

    #[test]
    fn static_and_static_pie_pass() {
        assert_eq!(
            check_static_executable(&synthetic_elf(ET_EXEC, &[PT_LOAD])),
            Ok(())
        );
        assert_eq!(
            check_static_executable(&synthetic_elf(ET_DYN, &[PT_LOAD])),
            Ok(())
        );
    }

    #[test]
    fn interpreter_is_rejected() {
        let bin = synthetic_elf(ET_DYN, &[6, PT_INTERP, PT_LOAD]);
        assert_eq!(check_static_executable(&bin), Err(ElfError::Dynamic));
    }

    #[test]
    fn garbage_is_rejected() {
        assert_eq!(
            check_static_executable(b"#!/bin/sh\n"),
            Err(ElfError::NotElf)
        );
        assert_eq!(check_static_executable(b""), Err(ElfError::NotElf));
        let mut bin = synthetic_elf(ET_EXEC, &[PT_LOAD]);
        bin[4] = 1;
        assert_eq!(check_static_executable(&bin), Err(ElfError::Unsupported));
        let bin = synthetic_elf(1, &[]);
        assert_eq!(
            check_static_executable(&bin),
            Err(ElfError::NotExecutable(1))
        );
        let mut bin = synthetic_elf(ET_EXEC, &[PT_LOAD, PT_LOAD]);
        bin.truncate(100);
        assert_eq!(check_static_executable(&bin), Err(ElfError::Truncated));
    }

    /// Found by the rootfs_elf fuzz target: program headers that start a
    /// few bytes short of the end of the address space overflowed the
    /// offset arithmetic (a panic with overflow checks on).
    #[test]
    fn program_headers_at_the_end_of_the_address_space_are_truncated() {
        let mut bin = synthetic_elf(ET_DYN, &[PT_LOAD]);
        bin[0x20..0x28].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert_eq!(check_static_executable(&bin), Err(ElfError::Truncated));
    }

    #[test]
    fn this_test_binary_is_checked_without_panicking() {
        // Whatever the test binary's linkage, checking a real ELF must work.
        if let Ok(exe) = std::env::current_exe().and_then(std::fs::read) {
            let _ = check_static_executable(&exe);
        }
    }
}
