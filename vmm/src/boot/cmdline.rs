//! The guest kernel command line: runvm's own parameters, the host
//! profile's, the caller's, then the arguments for init.

use crate::error::Error;
use crate::host_profile::HostProfile;
use crate::memory::CMDLINE_MAX_SIZE;

/// I/O port through which runvm's guest kernel reports power-off (0) and
/// reset (1); see `guest-kernel/patches`. Without ACPI a guest has no other
/// way to power off, and writing to it is harmless under any other VMM.
pub const EXIT_PORT: u64 = 0xf4;

/// Parameters every runvm guest gets.
const BASE_PARAMS: &[&str] = &[
    "console=ttyS0",
    // Every console character is a VM exit: print only warnings and worse.
    "quiet",
    // A panicking guest resets at once; the VMM reports it and exits.
    "panic=-1",
];

/// With a root disk: mount it read-only as the root and run the agent
/// it holds as /init (the kernel looks for /sbin/init otherwise).
pub const ROOT_DISK_PARAMS: &[&str] = &["root=/dev/vda", "ro", "rootfstype=ext4", "init=/init"];

/// How the guest finds a virtio-mmio device without ACPI or a device tree.
pub fn virtio_mmio_param(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device=4K@{base:#x}:{irq}")
}

/// runvm's parameters, then the host profile's, the devices', the
/// caller's, and init's arguments after `--`.
pub fn build_cmdline(
    profile: HostProfile,
    device_params: &[String],
    extra: &[String],
    init_args: &[String],
) -> Result<String, Error> {
    let mut words: Vec<String> = BASE_PARAMS.iter().map(|s| s.to_string()).collect();
    words.extend(profile.kernel_params());
    words.extend(device_params.iter().cloned());
    words.extend(extra.iter().cloned());
    if !init_args.is_empty() {
        words.push("--".into());
        words.extend(init_args.iter().cloned());
    }
    let cmdline = words.join(" ");
    // The kernel silently truncates a longer line; that would cut init's
    // arguments, so refuse it instead.
    if cmdline.len() >= CMDLINE_MAX_SIZE {
        return Err(Error::Cmdline(format!(
            "{} bytes, the guest accepts at most {}",
            cmdline.len(),
            CMDLINE_MAX_SIZE - 1
        )));
    }
    Ok(cmdline)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_args_come_last_after_a_separator() {
        let line = build_cmdline(
            HostProfile::Hardware,
            &[virtio_mmio_param(0xd000_0000, 5)],
            &["loglevel=7".into()],
            &["--poweroff".into()],
        )
        .unwrap();
        assert_eq!(
            line,
            "console=ttyS0 quiet panic=-1 virtio_mmio.device=4K@0xd0000000:5 loglevel=7 -- --poweroff"
        );
    }

    #[test]
    fn emulated_profile_is_added() {
        let line = build_cmdline(HostProfile::EmulatedKernel, &[], &[], &[]).unwrap();
        assert!(line.contains("noxsave"));
        assert!(!line.contains("--"));
    }

    #[test]
    fn overlong_line_is_refused() {
        let long = vec!["x".repeat(CMDLINE_MAX_SIZE)];
        assert!(build_cmdline(HostProfile::Hardware, &[], &long, &[]).is_err());
    }
}
