//! A thread that keeps an eye on a vhost-user connection.
//!
//! - The frontend reads the socket only while it waits for a reply, so a
//!   backend that dies between requests would go unnoticed while the guest
//!   waits on it: the watch sees the hang-up and reports [`Loss::HungUp`].
//! - The frontend retries a receive that times out, so a backend that stops
//!   answering would block the caller for ever: while a request is
//!   outstanding ([`ConnectionWatch::arm`]) the watch cuts the connection
//!   at the deadline, which makes the blocked receive fail, and reports
//!   [`Loss::Unresponsive`].
//!
//! The loss is reported once, through the callback given at start.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use crate::seccomp::ThreadKind;

/// How a connection was lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loss {
    /// The backend closed its end: it exited or crashed.
    HungUp,
    /// A request went unanswered past its deadline; the watch cut the
    /// connection.
    Unresponsive,
}

pub type OnLoss = Box<dyn FnOnce(Loss) + Send>;

struct Shared {
    deadline: Mutex<Option<Instant>>,
    stopping: AtomicBool,
    timed_out: AtomicBool,
}

pub struct ConnectionWatch {
    shared: Arc<Shared>,
    /// Wakes the thread to look at the deadline again, or to stop.
    wake: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl ConnectionWatch {
    /// Watches `connection`, a second descriptor of the frontend's socket.
    pub fn start(connection: OwnedFd, on_loss: OnLoss) -> std::io::Result<ConnectionWatch> {
        let shared = Arc::new(Shared {
            deadline: Mutex::new(None),
            stopping: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
        });
        let wake = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        let watcher = Watcher {
            connection,
            wake: wake.try_clone()?,
            shared: shared.clone(),
        };
        let thread = crate::seccomp::spawn(ThreadKind::FsWatch, "vhost-user-watch", move || {
            block_signals();
            if let Some(loss) = watcher.run() {
                on_loss(loss);
            }
        })?;
        Ok(ConnectionWatch {
            shared,
            wake,
            thread: Some(thread),
        })
    }

    /// A request is outstanding: cut the connection unless it is answered
    /// (and [`ConnectionWatch::disarm`] called) within `timeout`.
    pub fn arm(&self, timeout: Duration) {
        *self.deadline() = Some(Instant::now() + timeout);
        let _ = self.wake.write(1);
    }

    /// The request was answered. The thread finds out at the old deadline
    /// at the latest, which is soon enough.
    pub fn disarm(&self) {
        *self.deadline() = None;
    }

    /// Whether the watch cut the connection because a reply was late.
    pub fn timed_out(&self) -> bool {
        self.shared.timed_out.load(Ordering::Acquire)
    }

    fn deadline(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.shared
            .deadline
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for ConnectionWatch {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.wake.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The VMM takes its termination signals through a signalfd, blocked in
/// every thread; this thread may start before they are blocked, and must
/// never be the one a signal is delivered to. All but SIGSYS, which
/// reports a seccomp violation and kills without a word when blocked.
fn block_signals() {
    // SAFETY: plain libc calls on a local, initialised sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigdelset(&mut set, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

struct Watcher {
    connection: OwnedFd,
    wake: EventFd,
    shared: Arc<Shared>,
}

impl Watcher {
    /// Runs until the connection is lost (how) or the watch is dropped
    /// (None).
    fn run(&self) -> Option<Loss> {
        // Only a hang-up is of interest: a reply waiting to be read must not
        // wake this thread, so POLLIN is not asked for.
        let mut fds = [
            libc::pollfd {
                fd: self.connection.as_raw_fd(),
                events: libc::POLLRDHUP,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            if self.shared.stopping.load(Ordering::Acquire) {
                return None;
            }
            let deadline = *self
                .shared
                .deadline
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let timeout_ms = match deadline {
                None => -1,
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        self.cut();
                        return Some(Loss::Unresponsive);
                    }
                    // Rounded up, so the deadline has passed on waking.
                    i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
                }
            };
            // SAFETY: `fds` is a valid array of two pollfd structures.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
            if rc < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // Cannot watch: leave it to the frontend to notice.
                return None;
            }
            if fds[1].revents != 0 {
                let _ = self.wake.read();
            }
            let lost = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
            if fds[0].revents & lost != 0 && !self.shared.stopping.load(Ordering::Acquire) {
                return Some(Loss::HungUp);
            }
        }
    }

    /// Shuts the socket down both ways: the frontend's blocked receive
    /// returns end of file, and the backend sees the VMM leave.
    fn cut(&self) {
        self.shared.timed_out.store(true, Ordering::Release);
        // SAFETY: shutdown on a descriptor this watcher owns.
        unsafe { libc::shutdown(self.connection.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;

    fn watch(ours: &UnixStream) -> (ConnectionWatch, mpsc::Receiver<Loss>) {
        let (report, reported) = mpsc::channel();
        let fd = OwnedFd::from(ours.try_clone().unwrap());
        let watch = ConnectionWatch::start(
            fd,
            Box::new(move |loss| {
                let _ = report.send(loss);
            }),
        )
        .unwrap();
        (watch, reported)
    }

    #[test]
    fn a_peer_hanging_up_is_reported_once() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_watch, reported) = watch(&ours);
        assert!(reported.recv_timeout(Duration::from_millis(100)).is_err());
        drop(theirs);
        assert_eq!(
            reported.recv_timeout(Duration::from_secs(5)),
            Ok(Loss::HungUp)
        );
    }

    #[test]
    fn data_from_the_peer_is_no_loss() {
        use std::io::Write;
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let (_watch, reported) = watch(&ours);
        theirs.write_all(b"a reply").unwrap();
        assert!(reported.recv_timeout(Duration::from_millis(200)).is_err());
    }

    #[test]
    fn an_unanswered_request_is_cut_at_its_deadline() {
        use std::io::Read;
        let (mut ours, _theirs) = UnixStream::pair().unwrap();
        let (watch, reported) = watch(&ours);
        let started = Instant::now();
        watch.arm(Duration::from_millis(150));
        // A receive that would block for ever returns once cut.
        let mut byte = [0u8; 1];
        assert_eq!(ours.read(&mut byte).unwrap(), 0);
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(watch.timed_out());
        assert_eq!(
            reported.recv_timeout(Duration::from_secs(5)),
            Ok(Loss::Unresponsive)
        );
    }

    #[test]
    fn an_answered_request_is_not_cut() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let (watch, reported) = watch(&ours);
        watch.arm(Duration::from_millis(100));
        watch.disarm();
        std::thread::sleep(Duration::from_millis(250));
        assert!(!watch.timed_out());
        assert!(reported.try_recv().is_err());
    }

    #[test]
    fn dropping_the_watch_reports_nothing() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (watch, reported) = watch(&ours);
        drop(watch);
        drop(theirs);
        assert!(reported.recv_timeout(Duration::from_millis(200)).is_err());
    }
}
