//! How long the host waits for a guest. A guest can stop answering (its
//! kernel hung, its VMM stopped or wedged) while a runvm call holds the
//! container's lock, so every call to the agent has a deadline; past it
//! the call fails naming the operation and the deadline.
//!
//! The figures are for the slowest host runvm runs on: one whose KVM
//! emulates every guest-kernel instruction, where a container boots in
//! 16-25 s and a guest system call costs ~1.2 ms, shared with other
//! busy work. Each deadline is several times what the operation takes
//! there, so that a loaded host is not mistaken for a hung guest; the
//! ones a caller waits on interactively (kill, state queries) stay short.
//!
//! | operation                  | deadline | why                                                    |
//! |----------------------------|----------|--------------------------------------------------------|
//! | boot (agent ready)         | 300 s    | 16-25 s today; a boot is all emulated kernel work     |
//! | create (share + container) | 120 s    | mounts, namespaces, cgroup, fork+exec: ~2 s today     |
//! | exec                       | 60 s     | setns, cgroup join, fork+exec, streams: ~1 s today    |
//! | start                      | 30 s     | releases the held init: a few syscalls                |
//! | pause / resume             | 30 s     | the agent itself waits up to 10 s for the freezer     |
//! | update                     | 20 s     | a handful of cgroup writes                            |
//! | ps, events (stats)         | 15 s     | reads /proc and cgroup files per process              |
//! | kill                       | 10 s     | one kill(2) in the guest: well under a second today   |
//! | terminal resize            | 5 s      | one ioctl; best effort, it only delays the next one   |
//!
//! Waiting for a process to end, and `events` waiting for the next event,
//! have no deadline: they last as long as the container does.

use std::future::Future;
use std::time::Duration;

use crate::agent_client::ClientError;

/// The guest's agent says it is ready.
pub const BOOT: Duration = Duration::from_secs(300);
/// The share is mounted in the guest and the container created there.
pub const CREATE: Duration = Duration::from_secs(120);
/// A process is started in a running container (connection included).
pub const EXEC: Duration = Duration::from_secs(60);
pub const START: Duration = Duration::from_secs(30);
/// pause and resume.
pub const FREEZE: Duration = Duration::from_secs(30);
pub const UPDATE: Duration = Duration::from_secs(20);
/// ps, and each stats sample of events.
pub const QUERY: Duration = Duration::from_secs(15);
/// kill, and the signals a monitor forwards.
pub const KILL: Duration = Duration::from_secs(10);
pub const RESIZE: Duration = Duration::from_secs(5);

/// How long `create` waits for its monitor's report: the boot and the
/// creation, plus time for the monitor to start and to fail cleanly.
pub const CREATE_REPORT: Duration = Duration::from_secs(BOOT.as_secs() + CREATE.as_secs() + 30);
/// How long `exec --detach` waits for its monitor's report.
pub const EXEC_REPORT: Duration = Duration::from_secs(EXEC.as_secs() + 30);
/// How long a call waits for a container's lock: longer than anyone can
/// hold it (a `create`, bounded by [`CREATE_REPORT`], then its hooks'
/// own timeouts), so a stuck holder ends before a waiter gives up.
pub const LOCK: Duration = Duration::from_secs(CREATE_REPORT.as_secs() + 60);

/// Runs `work` (a connection to the agent and the calls on it) for at
/// most `limit`; past it, [`ClientError::Deadline`] names `operation`.
pub async fn within<T, E: From<ClientError>>(
    operation: &'static str,
    limit: Duration,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_elapsed) => Err(ClientError::Deadline { operation, limit }.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
    }

    #[test]
    fn a_call_past_its_deadline_names_the_operation_and_the_deadline() {
        let limit = Duration::from_millis(50);
        let started = std::time::Instant::now();
        let result: Result<(), ClientError> =
            block_on(within("kill", limit, std::future::pending()));
        assert!(started.elapsed() < Duration::from_secs(5));
        let message = result.expect_err("a deadline").to_string();
        assert_eq!(
            message,
            "runvm kill: the agent did not answer within 0.05 s"
        );
        let message = ClientError::Deadline {
            operation: "pause",
            limit: FREEZE,
        }
        .to_string();
        assert_eq!(message, "runvm pause: the agent did not answer within 30 s");
    }

    #[test]
    fn an_answer_in_time_is_passed_on() {
        let result = block_on(within("ps", QUERY, async { Ok::<_, ClientError>(7) }));
        assert_eq!(result.ok(), Some(7));
        let failed = block_on(within("ps", QUERY, async {
            Err::<(), _>(ClientError::Closed)
        }));
        assert!(matches!(failed, Err(ClientError::Closed)));
    }

    #[test]
    fn interactive_deadlines_are_shorter_than_creating_ones() {
        for quick in [KILL, QUERY, UPDATE, FREEZE, START] {
            assert!(quick < EXEC && EXEC < CREATE && CREATE < BOOT);
            assert!(quick >= Duration::from_secs(10), "{quick:?} is flaky");
        }
        // A freeze the agent waits 10 s for fits in the host's deadline.
        assert!(FREEZE > Duration::from_secs(10));
        assert!(LOCK > CREATE_REPORT && CREATE_REPORT > BOOT + CREATE);
    }
}
