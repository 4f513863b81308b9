//! The sandbox's control socket: one JSON line asked, one answered, per
//! connection. Only runvm processes of the same `--root` reach it (the
//! root is 0700), but each side still bounds what it reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{Home, SandboxError};

/// Longest line either side reads: a spec with its mounts and env.
pub const MAX_LINE: u64 = 4 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Bind member `id`'s rootfs and volumes into the share.
    Add { id: String },
    /// Delete member `id` in the guest and unbind what it had.
    Remove { id: String },
    /// Refuse new members and stop the members (before the sandbox goes).
    StopMembers,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// The guest's view of the member: its spec, rootfs path and place in
    /// the pod.
    Added(Box<super::Prepared>),
    Removed,
    Stopped,
    Error {
        message: String,
    },
}

/// Reads one line of at most [`MAX_LINE`] bytes as `T`.
pub async fn read_message<T: serde::de::DeserializeOwned>(
    stream: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<T, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(stream, MAX_LINE));
    reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| e.to_string())?;
    if line.last() != Some(&b'\n') {
        return Err("the message ended early or is too long".into());
    }
    serde_json::from_slice(&line).map_err(|e| format!("malformed message: {e}"))
}

pub async fn write_message<T: Serialize>(
    stream: &mut (impl tokio::io::AsyncWrite + Unpin),
    message: &T,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    stream.write_all(&line).await
}

/// A name for `socket` that fits a socket address (108 bytes): itself
/// when short, else through a descriptor of its directory, which the
/// returned file holds open while the name is used.
pub fn socket_name(socket: &Path) -> std::io::Result<(Option<std::fs::File>, PathBuf)> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    if socket.as_os_str().len() < 100 {
        return Ok((None, socket.to_owned()));
    }
    let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
        return Ok((None, socket.to_owned()));
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    let name = Path::new("/proc/self/fd")
        .join(dir.as_raw_fd().to_string())
        .join(name);
    Ok((Some(dir), name))
}

/// Asks the sandbox at `home` `request`, waiting at most `patience`.
pub async fn ask(
    home: &Home,
    request: &Request,
    patience: Duration,
) -> Result<Response, SandboxError> {
    let failed = |problem: String| SandboxError::Control {
        sandbox: home.sandbox.clone(),
        problem,
    };
    let socket = home.control_socket();
    let exchange = async {
        let (_dir, name) = socket_name(&socket).map_err(|e| unreachable(&socket, e))?;
        let mut stream = UnixStream::connect(&name)
            .await
            .map_err(|e| unreachable(&socket, e))?;
        write_message(&mut stream, request)
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        read_message::<Response>(&mut stream).await
    };
    let response = tokio::time::timeout(patience, exchange)
        .await
        .map_err(|_| failed(format!("no answer within {} s", patience.as_secs())))?
        .map_err(failed)?;
    match response {
        Response::Error { message } => Err(failed(message)),
        response => Ok(response),
    }
}

fn unreachable(socket: &Path, e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            "it is not running (its control socket does not answer)".to_owned()
        }
        _ => format!("cannot reach its control socket {}: {e}", socket.display()),
    }
}

/// Has the sandbox bind member `id` in; the guest's view of it.
pub async fn add(home: &Home, id: &str) -> Result<super::Prepared, SandboxError> {
    let request = Request::Add { id: id.to_owned() };
    match ask(home, &request, crate::deadlines::CREATE).await? {
        Response::Added(prepared) => Ok(*prepared),
        other => Err(SandboxError::Control {
            sandbox: home.sandbox.clone(),
            problem: format!("unexpected answer {other:?}"),
        }),
    }
}

/// Has the sandbox stop its members, their monitors given a moment to
/// report their status (before the sandbox itself is killed).
pub async fn stop_members(home: &Home) -> Result<(), SandboxError> {
    ask(home, &Request::StopMembers, crate::deadlines::KILL * 2)
        .await
        .map(|_| ())
}

/// Has the sandbox delete member `id` in the guest and unbind it.
pub async fn remove(home: &Home, id: &str) -> Result<(), SandboxError> {
    let request = Request::Remove { id: id.to_owned() };
    ask(home, &request, crate::deadlines::KILL * 2)
        .await
        .map(|_| ())
}
