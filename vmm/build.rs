//! Builds the guest loader (guest-loader/loader.c), the /init that maps a
//! preloaded agent instead of reading it (see `boot::init_program`): a
//! freestanding static x86-64 executable of a few KiB, and the initramfs
//! that holds it as /init (rootfs-builder's image, with the loader as its
//! agent), both embedded in runvm-vmm. Needs a C compiler (`$CC`, else
//! `cc`), as the guest kernel build does.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let source = "guest-loader/loader.c";
    println!("cargo:rerun-if-changed={source}");
    println!("cargo:rerun-if-env-changed=CC");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let out = out_dir.join("runvm-loader");
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let status = Command::new(&cc)
        .args([
            "-Os",
            "-static",
            "-nostdlib",
            "-ffreestanding",
            "-fno-builtin",
            // No loop turned into a memcpy/memset call: there is no libc.
            "-fno-tree-loop-distribute-patterns",
            "-fno-stack-protector",
            "-fno-asynchronous-unwind-tables",
            "-fno-pie",
            "-no-pie",
            "-Wall",
            "-Wextra",
            "-Werror",
            // Far from where the agent (a static executable) is linked.
            "-Wl,-Ttext-segment=0x10000000", // LOADER_BASE in loader.c
            "-Wl,--build-id=none",
            "-o",
        ])
        .arg(&out)
        .arg(source)
        .status()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?} for {source}: {e}"));
    assert!(status.success(), "{cc} failed to build {source}");
    let loader = std::fs::read(&out).expect("read the loader just built");
    let archive = runvm_rootfs_builder::build_image(&loader, None)
        .unwrap_or_else(|e| panic!("cannot write the loader's initramfs: {e}"));
    std::fs::write(out_dir.join("loader.cpio"), archive).expect("write the loader's initramfs");
}
