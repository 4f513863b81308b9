//! The jail's two processes: a new PID namespace only holds the children
//! of whoever unshared it, so the VMM forks. The parent (the process the
//! caller started) supervises; the child, PID 1 of the new namespace,
//! goes on to be jailed and run the VM.

use std::os::fd::{AsFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, raise, signal, SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{pipe2, ForkResult, Pid};

use crate::error::Error;

/// What the caller may send to stop the VM; passed on to the jailed VMM.
const FORWARDED: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// The jailed VMM's tie to its supervisor.
pub struct Supervisor {
    /// The read end of a pipe only the supervisor can write to: it hangs
    /// up when the supervisor is gone.
    alive: OwnedFd,
}

impl Supervisor {
    /// Has the kernel kill this process when the supervisor exits (again
    /// after any change of ids, which clears that), and fails if the
    /// supervisor is gone already.
    pub fn die_with_it(&self) -> Result<(), Error> {
        prctl::set_pdeathsig(Signal::SIGKILL)
            .map_err(Error::jail("set the parent-death signal"))?;
        let mut fds = [PollFd::new(self.alive.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::ZERO) {
            Ok(0) => Ok(()),
            Ok(_) => Err(Error::Jail {
                step: "stay with the supervisor",
                reason: "it has exited".into(),
            }),
            Err(e) => Err(Error::jail("poll the supervisor's pipe")(e)),
        }
    }
}

/// Forks into a new PID namespace. Returns in the child only, whose
/// SIGTERM, SIGINT and SIGHUP stay blocked (pending until the VM's
/// signalfd reads them); the parent supervises it and exits as it did.
pub fn fork() -> Result<Supervisor, Error> {
    match std::fs::read_dir("/proc/self/task").map(Iterator::count) {
        Ok(1) => {}
        Ok(n) => {
            return Err(Error::Jail {
                step: "fork the supervisor",
                reason: format!("the process has {n} threads; it must have one"),
            })
        }
        Err(e) => return Err(Error::jail("count the process's threads")(e)),
    }
    // Blocked before the fork: a signal sent to either process from now on
    // waits for it instead of being lost (or killing the child).
    let mut waited: SigSet = FORWARDED.into_iter().collect();
    waited.add(Signal::SIGCHLD);
    waited
        .thread_block()
        .map_err(Error::jail("block the forwarded signals"))?;
    let (alive, alive_writer) =
        pipe2(OFlag::O_CLOEXEC).map_err(Error::jail("create the supervisor's pipe"))?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(Error::jail("create a PID namespace"))?;
    // SAFETY: the process has one thread (checked above), so the child
    // may run any code.
    match unsafe { nix::unistd::fork() }.map_err(Error::jail("fork the jailed VMM"))? {
        ForkResult::Parent { child } => {
            drop(alive);
            supervise(child, &waited, alive_writer)
        }
        ForkResult::Child => {
            drop(alive_writer);
            let supervisor = Supervisor { alive };
            supervisor.die_with_it()?;
            SigSet::from(Signal::SIGCHLD)
                .thread_unblock()
                .map_err(Error::jail("unblock SIGCHLD"))?;
            Ok(supervisor)
        }
    }
}

/// How the supervisor ends once the child has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Exit(i32),
    Signal(Signal),
}

/// The child's ending from a wait status, if it has ended.
fn ending(status: WaitStatus) -> Option<Ending> {
    match status {
        WaitStatus::Exited(_, code) => Some(Ending::Exit(code)),
        WaitStatus::Signaled(_, signal, _) => Some(Ending::Signal(signal)),
        _ => None,
    }
}

/// Passes the stop signals on to `child` until it ends, then ends the same
/// way. `_alive` is held open until then.
fn supervise(child: Pid, waited: &SigSet, _alive: OwnedFd) -> ! {
    loop {
        let signal = match waited.wait() {
            Ok(signal) => signal,
            Err(e) => {
                eprintln!("runvm-vmm: the jail's supervisor cannot wait for signals: {e}");
                let _ = kill(child, Signal::SIGKILL);
                std::process::exit(1);
            }
        };
        if signal != Signal::SIGCHLD {
            let _ = kill(child, signal);
            continue;
        }
        // Several exits may share one SIGCHLD; there is only one child.
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(status) => match ending(status) {
                Some(Ending::Exit(code)) => std::process::exit(code),
                Some(Ending::Signal(signal)) => die_by(signal),
                None => {}
            },
            Err(Errno::EINTR) => {}
            Err(e) => {
                eprintln!("runvm-vmm: the jail's supervisor cannot wait for the VMM: {e}");
                std::process::exit(1);
            }
        }
    }
}

/// Ends this process by `signo`, as the child ended, without a core dump.
fn die_by(signo: Signal) -> ! {
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    // SAFETY: restoring the default disposition installs no handler.
    let _ = unsafe { signal(signo, SigHandler::SigDfl) };
    let _ = SigSet::from(signo).thread_unblock();
    let _ = raise(signo);
    // Only for a signal whose default is not to end the process.
    std::process::exit(128 + signo as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_s_ending_is_passed_on_exactly() {
        let pid = Pid::from_raw(2);
        assert_eq!(ending(WaitStatus::Exited(pid, 6)), Some(Ending::Exit(6)));
        assert_eq!(
            ending(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(Ending::Signal(Signal::SIGKILL))
        );
        assert_eq!(ending(WaitStatus::StillAlive), None);
        assert_eq!(ending(WaitStatus::Stopped(pid, Signal::SIGSTOP)), None);
    }
}
