//! The VMM's boot image loaders (vmm/src/boot/images.rs): any file as the
//! kernel (an ELF read by linux-loader) is loaded into guest memory or
//! refused, never a panic, and a loaded kernel ends inside guest memory;
//! an initramfs of any size is placed page-aligned above the kernel and
//! below the end of low RAM, or refused as not fitting.
#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use runvm_vmm::boot::{load_initrd, load_kernel, LoadedKernel};
use runvm_vmm::memory::{create_guest_memory, GuestMemory};

const MEMORY_SIZE: u64 = 32 << 20;

fn memory() -> &'static GuestMemory {
    static MEMORY: OnceLock<GuestMemory> = OnceLock::new();
    MEMORY.get_or_init(|| create_guest_memory(MEMORY_SIZE).expect("guest memory"))
}

fn image_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("runvm-fuzz-image-{}", std::process::id()))
    })
}

fn write_image(bytes: &[u8]) {
    let mut file = std::fs::File::create(image_path()).expect("create the image file");
    file.write_all(bytes).expect("write the image file");
}

fuzz_target!(|data: &[u8]| {
    let mem = memory();
    write_image(data);
    if let Ok(kernel) = load_kernel(image_path(), mem) {
        assert!(
            kernel.end <= MEMORY_SIZE,
            "kernel ends at {:#x}",
            kernel.end
        );
    }
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
    if let Ok(placed) = load_initrd(image_path(), mem, &kernel, MEMORY_SIZE) {
        assert_eq!(placed.address % 4096, 0);
        assert!(placed.address >= end);
        assert!(placed.address + placed.size <= MEMORY_SIZE);
        assert_eq!(placed.size, data.len() as u64);
    }
});
