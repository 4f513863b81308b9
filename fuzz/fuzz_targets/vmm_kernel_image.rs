//! The VMM's boot image loaders (vmm/src/boot/images.rs): any file as the
//! kernel (an ELF read by linux-loader) is loaded into guest memory or
//! refused, never a panic; an initramfs of any size is placed
//! page-aligned above the kernel and below the end of low RAM, or refused
//! as not fitting.
#![no_main]

use std::fs::File;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use runvm_vmm::boot::{load_initrd, load_kernel, LoadedKernel};
use runvm_vmm::memory::{create_guest_memory, low_ram_end, GuestMemory};

const MEMORY_SIZE: u64 = 32 << 20;

fn memory() -> &'static GuestMemory {
    static MEMORY: OnceLock<GuestMemory> = OnceLock::new();
    MEMORY.get_or_init(|| create_guest_memory(MEMORY_SIZE).expect("guest memory"))
}

/// The image file: a memfd (no disk I/O per input), opened for the
/// loaders through its /proc path.
fn image() -> &'static (File, PathBuf) {
    static IMAGE: OnceLock<(File, PathBuf)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        // SAFETY: a valid NUL-terminated name; the fd is owned from here on.
        let fd = unsafe { libc::memfd_create(c"runvm-fuzz-image".as_ptr(), 0) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` was just created and nothing else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        (file, PathBuf::from(format!("/proc/self/fd/{fd}")))
    })
}

fn image_path() -> &'static PathBuf {
    &image().1
}

/// The image opened afresh (its own offset), as the VMM opens its files.
fn reopen() -> File {
    File::open(image_path()).expect("open the image")
}

fn write_image(bytes: &[u8]) {
    let mut file = &image().0;
    file.set_len(0).expect("truncate the image");
    file.write_all_at(bytes, 0).expect("write the image");
    let _ = file.flush();
}

fuzz_target!(|data: &[u8]| {
    let mem = memory();
    write_image(data);
    // A kernel whose last segment claims more memory (p_memsz) than the
    // guest has loads: only its file bytes are written, and its end then
    // leaves no room for an initramfs (ImagesDoNotFit), so no bound on
    // `end` is asserted. The kernel is the operator's, not the guest's.
    let _ = load_kernel(&mut reopen(), image_path(), mem);
    // The same bytes as an initramfs, after a kernel ending where the
    // first eight bytes say (memory size and kernel end are the caller's).
    let Some(head) = data.get(..8) else {
        return;
    };
    let end = u64::from_le_bytes(head.try_into().expect("eight bytes")) % (MEMORY_SIZE * 2);
    let kernel = LoadedKernel {
        entry: 0x100_0000,
        end,
        pvh_entry: None,
    };
    if let Ok(placed) = load_initrd(
        &mut reopen(),
        image_path(),
        mem,
        &kernel,
        MEMORY_SIZE,
        low_ram_end(MEMORY_SIZE),
    ) {
        assert_eq!(placed.address % 4096, 0);
        assert!(placed.address >= end);
        assert!(placed.address + placed.size <= MEMORY_SIZE);
        assert_eq!(placed.size, data.len() as u64);
    }
});
