//! Powering the guest off or rebooting it. Nothing is synced: the initramfs
//! is the only filesystem and it is thrown away with the VM.

use std::time::Duration;

use nix::sys::reboot::{reboot as sys_reboot, RebootMode};

/// Power the guest off. Never returns: if the kernel refuses, PID 1 parks
/// itself instead of exiting (an exiting init panics the kernel).
pub fn power_off() -> ! {
    finish(RebootMode::RB_POWER_OFF, "power off")
}

/// Reboot the guest; the VMM decides what a reboot means.
pub fn reboot() -> ! {
    finish(RebootMode::RB_AUTOBOOT, "reboot")
}

fn finish(mode: RebootMode, what: &str) -> ! {
    // reboot(2) only returns on failure.
    let Err(e) = sys_reboot(mode);
    agent_log!("cannot {what}: {e}; idling");
    park()
}

/// Sleep forever, waking once an hour (one syscall), never exiting.
fn park() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
