//! A command run on a pseudo-terminal this test opens, as a user at a
//! terminal would run it (podman -it, ctr -t).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{self, wait_for, COMMAND_PATIENCE};

/// A process in a new session with a pseudo-terminal of `rows`×`cols` as
/// its controlling terminal and stdio; what it writes collects in the
/// returned buffer.
pub struct InPty {
    child: std::process::Child,
    master: File,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl InPty {
    pub fn spawn(mut command: Command, rows: u16, cols: u16) -> InPty {
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty(3) with valid out-pointers and size.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are ours alone.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        for fd in [&master, &slave] {
            // SAFETY: fcntl(2) on an open descriptor: not inherited.
            unsafe {
                libc::fcntl(
                    std::os::fd::AsRawFd::as_raw_fd(fd),
                    libc::F_SETFD,
                    libc::FD_CLOEXEC,
                )
            };
        }
        command
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let what = harness::describe(&command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        // The command holds our copies of the terminal: drop them, so that
        // only the child has it.
        drop(command);
        let master = File::from(master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup the master");
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // EIO once no process has the terminal open any more.
            while let Ok(n @ 1..) = reader.read(&mut buffer) {
                sink.lock()
                    .expect("not poisoned")
                    .extend_from_slice(&buffer[..n]);
            }
        });
        InPty {
            child,
            master,
            seen,
        }
    }

    pub fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().expect("not poisoned")).into_owned()
    }

    #[track_caller]
    pub fn wait_for_text(&self, wanted: &str) {
        wait_for(&format!("{wanted:?} on the terminal"), || {
            let seen = self.seen();
            seen.contains(wanted).then_some(()).ok_or(seen)
        });
    }

    pub fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).expect("type");
    }

    #[track_caller]
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + COMMAND_PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the terminal session did not end; it showed:\n{}",
                    self.seen()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
