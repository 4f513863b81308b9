//! The VMM's stderr, relayed and remembered.

use std::fs;
use std::io::{Read, Write};
use std::process::ChildStderr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How much of the VMM's stderr is kept for error messages.
const VMM_STDERR_TAIL_BYTES: usize = 4096;

/// The VMM's stderr, passed on to ours as it comes, its tail kept for
/// error messages.
pub struct StderrTee {
    tail: Arc<Mutex<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StderrTee {
    /// Passes the output on to `sink`, or to our stderr.
    pub fn start(mut pipe: ChildStderr, mut sink: Option<fs::File>) -> std::io::Result<StderrTee> {
        let tail = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&tail);
        let thread = std::thread::Builder::new()
            .name("vmm-stderr".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let _ = match sink.as_mut() {
                        Some(file) => file.write_all(&buf[..n]),
                        None => std::io::stderr().write_all(&buf[..n]),
                    };
                    let mut tail = kept.lock().unwrap_or_else(|e| e.into_inner());
                    tail.extend_from_slice(&buf[..n]);
                    let excess = tail.len().saturating_sub(VMM_STDERR_TAIL_BYTES);
                    tail.drain(..excess);
                }
            })?;
        Ok(StderrTee {
            tail,
            thread: Some(thread),
        })
    }

    /// What the VMM wrote last. Once it has exited, waits briefly for the
    /// rest of its output to arrive.
    pub fn text(&mut self, exited: bool) -> String {
        if exited {
            let deadline = Instant::now() + Duration::from_millis(500);
            while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let _ = self.thread.take().map(|t| t.join());
            }
        }
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&tail).into_owned()
    }
}

/// What the VMM's seccomp report says, from its stderr: "syscall N
/// (name) in the KIND thread".
pub(super) fn seccomp_report(stderr: &str) -> String {
    stderr
        .lines()
        .rev()
        .find_map(|line| line.split_once(super::VMM_SECCOMP_REPORT))
        .map(|(_, report)| report.trim().to_owned())
        .unwrap_or_else(|| "the VMM did not say which system call".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seccomp_report_is_the_vmm_last_such_line() {
        let stderr =
            "booting\nrunvm-vmm: killed by seccomp: syscall 41 (socket) in the vCPU thread\n";
        assert_eq!(
            seccomp_report(stderr),
            "syscall 41 (socket) in the vCPU thread"
        );
        assert_eq!(
            seccomp_report("killed by SIGSYS\n"),
            "the VMM did not say which system call"
        );
        let error = super::super::VmError::Seccomp {
            status: std::os::unix::process::ExitStatusExt::from_raw(7 << 8),
            report: seccomp_report(stderr),
        };
        assert!(
            error
                .to_string()
                .starts_with("VMM killed by seccomp: syscall 41 (socket)"),
            "{error}"
        );
    }
}
