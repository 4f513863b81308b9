//! The sandbox's control socket: one JSON line asked, one answered, per
//! connection. Only runvm processes of the same `--root` reach it (the
//! root is 0700), but each side still bounds what it reads.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

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
    /// The guest's view of the member: its spec and rootfs path.
    Added {
        spec: Box<runvm_agent_api::oci::Spec>,
        rootfs: String,
    },
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
        let mut stream = crate::unix_socket::connect_async(&socket)
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

/// Has the sandbox bind member `id` in; the guest's spec and rootfs.
pub async fn add(
    home: &Home,
    id: &str,
) -> Result<(runvm_agent_api::oci::Spec, String), SandboxError> {
    let request = Request::Add { id: id.to_owned() };
    match ask(home, &request, crate::deadlines::CREATE).await? {
        Response::Added { spec, rootfs } => Ok((*spec, rootfs)),
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
