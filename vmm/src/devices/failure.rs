//! How a device tells the VMM that the VM cannot go on: a backend process
//! it depends on went away, or refused to serve. The VMM's main thread
//! waits on [`FailureReporter::event`] next to the vCPUs and termination
//! signals, and ends the VM with the first message reported.

use std::sync::{Mutex, PoisonError};

use vmm_sys_util::eventfd::EventFd;

pub struct FailureReporter {
    event: EventFd,
    first: Mutex<Option<String>>,
}

impl FailureReporter {
    pub fn new() -> std::io::Result<FailureReporter> {
        Ok(FailureReporter {
            event: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
            first: Mutex::new(None),
        })
    }

    /// Records `message` unless an earlier failure was reported, and wakes
    /// the VMM. Callable from any thread.
    pub fn report(&self, message: String) {
        let mut first = self.first.lock().unwrap_or_else(PoisonError::into_inner);
        if first.is_none() {
            *first = Some(message);
        }
        drop(first);
        // A full counter still reads as signalled.
        let _ = self.event.write(1);
    }

    /// Readable once a failure was reported.
    pub fn event(&self) -> &EventFd {
        &self.event
    }

    /// The first failure reported, if any.
    pub fn first(&self) -> Option<String> {
        self.first
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_report_wins_and_signals_the_event() {
        let failures = FailureReporter::new().unwrap();
        assert_eq!(failures.first(), None);
        assert!(failures.event().read().is_err(), "nothing reported yet");
        failures.report("backend A went away".into());
        failures.report("backend B went away".into());
        assert_eq!(failures.first().as_deref(), Some("backend A went away"));
        assert!(failures.event().read().is_ok());
    }
}
