//! The agent's ends of a process's stdio: pipes (or /dev/null, or a
//! terminal made later) for a container's process, and the pumps that
//! move bytes between them and the host's stream connections.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use runvm_agent_api::AgentError;
use tokio::sync::Notify;

use super::{stdio_pipe, system, ExecStdio, Pump, StreamConn, PUMP_BUFFER};
use crate::fdio::Fd;
use crate::processes::ProcessIo;

/// The process's ends of its stdio, for a process the agent starts
/// without `Command` (a container's): `fds` become its stdin, stdout and
/// stderr; the pumps move the agent's ends to and from the host.
pub struct ChildStdio {
    pub fds: [OwnedFd; 3],
    pub io: ProcessIo,
    pub pumps: Vec<Pump>,
    /// For a terminal: what makes the pump once the process has sent its
    /// pty master.
    pub terminal: Option<PendingTerminal>,
}

/// Makes a terminal's pump from the pty master.
pub type PendingTerminal = Box<dyn FnOnce(Rc<Fd>) -> Pump>;

fn dev_null() -> io::Result<OwnedFd> {
    // SAFETY: open(2) with a constant path.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Stdio for a container's process: pipes (or /dev/null), or for a
/// terminal /dev/null until the process hands over the pty it opens in
/// the container's devpts (see `container::terminal`).
pub fn prepare_stdio<S: 'static>(
    stdio: ExecStdio<S>,
    linger: Duration,
) -> Result<ChildStdio, AgentError> {
    let sys = |what: &str, e: io::Error| system(format!("{what}: {e}"));
    let mut io = ProcessIo::default();
    let mut pumps: Vec<Pump> = Vec::new();
    match stdio {
        ExecStdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let stdin_fd = match stdin {
                Some(conn) => {
                    let (theirs, ours) = stdio_pipe(true).map_err(|e| sys("pipe", e))?;
                    let close = Rc::new(Notify::new());
                    io.stdin_close = Some(close.clone());
                    pumps.push(Box::pin(pump_in(conn, ours, close)));
                    theirs
                }
                None => dev_null().map_err(|e| sys("/dev/null", e))?,
            };
            let mut out = |conn: Option<StreamConn<S>>| -> Result<OwnedFd, AgentError> {
                match conn {
                    Some(conn) => {
                        let (theirs, ours) = stdio_pipe(false).map_err(|e| sys("pipe", e))?;
                        pumps.push(Box::pin(pump_out(ours, conn, linger)));
                        Ok(theirs)
                    }
                    None => dev_null().map_err(|e| sys("/dev/null", e)),
                }
            };
            let stdout_fd = out(stdout)?;
            let stderr_fd = out(stderr)?;
            Ok(ChildStdio {
                fds: [stdin_fd, stdout_fd, stderr_fd],
                io,
                pumps,
                terminal: None,
            })
        }
        ExecStdio::Terminal(conn) => {
            let null = || dev_null().map_err(|e| sys("/dev/null", e));
            let close = Rc::new(Notify::new());
            io.stdin_close = Some(close.clone());
            let pending: PendingTerminal =
                Box::new(move |master| Box::pin(pump_terminal(conn, master, close, linger)));
            Ok(ChildStdio {
                fds: [null()?, null()?, null()?],
                io,
                pumps,
                terminal: Some(pending),
            })
        }
    }
}

/// Why a copy stopped.
enum CopyEnd {
    /// End of file on the source.
    SourceEnded,
    SourceFailed,
    SinkFailed,
}

async fn copy(from: &Fd, to: &Fd, buf: &mut [u8]) -> CopyEnd {
    loop {
        let n = match from.read(buf).await {
            Ok(0) => return CopyEnd::SourceEnded,
            Ok(n) => n,
            Err(_) => return CopyEnd::SourceFailed,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return CopyEnd::SinkFailed;
        }
    }
}

/// Ends a stream that carried output: half-close it so the host reads end
/// of file after the last byte, then keep the connection until the host
/// closes its end (or `linger` passes). Closing at once could make the VMM
/// drop output it still buffers for a slow host reader.
async fn finish_output<S>(conn: StreamConn<S>, buf: &mut [u8], linger: Duration) {
    if conn.fd.shutdown_write().is_err() {
        return;
    }
    let _ = tokio::time::timeout(linger, async {
        while let Ok(n) = conn.fd.read(buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// The process's stdout or stderr to the host.
pub(super) async fn pump_out<S>(pipe: Fd, conn: StreamConn<S>, linger: Duration) {
    let mut buf = vec![0u8; PUMP_BUFFER];
    match copy(&pipe, &conn.fd, &mut buf).await {
        CopyEnd::SourceEnded | CopyEnd::SourceFailed => {
            drop(pipe);
            finish_output(conn, &mut buf, linger).await;
        }
        // The host went away: stop here. Closing the pipe gives the process
        // EPIPE (SIGPIPE) on its next write, as on any host.
        CopyEnd::SinkFailed => {}
    }
}

/// The host's input to the process's stdin, until the host half-closes or
/// closes the stream, `CloseStdin`, or the process exits; then the pipe
/// closes and the process reads end of file.
pub(super) async fn pump_in<S>(conn: StreamConn<S>, pipe: Fd, close: Rc<Notify>) {
    let mut buf = vec![0u8; PUMP_BUFFER];
    tokio::select! {
        _ = copy(&conn.fd, &pipe, &mut buf) => {}
        () = close.notified() => {}
    }
}

/// One stream carries a terminal both ways. The host's end of input
/// (half-close or `CloseStdin`) stops only the input. Output ends when the
/// process side of the pty is closed (the master reads EIO then); if the
/// host goes away, the master is closed and the session gets a hangup, as
/// when a terminal emulator quits.
pub(super) async fn pump_terminal<S>(
    conn: StreamConn<S>,
    master: Rc<Fd>,
    close: Rc<Notify>,
    linger: Duration,
) {
    let mut out_buf = vec![0u8; PUMP_BUFFER];
    let mut in_buf = vec![0u8; PUMP_BUFFER];
    let output = copy(&master, &conn.fd, &mut out_buf);
    let input = async {
        let end = tokio::select! {
            end = copy(&conn.fd, &master, &mut in_buf) => Some(end),
            () = close.notified() => None,
        };
        if let Some(CopyEnd::SourceFailed) = end {
            // The connection broke: the host is gone.
            return;
        }
        std::future::pending::<()>().await
    };
    let output_end = tokio::select! {
        end = output => Some(end),
        () = input => None,
    };
    drop(master);
    if let Some(CopyEnd::SourceEnded | CopyEnd::SourceFailed) = output_end {
        finish_output(conn, &mut out_buf, linger).await;
    }
}
