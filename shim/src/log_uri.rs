//! Where a process's output goes when containerd names a log URI instead
//! of FIFOs (`ctr run --log-uri`, nerdctl's logging), as containerd's runc
//! shim reads it from the stdout path:
//!
//! - `fifo://PATH` or a plain path: a FIFO (see [`crate::stdio`]);
//! - `file:///PATH`: stdout and stderr appended to one file (its directory
//!   made if missing);
//! - `binary:///PATH?KEY=VALUE&FLAG`: a logging program started with
//!   `KEY VALUE FLAG` as arguments, only `CONTAINER_ID` and
//!   `CONTAINER_NAMESPACE` in its environment, and three descriptors: 3
//!   the read end of stdout's pipe, 4 stderr's, 5 the write end of a pipe
//!   it closes (or writes to) once it is ready. The process's output flows
//!   only then, and the program sees end of file on both when the process
//!   has ended and its output has been copied; it is reaped when it exits.
//!
//! With a terminal there is one stream, which goes where stdout's would.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use runvm::guest_process::HostWriter;
use tokio::net::unix::pipe;

/// How long a logging program may take to say it is ready.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A stdout path as containerd gives it.
#[derive(Debug, PartialEq, Eq)]
pub enum Destination {
    Fifo(String),
    File(PathBuf),
    Binary { program: PathBuf, args: Vec<String> },
}

impl Destination {
    pub fn parse(path: &str) -> Result<Destination, String> {
        let Some((scheme, rest)) = path.split_once("://") else {
            return Ok(Destination::Fifo(path.to_owned()));
        };
        let (location, query) = match rest.split_once('?') {
            Some((location, query)) => (location, Some(query)),
            None => (rest, None),
        };
        let location = decode(location).map_err(|e| format!("{path}: {e}"))?;
        // `binary:///usr/bin/x` and `file:///var/log/x`: no host part.
        if !location.starts_with('/') {
            return Err(format!(
                "{path}: the log URI's path must be absolute (SCHEME:///PATH)"
            ));
        }
        match scheme {
            "fifo" => Ok(Destination::Fifo(location)),
            "file" => Ok(Destination::File(PathBuf::from(location))),
            "binary" => Ok(Destination::Binary {
                program: PathBuf::from(location),
                args: arguments(query.unwrap_or("")).map_err(|e| format!("{path}: {e}"))?,
            }),
            other => Err(format!(
                "{path}: unknown stdio scheme {other:?} (fifo, file or binary)"
            )),
        }
    }
}

/// `KEY=VALUE&FLAG` as the program's arguments: `KEY VALUE FLAG` (in
/// the order given; `+` is a space, as in any query).
fn arguments(query: &str) -> Result<Vec<String>, String> {
    let mut args = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let pair = pair.replace('+', " ");
        match pair.split_once('=') {
            Some((key, value)) => {
                args.push(decode(key)?);
                args.push(decode(value)?);
            }
            None => args.push(decode(&pair)?),
        }
    }
    Ok(args)
}

/// `%XX` decoded, refusing what is not UTF-8 or holds a NUL.
fn decode(text: &str) -> Result<String, String> {
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(text).collect();
    let decoded = String::from_utf8(bytes).map_err(|_| "not UTF-8 once decoded".to_owned())?;
    if decoded.contains('\0') {
        return Err("a NUL byte".into());
    }
    Ok(decoded)
}

/// Whose output a logging program gets.
pub struct LogOwner<'a> {
    pub container_id: &'a str,
    pub namespace: &'a str,
}

/// Writers for stdout and stderr (the same file twice for `file://`).
pub struct Outputs {
    pub stdout: HostWriter,
    pub stderr: HostWriter,
}

/// The file both streams are appended to, as containerd's runc shim
/// opens it.
pub fn open_file(path: &Path) -> Result<Outputs, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    }
    let open = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .open(path)
            .map(tokio::fs::File::from_std)
            .map_err(|e| format!("cannot open the log file {}: {e}", path.display()))
    };
    Ok(Outputs {
        stdout: Box::new(open()?),
        stderr: Box::new(open()?),
    })
}

