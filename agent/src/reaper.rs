//! PID 1 inherits every orphan in the guest and must reap them.
//!
//! There is one reaper. SIGCHLD is blocked (the kernel drops signals that
//! init has no handler for, but queues blocked ones), so an exit leaves it
//! pending: the API server reads it from a signalfd and then reaps with
//! `waitpid(-1, WNOHANG)` until nothing is left; without the server,
//! [`reap_forever`] sleeps in sigwait instead. Processes the agent spawns
//! get a clean signal mask (`exec::child_setup`).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::waitpid;
use runvm_agent_api::ExitStatus;

fn sigchld_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    set
}

/// Blocks SIGCHLD in the calling thread (and the threads it creates later).
pub fn block_sigchld() -> nix::Result<()> {
    sigchld_set().thread_block()
}

/// A non-blocking signalfd that becomes readable when SIGCHLD is pending.
/// SIGCHLD must be blocked.
pub fn sigchld_fd() -> io::Result<OwnedFd> {
    let set = sigchld_set();
    // SAFETY: signalfd(2) reads the set; -1 asks for a new descriptor.
    let fd = unsafe { libc::signalfd(-1, set.as_ref(), libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// How a process ended, from a raw `waitpid` status; `None` for a stop or
/// continue report.
pub fn decode_status(status: libc::c_int) -> Option<ExitStatus> {
    if libc::WIFEXITED(status) {
        Some(ExitStatus::Code(libc::WEXITSTATUS(status)))
    } else if libc::WIFSIGNALED(status) {
        Some(ExitStatus::Signal(libc::WTERMSIG(status)))
    } else {
        None
    }
}

/// Reaps every child that has ended, without blocking, and hands each
/// `(pid, status)` to `record`. Raw `waitpid` rather than nix's: nix turns
/// a death by a real-time signal into an error after the child is reaped.
pub fn reap_ready(mut record: impl FnMut(i32, ExitStatus)) {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes the status into our local.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            if let Some(status) = decode_status(status) {
                record(pid, status);
            }
        } else if pid < 0 && Errno::last() == Errno::EINTR {
            continue;
        } else {
            // 0: children left, none ended; ECHILD: no children at all.
            return;
        }
    }
}

/// Reap children forever (PID 1 without the API server).
///
/// With no child left, PID 1 sleeps in sigwait until one appears and
/// exits, with no polling.
pub fn reap_forever() -> ! {
    let sigchld = sigchld_set();
    let blocked = match sigchld.thread_block() {
        Ok(()) => true,
        Err(e) => {
            agent_log!("cannot block SIGCHLD: {e}; polling for children instead");
            false
        }
    };
    loop {
        match waitpid(None, None) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) if blocked => {
                if let Err(e) = sigchld.wait() {
                    agent_log!("sigwait failed: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            Err(Errno::ECHILD) => std::thread::sleep(Duration::from_secs(1)),
            Err(e) => {
                agent_log!("waitpid failed: {e}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decode_like_a_shell_sees_them() {
        assert_eq!(decode_status(0), Some(ExitStatus::Code(0)));
        assert_eq!(decode_status(3 << 8), Some(ExitStatus::Code(3)));
        assert_eq!(decode_status(9), Some(ExitStatus::Signal(9)));
        // Killed by a real-time signal, core dumped.
        assert_eq!(decode_status(0x80 | 40), Some(ExitStatus::Signal(40)));
        // Stopped by SIGSTOP: not an ending.
        assert_eq!(decode_status((19 << 8) | 0x7f), None);
    }
}
