//! runvm-agent: PID 1 inside a runvm guest.
//!
//! It moves its root off the initramfs (so containers can pivot_root, see
//! `switch_root`), then either serves the host's API over vsock (the
//! default: see `server`), printing one ready line on the console once the
//! API is available, or prints that line and powers off or reboots
//! (`--poweroff`, `--reboot`).
//!
//! The kernel filesystems (`mounts`) are only for containers and the API's
//! requests, so they are mounted after the ready line, before the first
//! request is read: the host's connection waits in the kernel's queue
//! meanwhile. A guest that only powers off or reboots mounts nothing.
//!
//! The guest kernel may be emulated instruction by instruction, so every
//! syscall is expensive: the boot path makes as few as it can and writes each
//! console line with a single write(2).
//!
//! For the same reason the binary has no Rust `fn main`: `#![no_main]` skips
//! std's runtime set-up (an fd poll, SIGPIPE, and the main-thread stack
//! guard, which reads /proc/self/maps and installs SIGSEGV/SIGBUS handlers
//! on an alternate stack), about 16 syscalls or ~3 ms of emulated guest
//! kernel. glibc still calls the C `main` below, and std still captures argv
//! (on glibc it does so from `.init_array`), so `std::env::args_os` works.
//! A stack overflow is then a plain SIGSEGV instead of a message; for PID 1
//! both end the same way.

#![cfg_attr(not(test), no_main)]

#[macro_use]
mod log;
mod args;
mod container;
mod exec;
mod fdio;
mod loopback;
mod mounts;
mod network;
mod power;
mod processes;
mod reaper;
mod reseed;
mod server;
mod share;
mod state;
mod streams;
mod switch_root;

use std::ffi::{c_char, c_int};
use std::io::Write;
use std::panic;

use args::Action;

/// The one line the VMM tests and the boot benchmark wait for.
use runvm_agent_api::READY_LINE;

/// The C entry point, exported as `main` and called by glibc's start-up
/// code. (Under `cargo test` the harness owns `main`.)
#[cfg_attr(not(test), export_name = "main")]
pub extern "C" fn init_entry(_argc: c_int, _argv: *const *const c_char) -> c_int {
    agent_main()
}

fn agent_main() -> c_int {
    let is_init = nix::unistd::getpid().as_raw() == 1;
    // PID 1 must never return from main nor unwind out of it: the kernel
    // panics when init exits. A panic anywhere below powers the guest off.
    match panic::catch_unwind(|| run(is_init)) {
        Ok(status) => status,
        Err(_) if !is_init => 101,
        Err(_) => {
            agent_log!("panic in PID 1; powering off");
            power::power_off()
        }
    }
}

/// Returns only when not running as PID 1.
fn run(is_init: bool) -> c_int {
    let config = args::parse(std::env::args_os().skip(1));
    if !is_init {
        agent_log!(
            "running as pid {}, not PID 1: refusing to mount or reboot anything \
             (this binary is the init of a runvm guest, not a host tool)",
            std::process::id()
        );
        return 2;
    }
    boot(&config)
}

fn boot(config: &args::Config) -> ! {
    for arg in &config.unknown {
        agent_log!("ignoring unknown argument {arg:?}");
    }
    if let Some(conflict) = &config.conflict {
        agent_log!("{conflict}");
    }

    // Before anything is mounted on the initramfs.
    let root = switch_root::leave_initramfs();

    match config.action {
        Action::PowerOff => {
            announce_ready();
            power::power_off()
        }
        Action::Reboot => {
            announce_ready();
            power::reboot()
        }
        Action::Serve => serve(root, config.template),
    }
}

/// Serve the API; the ready line comes once its listeners are bound. If
/// the server cannot start (no vsock device, say), say why and stay up as a
/// plain reaping init, without the ready line: the guest is of no use to a
/// host that waits for the API.
///
/// A VM booted to become a template (`template`) mounts and warms up
/// before its ready line, since the host saves it at that point and every
/// restored VM starts from there; any other VM says it is ready first and
/// mounts while the host's first request travels.
fn serve(root: switch_root::Root, template: bool) -> ! {
    // Before the runtime exists, so every thread it might create inherits
    // the mask: SIGCHLD then stays pending for the signalfd.
    if let Err(e) = reaper::block_sigchld() {
        agent_log!("cannot block SIGCHLD: {e}");
    }
    let ready = || {
        announce_ready();
        tell_the_host();
    };
    // Before the server reads a request: every request may need them.
    let mount = || {
        mounts::mount_all(root);
    };
    let start = if template {
        server::Start::Template
    } else {
        server::Start::Plain
    };
    let error = server::run_in_guest(start, ready, mount);
    agent_log!("the API server is not available: {error}");
    reaper::reap_forever()
}

/// Print the ready line on stdout (the console) with a single write.
fn announce_ready() {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out
        .write_all(READY_LINE.as_bytes())
        .and_then(|()| out.flush())
    {
        agent_log!("cannot write the ready line: {e}");
    }
}

/// Connect to the host's readiness port and say the ready line there: the
/// runtime waits for it instead of polling the guest. A host that does not
/// listen (a bare `runvm-vmm`) resets the connection; that is not an error.
fn tell_the_host() {
    use runvm_agent_api::READY_PORT;
    match vsock::VsockStream::connect_with_cid_port(libc::VMADDR_CID_HOST, READY_PORT) {
        Ok(mut stream) => {
            if let Err(e) = stream.write_all(READY_LINE.as_bytes()) {
                agent_log!("cannot tell the host that the agent is ready: {e}");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => agent_log!("cannot reach the host's readiness port {READY_PORT}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::{init_entry, READY_LINE};

    #[test]
    fn ready_line_is_exact() {
        assert_eq!(
            READY_LINE,
            format!("runvm-agent {} ready\n", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn refuses_to_run_unless_pid_1() {
        // The test runner is never PID 1: nothing is mounted, exit status 2.
        assert_eq!(init_entry(0, std::ptr::null()), 2);
    }
}
