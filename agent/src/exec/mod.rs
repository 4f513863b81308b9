//! Starting a process and pumping its stdio.
//!
//! A process gets pipes (or a pty) whose agent-side ends are pumped to and
//! from the host's stream connections with one fixed buffer per direction:
//! backpressure comes from the pipes and from vsock credit, nothing queues
//! without bound.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use runvm_agent_api::{AgentError, ErrorKind, ExecRequest};
use tokio::sync::Notify;

use crate::fdio::{self, Fd};
use crate::processes::ProcessIo;

mod pumps;

pub use pumps::{prepare_stdio, ChildStdio, PendingTerminal};
use pumps::{pump_in, pump_out, pump_terminal};

/// Bytes buffered per pumped direction.
pub const PUMP_BUFFER: usize = 32 * 1024;

/// A stream connection from the host; `S` carries whatever must live as
/// long as the connection (the server's slot in its connection count).
pub struct StreamConn<S> {
    pub fd: Fd,
    pub _slot: S,
}

/// The host's streams for one process.
pub enum ExecStdio<S> {
    Pipes {
        stdin: Option<StreamConn<S>>,
        stdout: Option<StreamConn<S>>,
        stderr: Option<StreamConn<S>>,
    },
    Terminal(StreamConn<S>),
}

pub type Pump = Pin<Box<dyn Future<Output = ()>>>;

pub struct Spawned {
    pub pid: i32,
    pub io: ProcessIo,
    /// To run on the agent's local task set once the process is recorded.
    pub pumps: Vec<Pump>,
}

pub fn invalid(message: impl Into<String>) -> AgentError {
    AgentError {
        kind: ErrorKind::InvalidRequest,
        message: message.into(),
    }
}

pub fn system(message: impl Into<String>) -> AgentError {
    AgentError {
        kind: ErrorKind::System,
        message: message.into(),
    }
}

/// The stream tokens an exec names, in the order stdin, stdout, stderr;
/// checks what can be checked before any stream is taken.
pub fn validate(request: &ExecRequest) -> Result<Vec<u64>, AgentError> {
    if request.argv.is_empty() {
        return Err(invalid("argv is empty"));
    }
    for entry in &request.env {
        match entry.split_once('=') {
            Some((name, _)) if !name.is_empty() => {}
            _ => {
                return Err(invalid(format!(
                    "environment entry {entry:?} is not NAME=value"
                )))
            }
        }
    }
    stream_tokens(
        request.terminal,
        request.stdin,
        request.stdout,
        request.stderr,
    )
}

/// The stream tokens a process names, in the order stdin, stdout, stderr:
/// with a terminal, just stdin's.
pub fn stream_tokens(
    terminal: bool,
    stdin: Option<u64>,
    stdout: Option<u64>,
    stderr: Option<u64>,
) -> Result<Vec<u64>, AgentError> {
    if terminal {
        if stdout.is_some() || stderr.is_some() {
            return Err(invalid(
                "with a terminal, stdin names its one stream; stdout and stderr must be unset",
            ));
        }
        return match stdin {
            Some(token) => Ok(vec![token]),
            None => Err(invalid("a terminal needs its stream (the stdin token)")),
        };
    }
    let tokens: Vec<u64> = [stdin, stdout, stderr].into_iter().flatten().collect();
    for (i, token) in tokens.iter().enumerate() {
        if tokens[..i].contains(token) {
            return Err(invalid(format!("stream {token} is named twice")));
        }
    }
    Ok(tokens)
}

/// Variables the VMM's host profile sets for PID 1 on the kernel command
/// line and that every guest process needs too. On the emulating host that
/// is `GLIBC_TUNABLES`, which keeps glibc off AVX: the host runs guest user
/// code with its own XCR0 while the guest kernel (noxsave) switches only
/// the SSE registers, so AVX register halves leak between tasks. A request
/// that sets the variable itself keeps its own value.
pub const PASSED_ON_FROM_INIT: &[&str] = &["GLIBC_TUNABLES"];

fn command(request: &ExecRequest) -> Result<Command, AgentError> {
    let (program, args) = request
        .argv
        .split_first()
        .ok_or_else(|| invalid("argv is empty"))?;
    let mut cmd = Command::new(program);
    cmd.args(args).env_clear();
    for entry in &request.env {
        if let Some((name, value)) = entry.split_once('=') {
            cmd.env(name, value);
        }
    }
    for name in PASSED_ON_FROM_INIT {
        let set_by_request = request
            .env
            .iter()
            .any(|entry| entry.split_once('=').is_some_and(|(n, _)| n == *name));
        if let (false, Some(value)) = (set_by_request, std::env::var_os(name)) {
            cmd.env(name, value);
        }
    }
    if let Some(cwd) = &request.cwd {
        cmd.current_dir(cwd);
    }
    // The agent runs as root: only change what differs (each is a syscall).
    if request.gid != 0 {
        cmd.gid(request.gid);
    }
    if request.uid != 0 {
        cmd.uid(request.uid);
    }
    Ok(cmd)
}

