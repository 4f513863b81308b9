//! The initramfs of a VM booted with an init program (`--init-program`):
//! runvm's loader as /init and the directories the agent mounts on,
//! nothing else (rootfs-builder's image, written by build.rs). The loader
//! (guest-loader/loader.c) maps the program, which the VMM preloads in
//! memory the guest's memory map leaves out, through /dev/mem and jumps
//! into it: the guest kernel unpacks ~10 KiB and reads no page of the
//! program.

/// The loader executable, built for the guest by build.rs.
pub const LOADER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/runvm-loader"));

/// The uncompressed newc cpio archive (the kernel's initramfs format)
/// holding [`LOADER`] as /init.
pub const LOADER_INITRAMFS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/loader.cpio"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_loader_is_a_small_static_executable() {
        assert_eq!(&LOADER[..4], b"\x7fELF");
        // ET_EXEC for x86-64 (EM_X86_64 = 62), not a cross compiler's.
        assert_eq!(u16::from_le_bytes([LOADER[16], LOADER[17]]), 2);
        assert_eq!(u16::from_le_bytes([LOADER[18], LOADER[19]]), 62);
        assert!(LOADER.len() < 64 << 10, "{} bytes", LOADER.len());
    }

    #[test]
    fn the_archive_holds_init_and_ends_with_the_trailer() {
        let archive = LOADER_INITRAMFS;
        assert!(archive.starts_with(b"070701"));
        assert_eq!(archive.len() % 4, 0);
        let init = archive
            .windows(5)
            .position(|w| w == b"init\0")
            .expect("an init entry");
        // Name at 110 bytes after its header, then data 4-byte aligned.
        let header = init - 110;
        let size = u32::from_str_radix(
            std::str::from_utf8(&archive[header + 54..header + 62]).unwrap(),
            16,
        )
        .unwrap();
        assert_eq!(size as usize, LOADER.len());
        let data = (init + 5).next_multiple_of(4);
        assert_eq!(&archive[data..data + LOADER.len()], LOADER);
        let tail = &archive[archive.len() - 124..];
        assert!(tail.windows(10).any(|w| w == b"TRAILER!!!"));
    }
}
