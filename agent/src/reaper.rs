//! PID 1 inherits every orphan in the guest and must reap them.

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::waitpid;

/// Reap children forever.
///
/// SIGCHLD is blocked so that it stays pending (the kernel drops signals that
/// init has no handler for, but queues blocked ones); with no child left,
/// PID 1 sleeps in sigwait until one appears and exits, with no polling.
///
/// Note for later: processes spawned by the agent inherit this mask and must
/// unblock SIGCHLD before exec.
pub fn reap_forever() -> ! {
    let mut sigchld = SigSet::empty();
    sigchld.add(Signal::SIGCHLD);
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
