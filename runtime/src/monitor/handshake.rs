//! The handshake between a runvm call and the monitor it starts (see the
//! parent module): a socket pair, the monitor's report, the caller's `go`.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{MonitorArgs, MonitorError};
use crate::state::HostProcess;

/// The report a monitor sends when it is set up.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    Ready {
        /// The VMM and virtiofsd (init monitors).
        helpers: Vec<HostProcess>,
    },
    Error(String),
}

/// The monitor's end of the socket pair.
pub(super) struct Sync {
    stream: Option<UnixStream>,
}

impl Sync {
    pub(super) fn from_fd(fd: Option<i32>) -> Sync {
        Sync {
            stream: fd.map(|fd| {
                // It was handed over across exec; the VMM and virtiofsd,
                // started from here, must not inherit it: they would keep
                // the caller's end from seeing this process go.
                // SAFETY: fcntl on the inherited descriptor, which was
                // passed for this purpose and nothing else here uses.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
                // SAFETY: as above; this value owns it from now on.
                unsafe { UnixStream::from_raw_fd(fd) }
            }),
        }
    }

    pub(super) fn report(&mut self, report: &Report) {
        if let Some(stream) = self.stream.as_mut() {
            let mut line = serde_json::to_vec(report).unwrap_or_default();
            line.push(b'\n');
            let _ = stream.write_all(&line);
        }
    }

    /// Waits for the caller's `go`; anything else (EOF included) aborts.
    pub(super) async fn wait_go(&mut self) -> Result<(), MonitorError> {
        let Some(stream) = self.stream.take() else {
            return Ok(());
        };
        let told = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let ok = BufReader::new(&stream).read_line(&mut line).is_ok() && line.trim() == "go";
            (stream, ok)
        })
        .await;
        let Ok((stream, true)) = told else {
            return Err(MonitorError::Aborted);
        };
        // From now on the monitor outlives the runvm call that started it.
        // The death signal belongs to the thread that was forked, the one
        // running this (a current-thread runtime). That call waits for the
        // acknowledgement before it exits, or its exit could still kill us.
        // SAFETY: prctl with plain integer arguments.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0) };
        let went = (&stream).write_all(b"going\n").is_ok();
        if !went {
            return Err(MonitorError::Aborted);
        }
        Ok(())
    }
}

/// A monitor started by [`spawn`] that has reported, waiting for `go`.
pub struct Launched {
    child: std::process::Child,
    sync: UnixStream,
}

impl Launched {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells it to undo what it made and exit; waits for that.
    pub fn abort(mut self) {
        drop(self.sync);
        let _ = self.child.wait();
    }

    /// Tells it to go on, and waits until it no longer depends on us.
    pub fn go(mut self) -> std::io::Result<std::process::Child> {
        self.sync.write_all(b"go\n")?;
        let mut line = String::new();
        BufReader::new(&self.sync).read_line(&mut line)?;
        if line.trim() != "going" {
            let _ = self.child.wait();
            return Err(std::io::Error::other(
                "the container's monitor exited before it took over",
            ));
        }
        Ok(self.child)
    }
}

/// The caller's end: starts `runvm monitor` with `args` (the sync socket
/// is added here) and waits for its report, for at most `deadline` (then
/// the monitor is killed, and its VM with it, and the report is an error
/// naming `operation`). `detach_session` puts the monitor in a session of
/// its own (not for a foreground terminal, whose window changes it must
/// see).
pub fn spawn(
    global_args: &[std::ffi::OsString],
    args: &MonitorArgs,
    detach_session: bool,
    (operation, deadline): (&'static str, Duration),
) -> Result<(Launched, Report), std::io::Error> {
    use std::os::unix::process::CommandExt;
    let (ours, theirs) = UnixStream::pair()?;
    let their_fd = theirs.as_raw_fd();
    let exe = std::env::current_exe()?;
    let mut command = std::process::Command::new(exe);
    command
        .args(global_args)
        .arg("monitor")
        .arg("--id")
        .arg(&args.id);
    if let Some(file) = &args.exec_process {
        command.arg("--exec-process").arg(file);
    }
    if let Some(socket) = &args.console_socket {
        command.arg("--console-socket").arg(socket);
        // The process's stdio is the pty sent over the socket; the
        // caller's stdio stays with the caller. containerd's shim reads
        // `create`'s output through a pipe until end of file: a monitor
        // holding that pipe would keep it waiting for as long as the
        // container lives.
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
    }
    if args.own_terminal {
        command.arg("--own-terminal");
    }
    command.arg("--sync-fd").arg(their_fd.to_string());
    // SAFETY: setsid, prctl and fcntl are async-signal-safe; nothing else
    // runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if detach_session && libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Until it is told to go, the monitor dies with its caller.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(their_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    drop(theirs);
    ours.set_read_timeout(Some(deadline))?;
    let mut line = String::new();
    match BufReader::new(&ours).read_line(&mut line) {
        Ok(_) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            // Its VMM and virtiofsd die with it (parent-death signals); the
            // caller's clean-up of the host cgroup takes anything left.
            let _ = child.kill();
            let _ = child.wait();
            let report = Report::Error(format!(
                "runvm {operation}: the container's monitor did not report within {} s",
                deadline.as_secs()
            ));
            return Ok((Launched { child, sync: ours }, report));
        }
        Err(e) => return Err(e),
    }
    let report = serde_json::from_str(&line)
        .unwrap_or_else(|_| Report::Error("the monitor exited before it was set up".to_owned()));
    Ok((Launched { child, sync: ours }, report))
}
