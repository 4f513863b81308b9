//! A process's stdio as containerd hands it over: paths of FIFOs (or
//! empty for none), or for the output a log URI (see [`crate::log_uri`]),
//! opened here and given to the runtime crate's relays (see
//! `runvm::container_client::ContainerIo`).
//!
//! - Output FIFOs are opened read-write: the open never waits for a
//!   reader, and writes never fail with EPIPE if the reader (`ctr`) goes
//!   away, as containerd's runc shim keeps a reader open for the same
//!   reason. The reader sees end of file when the relay drops the FIFO,
//!   once the guest closed the stream: after the process's last byte.
//! - The stdin FIFO is opened for reading only, so that the writer
//!   closing it is end of file; `CloseIO` ends it too ([`StdinCloser`]).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::log_uri::{self, Destination, LogOwner};
use runvm::container_client::ContainerIo;
use runvm::guest_process::{HostReader, HostStdio, HostWriter};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::unix::pipe;

/// The FIFO paths containerd gives for a process.
#[derive(Clone, Debug, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Ends a process's stdin on `CloseIO`: what was written before is
/// still passed on, then the guest sees end of file.
#[derive(Clone, Default)]
pub struct StdinCloser {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl StdinCloser {
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        let waker = self
            .shared
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The stdin FIFO, at end of file once closed and drained.
struct ClosableStdin {
    fifo: pipe::Receiver,
    closer: StdinCloser,
}

impl AsyncRead for ClosableStdin {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(result) = Pin::new(&mut self.fifo).poll_read(cx, buf) {
            return Poll::Ready(result);
        }
        let shared = &self.closer.shared;
        *shared.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        if shared.closed.load(Ordering::SeqCst) {
            // Nothing is waiting in the FIFO: the end.
            return Poll::Ready(Ok(()));
        }
        Poll::Pending
    }
}

/// stderr's FIFO when stdout's is one (containerd names both alike).
fn fifo_path(path: &str) -> &str {
    path.strip_prefix("fifo://").unwrap_or(path)
}

fn fifo_error(path: &str, e: io::Error) -> String {
    format!("cannot open {path}: {e}")
}

fn open_output(path: &str) -> Result<Option<HostWriter>, String> {
    if path.is_empty() {
        return Ok(None);
    }
    let fifo = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(|e| fifo_error(path, e))?;
    Ok(Some(Box::new(fifo)))
}

fn open_input(path: &str, closer: &StdinCloser) -> Result<Option<HostReader>, String> {
    if path.is_empty() {
        return Ok(None);
    }
    let fifo = pipe::OpenOptions::new()
        .open_receiver(path)
        .map_err(|e| fifo_error(path, e))?;
    Ok(Some(Box::new(ClosableStdin {
        fifo,
        closer: closer.clone(),
    })))
}

/// Opens the FIFOs of `paths` as the process's stdio (a terminal: one
/// stream each way, the output on stdout's FIFO), or the output's log
/// file or program, which takes `owner`'s name. Call it within the shim's
/// tokio runtime.
pub fn open(
    paths: &StdioPaths,
    closer: &StdinCloser,
    owner: &LogOwner,
) -> Result<ContainerIo, String> {
    let (stdout, stderr) = match Destination::parse(&paths.stdout)? {
        Destination::Fifo(stdout) => {
            let stderr = match paths.terminal {
                true => None,
                false => open_output(fifo_path(&paths.stderr))?,
            };
            (open_output(&stdout)?, stderr)
        }
        Destination::File(path) => {
            let outputs = log_uri::open_file(&path)?;
            (Some(outputs.stdout), Some(outputs.stderr))
        }
        Destination::Binary { program, args } => {
            let outputs = log_uri::start_binary(&program, &args, owner)?;
            (Some(outputs.stdout), Some(outputs.stderr))
        }
    };
    let stdin = open_input(&paths.stdin, closer)?;
    if paths.terminal {
        return Ok(ContainerIo::Terminal {
            input: stdin.unwrap_or_else(|| Box::new(tokio::io::empty())),
            output: stdout.unwrap_or_else(|| Box::new(tokio::io::sink())),
        });
    }
    Ok(ContainerIo::Pipes(HostStdio {
        stdin,
        stdout,
        stderr,
    }))
}
