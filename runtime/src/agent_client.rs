//! Talks to the agent in a microVM through the VMM's hybrid-vsock Unix
//! socket: one control connection for framed requests, one connection per
//! process stream.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::Duration;

use runvm_agent_api::{
    read_frame, write_frame, AgentError, ErrorKind, FrameError, Request, RequestBody, Response,
    ResponseBody, StreamHello, CONTROL_PORT, STREAM_PORT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach guest port {port} through {path}: {reason}")]
    Connect {
        path: PathBuf,
        port: u32,
        reason: String,
    },
    #[error("the agent connection failed: {0}")]
    Frame(#[from] FrameError),
    #[error("the agent connection closed")]
    Closed,
    #[error("the agent refused: {0}")]
    Agent(#[from] AgentError),
    #[error("unexpected answer from the agent: {0:?}")]
    Unexpected(ResponseBody),
    /// The guest did not answer in time (see [`crate::deadlines`]).
    #[error("runvm {operation}: the agent did not answer within {} s", seconds(*.limit))]
    Deadline {
        operation: &'static str,
        limit: Duration,
    },
}

impl ClientError {
    /// The agent refused the request as not fitting the container's state
    /// (for a signal: its init has ended, which the caller may not have
    /// seen yet).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            ClientError::Agent(AgentError {
                kind: ErrorKind::Conflict,
                ..
            })
        )
    }
}

/// `10` for ten seconds, `0.05` for fifty milliseconds.
fn seconds(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        duration.as_secs().to_string()
    } else {
        duration.as_secs_f64().to_string()
    }
}

/// Waiters by request id. A plain mutex: it is never held across an
/// await, and a call abandoned at its deadline removes its entry on drop.
type Pending = Arc<SyncMutex<HashMap<u64, oneshot::Sender<Response>>>>;

fn lock(pending: &Pending) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Response>>> {
    pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Removes a call's waiter when the call ends, answered or abandoned (a
/// deadline drops the call's future), so a guest that stops answering
/// does not make a long-lived client (the monitor) grow.
struct Waiter<'a> {
    pending: &'a Pending,
    id: u64,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.id);
    }
}

/// A control connection; cheap to share, requests may overlap.
pub struct AgentClient {
    socket: PathBuf,
    writer: Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    next_token: AtomicU64,
}

/// Opens a connection to `port` in the guest: `CONNECT <port>\n`, then
/// wait for `OK <host port>\n`.
pub async fn connect_guest_port(socket: &Path, port: u32) -> Result<UnixStream, ClientError> {
    let fail = |reason: String| ClientError::Connect {
        path: socket.to_path_buf(),
        port,
        reason,
    };
    let mut stream = crate::unix_socket::connect_async(socket)
        .await
        .map_err(|e| fail(e.to_string()))?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await
        .map_err(|e| fail(e.to_string()))?;
    // Byte by byte: data after the line belongs to the caller.
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte).await {
            Ok(0) => return Err(fail("refused (nothing listens on that port yet)".into())),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() < 32 => line.push(byte[0]),
            Ok(_) => return Err(fail("malformed handshake reply".into())),
            Err(e) => return Err(fail(e.to_string())),
        }
    }
    if !line.starts_with(b"OK ") {
        return Err(fail(format!(
            "handshake reply {:?}",
            String::from_utf8_lossy(&line)
        )));
    }
    Ok(stream)
}

impl AgentClient {
    /// Opens a control connection to the agent behind `socket` (one
    /// attempt: the caller decides how long a booting guest may take).
    pub async fn connect(socket: &Path) -> Result<AgentClient, ClientError> {
        let stream = connect_guest_port(socket, CONTROL_PORT).await?;
        let (reader, writer) = stream.into_split();
        let pending: Pending = Arc::default();
        tokio::spawn(dispatch_responses(reader, pending.clone()));
        Ok(AgentClient {
            socket: socket.to_path_buf(),
            writer: Mutex::new(writer),
            pending,
            next_id: AtomicU64::new(1),
            next_token: AtomicU64::new(random_token_base()),
        })
    }

    /// Sends `body` and waits for its answer.
    pub async fn call(&self, body: RequestBody) -> Result<ResponseBody, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        lock(&self.pending).insert(id, answer);
        let _waiter = Waiter {
            pending: &self.pending,
            id,
        };
        let sent = {
            let mut writer = self.writer.lock().await;
            write_frame(&mut *writer, &Request { id, body }).await
        };
        sent?;
        let response = answered.await.map_err(|_| ClientError::Closed)?;
        Ok(response.result?)
    }

    /// Opens a stream connection for a process; pass the token in the
    /// exec request.
    pub async fn open_stream(&self) -> Result<(u64, UnixStream), ClientError> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut stream = connect_guest_port(&self.socket, STREAM_PORT).await?;
        stream
            .write_all(StreamHello { token }.to_line().as_bytes())
            .await
            .map_err(|e| ClientError::Connect {
                path: self.socket.clone(),
                port: STREAM_PORT,
                reason: e.to_string(),
            })?;
        Ok((token, stream))
    }
}

/// Stream tokens must be unique within the VM, and several host processes
/// (each `runvm exec`, say) may talk to one agent: each client starts its
/// tokens at a random point of the 64-bit space.
fn random_token_base() -> u64 {
    let mut bytes = [0u8; 8];
    match crate::host_random::fill(&mut bytes) {
        // Keep clear of the top so that adding never wraps in practice.
        Ok(()) => u64::from_ne_bytes(bytes) >> 1,
        // Still unique against other processes' clients in practice.
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            (nanos ^ (u64::from(std::process::id()) << 32)) >> 1
        }
    }
}

/// Routes each response to the caller waiting for its id; when the
/// connection ends every waiter gets `Closed`.
async fn dispatch_responses(mut reader: OwnedReadHalf, pending: Pending) {
    loop {
        match read_frame::<_, Response>(&mut reader).await {
            Ok(response) => {
                let waiter = lock(&pending).remove(&response.id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(response);
                }
            }
            Err(FrameError::Json(_)) => continue,
            Err(_) => break,
        }
    }
    lock(&pending).clear();
}
