//! The initramfs of a VM booted with an init program (`--init-program`):
//! runvm's loader as /init and the directories the agent mounts on,
//! nothing else. The loader (guest-loader/loader.c, built by build.rs)
//! maps the program, which the VMM preloads in memory the guest's memory
//! map leaves out, through /dev/mem and jumps into it: the guest kernel
//! unpacks ~10 KiB and reads no page of the program.

/// The loader executable, built for the guest by build.rs.
pub const LOADER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/runvm-loader"));

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// One file of the archive.
struct Entry {
    name: &'static str,
    mode: u32,
    /// The device number of a device node.
    device: (u32, u32),
    data: &'static [u8],
}

const fn entry(name: &'static str, mode: u32) -> Entry {
    Entry {
        name,
        mode,
        device: (0, 0),
        data: &[],
    }
}

/// /dev/console: the kernel opens it for init's standard streams before
/// anything mounts a devtmpfs. The directories are where the agent mounts.
const ENTRIES: [Entry; 7] = [
    entry("dev", S_IFDIR | 0o755),
    Entry {
        device: (5, 1),
        ..entry("dev/console", S_IFCHR | 0o600)
    },
    Entry {
        data: LOADER,
        ..entry("init", S_IFREG | 0o755)
    },
    entry("proc", S_IFDIR | 0o755),
    entry("run", S_IFDIR | 0o755),
    entry("sys", S_IFDIR | 0o755),
    entry("tmp", S_IFDIR | 0o1777),
];

/// The uncompressed newc cpio archive (the kernel's initramfs format).
pub fn loader_initramfs() -> Vec<u8> {
    let mut out = Vec::with_capacity(LOADER.len() + 1024);
    for (index, file) in ENTRIES.iter().enumerate() {
        append(&mut out, index as u32 + 1, file);
    }
    append(&mut out, 0, &entry("TRAILER!!!", 0));
    out
}

fn append(out: &mut Vec<u8>, ino: u32, file: &Entry) {
    let Entry {
        name,
        mode,
        device: (major, minor),
        data,
    } = *file;
    let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0, // devmajor
        0, // devminor
        major,
        minor,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for field in fields {
        out.extend_from_slice(format!("{field:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

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
        let archive = loader_initramfs();
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
