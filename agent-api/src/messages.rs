//! Requests, responses and stream greetings.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the host; echoed in the response.
    pub id: u64,
    pub body: RequestBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RequestBody {
    /// The agent's version and protocol; also a health check.
    Version,
    /// Start a process. Its streams must already be connected.
    Exec(ExecRequest),
    /// Send a signal to a process.
    Signal {
        process: u64,
        signal: i32,
    },
    /// Wait for a process to end; answered when it has.
    Wait {
        process: u64,
    },
    /// End of input for the process (closes its stdin).
    CloseStdin {
        process: u64,
    },
    ResizeTerminal {
        process: u64,
        rows: u16,
        columns: u16,
    },
    ListProcesses,
    /// Power the VM off.
    Shutdown,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    /// `NAME=value` entries: the process's whole environment.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// With a terminal, `stdin` names the one stream that carries it both
    /// ways and `stdout`/`stderr` are unused.
    pub terminal: bool,
    /// Tokens of the stream connections (see [`StreamHello`]); `None` gives
    /// the process /dev/null.
    pub stdin: Option<u64>,
    pub stdout: Option<u64>,
    pub stderr: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub result: Result<ResponseBody, AgentError>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ResponseBody {
    Version { agent: String, protocol: u32 },
    Started { process: u64, pid: i32 },
    Exited { process: u64, status: ExitStatus },
    Processes { processes: Vec<ProcessInfo> },
    Done,
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The status as a shell reports it: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(code) => code,
            ExitStatus::Signal(signal) => 128 + signal,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub process: u64,
    pub pid: i32,
    pub argv: Vec<String>,
    pub exited: Option<ExitStatus>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed or inconsistent request.
    InvalidRequest,
    /// No such process or stream.
    NotFound,
    /// The protocol versions differ.
    Unsupported,
    /// A system call in the guest failed.
    System,
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for AgentError {}

/// The first line on a stream connection: `STREAM <token>\n`. The host
/// picks tokens unique within the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamHello {
    pub token: u64,
}

impl StreamHello {
    /// Longest valid line, newline included.
    pub const MAX_LEN: usize = 7 + 20 + 1;

    pub fn to_line(self) -> String {
        format!("STREAM {}\n", self.token)
    }

    pub fn parse(line: &[u8]) -> Option<StreamHello> {
        let text = std::str::from_utf8(line).ok()?;
        let token = text.strip_suffix('\n')?.strip_prefix("STREAM ")?;
        Some(StreamHello {
            token: token.parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_tagged_and_readable() {
        let request = Request {
            id: 3,
            body: RequestBody::Signal {
                process: 1,
                signal: 9,
            },
        };
        let json = serde_json::to_string(&request).unwrap();
        assert_eq!(
            json,
            r#"{"id":3,"body":{"op":"signal","process":1,"signal":9}}"#
        );
    }

    #[test]
    fn errors_travel_as_structured_results() {
        let response = Response {
            id: 4,
            result: Err(AgentError {
                kind: ErrorKind::NotFound,
                message: "no process 9".into(),
            }),
        };
        let json = serde_json::to_string(&response).unwrap();
        let back: Response = serde_json::from_str(&json).unwrap();
        assert_eq!(back, response);
    }

    #[test]
    fn exit_status_reads_like_a_shell() {
        assert_eq!(ExitStatus::Code(3).shell_code(), 3);
        assert_eq!(ExitStatus::Signal(9).shell_code(), 137);
    }

    #[test]
    fn stream_hello_round_trips_and_rejects_junk() {
        let hello = StreamHello { token: u64::MAX };
        assert!(hello.to_line().len() <= StreamHello::MAX_LEN);
        assert_eq!(StreamHello::parse(hello.to_line().as_bytes()), Some(hello));
        assert_eq!(StreamHello::parse(b"STREAM x\n"), None);
        assert_eq!(StreamHello::parse(b"STREAM 1"), None);
        assert_eq!(StreamHello::parse(b"HELLO 1\n"), None);
    }
}