/// A pty as `(master, slave)`: the master non-blocking, both close-on-exec.
pub fn open_pty() -> io::Result<(OwnedFd, OwnedFd)> {
    // SAFETY: open(2) with a constant path.
    let master = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if master < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open just returned this descriptor to us.
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    let slave = open_slave(&master)?;
    Ok((master, slave))
}

/// Unlocks the pty of `master` and opens its slave, close-on-exec:
/// TIOCGPTPEER finds the slave in the master's own devpts, whatever the
/// paths say. Only ioctls, so usable between fork and exec.
pub fn open_slave(master: &OwnedFd) -> io::Result<OwnedFd> {
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER opens the slave and returns its descriptor.
    let slave = unsafe {
        libc::ioctl(
            master.as_raw_fd(),
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if slave < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(slave) })
}

/// Sets a terminal's window size.
pub fn resize(master: &Fd, rows: u16, columns: u16) -> io::Result<()> {
    let size = libc::winsize {
        ws_row: rows,
        ws_col: columns,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    if unsafe { libc::ioctl(master.raw(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pipe for a process's stream: `(the process's end, ours)`, ours
/// non-blocking. `input` when the process reads from it.
fn stdio_pipe(input: bool) -> io::Result<(OwnedFd, Fd)> {
    let (read, write) = fdio::pipe()?;
    if input {
        Ok((read, Fd::new_nonblocking(write)?))
    } else {
        Ok((write, Fd::new_nonblocking(read)?))
    }
}

/// Signals (bit N-1 for signal N) that were ignored when this agent
/// started serving. Ignored dispositions survive exec, so children must
/// not inherit them. As PID 1 the agent starts with none ignored and does
/// not look (each syscall counts in an emulated guest); elsewhere (tests
/// under `nohup`, say) it may inherit some.
static IGNORED_AT_START: AtomicU64 = AtomicU64::new(0);

/// Records which signals are ignored now (see [`IGNORED_AT_START`]); std
/// ignores SIGPIPE in every Rust program, so that one is always reset.
pub fn note_ignored_signals() {
    let mut mask = 1u64 << (libc::SIGPIPE - 1);
    // SAFETY: getpid has no preconditions.
    if unsafe { libc::getpid() } != 1 {
        for signal in 1..=64 {
            // SAFETY: sigaction with a null new action only reads the
            // disposition into our zeroed struct.
            let ignored = unsafe {
                let mut old: libc::sigaction = std::mem::zeroed();
                libc::sigaction(signal, std::ptr::null(), &mut old) == 0
                    && old.sa_sigaction == libc::SIG_IGN
            };
            if ignored {
                mask |= 1 << (signal - 1);
            }
        }
    }
    IGNORED_AT_START.store(mask, Ordering::Relaxed);
}

/// In a forked child: the signals noted as ignored back to their default.
/// Async-signal-safe (an atomic load and sigaction).
pub fn reset_ignored_signals() {
    let mask = IGNORED_AT_START.load(Ordering::Relaxed) | 1 << (libc::SIGPIPE - 1);
    for signal in 1..=64 {
        if mask & (1 << (signal - 1)) != 0 {
            // SAFETY: signal(2) on our own dispositions.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
}

/// Runs in the forked child, just before exec: a clean signal mask (PID 1
/// keeps SIGCHLD blocked, and std's `Command` no longer resets the mask),
/// no inherited ignored signals, a session of its own and, on a terminal,
/// the pty (already its stdin) as controlling terminal. Only
/// async-signal-safe calls: this runs between fork and exec.
fn child_setup(terminal: bool) -> io::Result<()> {
    reset_ignored_signals();
    // SAFETY: sigemptyset fills our local set; sigprocmask, setsid and
    // ioctl are plain syscalls.
    unsafe {
        let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        if libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut()) < 0
            || libc::setsid() < 0
            || (terminal && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0)
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts the process of a validated `request` on `stdio`, set up by
/// [`child_setup`]. A failed exec is an error here, and std has reaped the
/// child already.
pub fn spawn<S: 'static>(
    request: &ExecRequest,
    stdio: ExecStdio<S>,
    linger: Duration,
) -> Result<Spawned, AgentError> {
    let sys = |what: &str, e: io::Error| system(format!("{what}: {e}"));
    let mut cmd = command(request)?;
    let mut pumps: Vec<Pump> = Vec::new();
    let mut io = ProcessIo::default();
    let spawn_it = |cmd: &mut Command| {
        cmd.spawn().map_err(|e| {
            let message = format!("cannot run {:?}: {e}", cmd.get_program());
            if e.kind() == io::ErrorKind::InvalidInput {
                invalid(message)
            } else {
                system(message)
            }
        })
    };
    let child = match stdio {
        ExecStdio::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let mut stdin_pump = None;
            match stdin {
                Some(conn) => {
                    let (theirs, ours) = stdio_pipe(true).map_err(|e| sys("pipe", e))?;
                    cmd.stdin(Stdio::from(theirs));
                    let close = Rc::new(Notify::new());
                    io.stdin_close = Some(close.clone());
                    stdin_pump = Some(pump_in(conn, ours, close));
                }
                None => {
                    cmd.stdin(Stdio::null());
                }
            }
            let mut out_pumps = Vec::new();
            for (conn, is_stdout) in [(stdout, true), (stderr, false)] {
                let end = match conn {
                    Some(conn) => {
                        let (theirs, ours) = stdio_pipe(false).map_err(|e| sys("pipe", e))?;
                        out_pumps.push(pump_out(ours, conn, linger));
                        Stdio::from(theirs)
                    }
                    None => Stdio::null(),
                };
                if is_stdout {
                    cmd.stdout(end);
                } else {
                    cmd.stderr(end);
                }
            }
            // SAFETY: only async-signal-safe calls (see `child_setup`).
            unsafe {
                cmd.pre_exec(|| child_setup(false));
            }
            let child = spawn_it(&mut cmd)?;
            if let Some(pump) = stdin_pump {
                pumps.push(Box::pin(pump));
            }
            for pump in out_pumps {
                pumps.push(Box::pin(pump));
            }
            child
        }
        ExecStdio::Terminal(conn) => {
            let (master, slave) = open_pty().map_err(|e| sys("cannot open a pty", e))?;
            let master = Rc::new(Fd::new(master).map_err(|e| sys("cannot register the pty", e))?);
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| sys("dup", e));
            cmd.stdin(Stdio::from(dup(&slave)?))
                .stdout(Stdio::from(dup(&slave)?))
                .stderr(Stdio::from(slave));
            // SAFETY: only async-signal-safe calls (see `child_setup`).
            unsafe {
                cmd.pre_exec(|| child_setup(true));
            }
            let child = spawn_it(&mut cmd)?;
            let close = Rc::new(Notify::new());
            io.stdin_close = Some(close.clone());
            io.terminal = Some(Rc::downgrade(&master));
            pumps.push(Box::pin(pump_terminal(conn, master, close, linger)));
            child
        }
    };
    // Closes the process's ends of its pipes or pty in the agent: without
    // that, the agent would never see end of file on them.
    drop(cmd);
    Ok(Spawned {
        pid: child.id() as i32,
        io,
        pumps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(argv: &[&str]) -> ExecRequest {
        ExecRequest {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..ExecRequest::default()
        }
    }

    #[test]
    fn validation_names_the_tokens_in_order() {
        let mut r = request(&["true"]);
        assert_eq!(validate(&r), Ok(vec![]));
        r.stdin = Some(1);
        r.stderr = Some(3);
        assert_eq!(validate(&r), Ok(vec![1, 3]));
        r.stdout = Some(1);
        assert_eq!(validate(&r).unwrap_err().kind, ErrorKind::InvalidRequest);
    }

    #[test]
    fn validation_refuses_what_cannot_run() {
        assert!(validate(&request(&[])).is_err());
        let mut r = request(&["env"]);
        r.env = vec!["A=1".into(), "B=".into()];
        assert!(validate(&r).is_ok());
        for bad in ["NOEQUALS", "=value"] {
            r.env = vec![bad.into()];
            assert_eq!(validate(&r).unwrap_err().kind, ErrorKind::InvalidRequest);
        }
    }

    #[test]
    fn a_terminal_has_exactly_one_stream() {
        let mut r = request(&["sh"]);
        r.terminal = true;
        assert!(validate(&r).is_err());
        r.stdin = Some(4);
        assert_eq!(validate(&r), Ok(vec![4]));
        r.stdout = Some(5);
        assert!(validate(&r).is_err());
    }
}
