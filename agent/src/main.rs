//! runvm-agent: PID 1 inside a runvm guest.
//!
//! Today it mounts the kernel filesystems, prints one ready line on the
//! console and then powers off, reboots, or stays up reaping children (where
//! the vsock API server will live).
//!
//! The guest kernel may be emulated instruction by instruction, so every
//! syscall is expensive: the boot path makes as few as it can and writes each
//! console line with a single write(2).

#[macro_use]
mod log;
mod args;
mod mounts;
mod power;
mod reaper;

use std::io::Write;
use std::panic;
use std::process;

use args::Action;

/// The one line the VMM tests and the boot benchmark wait for.
const READY_LINE: &str = concat!("runvm-agent ", env!("CARGO_PKG_VERSION"), " ready\n");

fn main() {
    let config = args::parse(std::env::args_os().skip(1));

    let pid = nix::unistd::getpid().as_raw();
    if pid != 1 {
        agent_log!(
            "running as pid {pid}, not PID 1: refusing to mount or reboot anything \
             (this binary is the init of a runvm guest, not a host tool)"
        );
        process::exit(2);
    }

    // PID 1 must never return from main nor unwind out of it: the kernel
    // panics when init exits. A panic anywhere below powers the guest off.
    let outcome = panic::catch_unwind(|| run(&config));
    if outcome.is_err() {
        agent_log!("panic in PID 1; powering off");
    }
    power::power_off()
}

fn run(config: &args::Config) -> ! {
    for arg in &config.unknown {
        agent_log!("ignoring unknown argument {arg:?}");
    }
    if let Some(conflict) = &config.conflict {
        agent_log!("{conflict}");
    }

    mounts::mount_all();
    announce_ready();

    match config.action {
        Action::PowerOff => power::power_off(),
        Action::Reboot => power::reboot(),
        Action::Serve => reaper::reap_forever(),
    }
}

/// Print the ready line on stdout (the console) with a single write.
fn announce_ready() {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(READY_LINE.as_bytes()).and_then(|()| out.flush()) {
        agent_log!("cannot write the ready line: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::READY_LINE;

    #[test]
    fn ready_line_is_exact() {
        assert_eq!(
            READY_LINE,
            format!("runvm-agent {} ready\n", env!("CARGO_PKG_VERSION"))
        );
    }
}