/// Starts the logging program and waits until it is ready.
pub fn start_binary(program: &Path, args: &[String], owner: &LogOwner) -> Result<Outputs, String> {
    let fail =
        |what: &str, e: io::Error| format!("logging binary {}: {what}: {e}", program.display());
    let (stdout_read, stdout_write) = pipe_pair().map_err(|e| fail("cannot make a pipe", e))?;
    let (stderr_read, stderr_write) = pipe_pair().map_err(|e| fail("cannot make a pipe", e))?;
    let (mut ready_read, ready_write) = pipe_pair().map_err(|e| fail("cannot make a pipe", e))?;
    let inherited = [
        stdout_read.as_raw_fd(),
        stderr_read.as_raw_fd(),
        ready_write.as_raw_fd(),
    ];
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("CONTAINER_ID", owner.container_id)
        .env("CONTAINER_NAMESPACE", owner.namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: only dup2 and fcntl, which are async-signal-safe, between
    // fork and exec.
    unsafe {
        command.pre_exec(move || {
            // Each to its number (3, 4, 5), without close-on-exec (dup2
            // clears it). The sources are numbered above 5 (see
            // `pipe_pair`): none is overwritten before it is copied.
            for (target, &source) in (3..).zip(&inherited) {
                if libc::dup2(source, target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| fail("cannot start it", e))?;
    // Ours go: the program holds the read ends and the ready pipe.
    drop((stdout_read, stderr_read, ready_write));
    // Reaped whenever it ends (after the output's end, or now if it fails).
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    wait_ready(&mut ready_read).map_err(|e| fail("not ready", e))?;
    let writer = |fd: OwnedFd| -> Result<HostWriter, String> {
        let sender = pipe::Sender::from_owned_fd(fd).map_err(|e| fail("cannot use its pipe", e))?;
        Ok(Box::new(sender))
    };
    Ok(Outputs {
        stdout: writer(stdout_write)?,
        stderr: writer(stderr_write)?,
    })
}

/// Until the program writes a byte or closes its end (or exits), at most
/// [`READY_TIMEOUT`].
fn wait_ready(ready: &mut File) -> io::Result<()> {
    let mut poll = libc::pollfd {
        fd: ready.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let timeout = READY_TIMEOUT.as_millis() as libc::c_int;
    // SAFETY: poll(2) on one pollfd we own.
    let polled = unsafe { libc::poll(&mut poll, 1, timeout) };
    match polled {
        0 => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("it did not close or write descriptor 5 within {READY_TIMEOUT:?}"),
        )),
        n if n < 0 => Err(io::Error::last_os_error()),
        _ => {
            let mut byte = [0u8; 1];
            match ready.read(&mut byte) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
                Err(e) => Err(e),
            }
        }
    }
}

/// A pipe, both ends close-on-exec and numbered above 5, so that moving
/// the program's three to 3, 4 and 5 overwrites none of them.
fn pipe_pair() -> io::Result<(File, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let high = |fd: i32| -> io::Result<OwnedFd> {
        // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor numbered 6 or
        // more; the old one is ours and closed here.
        let moved = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 6) };
        let error = io::Error::last_os_error();
        // SAFETY: `fd` came from pipe2 above and nothing else holds it.
        unsafe { libc::close(fd) };
        if moved < 0 {
            return Err(error);
        }
        // SAFETY: a new descriptor, ours alone.
        Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(moved) })
    };
    let read = high(fds[0])?;
    let write = high(fds[1])?;
    Ok((File::from(read), write))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_as_containerd_writes_them() {
        assert_eq!(
            Destination::parse("/run/x/stdout").unwrap(),
            Destination::Fifo("/run/x/stdout".into())
        );
        assert_eq!(
            Destination::parse("fifo:///run/x/stdout").unwrap(),
            Destination::Fifo("/run/x/stdout".into())
        );
        assert_eq!(
            Destination::parse("file:///var/log/a%20b.log").unwrap(),
            Destination::File("/var/log/a b.log".into())
        );
        assert_eq!(
            Destination::parse("binary:///usr/bin/logger?--tag=x%26y+z&-v").unwrap(),
            Destination::Binary {
                program: "/usr/bin/logger".into(),
                args: vec!["--tag".into(), "x&y z".into(), "-v".into()],
            }
        );
    }

    #[test]
    fn bad_uris_are_named() {
        for (uri, expected) in [
            ("syslog:///x", "unknown stdio scheme"),
            ("file://host/x", "absolute"),
            ("binary://relative", "absolute"),
            ("file:///x%00y", "NUL"),
            ("file:///x%ff", "UTF-8"),
        ] {
            let error = Destination::parse(uri).unwrap_err();
            assert!(error.contains(expected), "{uri}: {error}");
            assert!(error.contains(uri), "{uri}: {error}");
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("runvm-shim-log-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_file_gets_both_streams_appended() {
        use tokio::io::AsyncWriteExt;
        let dir = scratch("file");
        let path = dir.join("sub/c.log");
        runtime().block_on(async {
            let mut outputs = open_file(&path).unwrap();
            outputs.stdout.write_all(b"out\n").await.unwrap();
            outputs.stdout.flush().await.unwrap();
            outputs.stderr.write_all(b"err\n").await.unwrap();
            outputs.stderr.flush().await.unwrap();
        });
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "out\nerr\n");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_logging_binary_gets_its_descriptors_arguments_and_environment() {
        use tokio::io::AsyncWriteExt;
        let dir = scratch("binary");
        let script = dir.join("logger");
        let seen = dir.join("seen");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec 5>&-\n{{ echo \"$@\"; env | sort; cat <&3; cat <&4; }} > {}\n",
                seen.display()
            ),
        )
        .unwrap();
        let owner = LogOwner {
            container_id: "c1",
            namespace: "k8s.io",
        };
        runtime().block_on(async {
            // Run by the shell: executing a file just written can fail
            // with ETXTBSY while another test thread forks.
            let args = [script.display().to_string(), "--tag".into(), "t".into()];
            let mut outputs = start_binary(Path::new("/bin/sh"), &args, &owner).unwrap();
            outputs.stdout.write_all(b"to stdout\n").await.unwrap();
            outputs.stderr.write_all(b"to stderr\n").await.unwrap();
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&seen).unwrap_or_default();
            if text.contains("to stderr") || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(text.starts_with("--tag t\n"), "{text}");
        assert!(text.contains("CONTAINER_ID=c1\n"), "{text}");
        assert!(text.contains("CONTAINER_NAMESPACE=k8s.io\n"), "{text}");
        assert!(!text.contains("HOME="), "only the two variables: {text}");
        assert!(text.ends_with("to stdout\nto stderr\n"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_logging_binary_that_cannot_start_is_named() {
        let owner = LogOwner {
            container_id: "c1",
            namespace: "default",
        };
        let error = start_binary(Path::new("/no/such/logger"), &[], &owner)
            .err()
            .unwrap();
        assert!(error.contains("/no/such/logger"), "{error}");
    }
}
