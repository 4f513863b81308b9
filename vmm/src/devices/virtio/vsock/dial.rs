//! Connecting to a host Unix socket from the vsock thread without ever
//! blocking it.
//!
//! A blocking connect to a Unix stream socket waits while the listener's
//! backlog is full, i.e. for as long as the host program does not accept;
//! the whole device (every connection of the VM) would stall behind it. A
//! non-blocking Unix connect never waits and never reports EINPROGRESS:
//! it either completes at once (the connection is queued on the listener,
//! data can be written before the accept) or fails with EAGAIN when the
//! backlog is full. So no completion step (poll, SO_ERROR) is needed; a
//! full backlog is a refused connection, answered to the guest with RST.
//!
//! Syscalls: socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK)
//! and connect.

use std::ffi::OsStr;
use std::io::{Error, ErrorKind};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;

/// Connects to the Unix stream socket at `path`, already non-blocking.
pub fn dial(path: &OsStr) -> std::io::Result<UnixStream> {
    // SAFETY: sockaddr_un is plain integers; all zero is a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_bytes();
    // Room for the terminating NUL; an embedded NUL would name another
    // socket.
    if bytes.is_empty() || bytes.len() >= address.sun_path.len() || bytes.contains(&0) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!("{} is not a usable socket path", path.to_string_lossy()),
        ));
    }
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    let length = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;

    // SAFETY: a plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `address` is a valid sockaddr_un and `length` lies within it.
    let result = unsafe {
        libc::connect(
            fd,
            (&address as *const libc::sockaddr_un).cast(),
            length as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixListener;
    use std::path::Path;
    use std::time::{Duration, Instant};

    /// A listener at `path` with the smallest backlog, never accepting:
    /// the host program that hangs.
    pub fn stuck_listener(path: &Path) -> UnixListener {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).unwrap();
        // SAFETY: listen(2) on a socket we own.
        assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
        listener
    }

    #[test]
    fn a_listener_that_never_accepts_refuses_instead_of_blocking() {
        let dir = std::env::temp_dir().join(format!("runvm-dial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s");
        let _listener = stuck_listener(&path);
        let started = Instant::now();
        let mut connected = Vec::new();
        let error = loop {
            match dial(path.as_os_str()) {
                Ok(stream) => connected.push(stream),
                Err(e) => break e,
            }
            assert!(connected.len() < 64, "the backlog never filled");
        };
        assert_eq!(error.kind(), ErrorKind::WouldBlock, "{error}");
        assert!(!connected.is_empty(), "the first connection is queued");
        assert!(started.elapsed() < Duration::from_secs(1));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_and_unusable_paths_fail() {
        let missing = dial(OsStr::new("/nonexistent/runvm-dial-test")).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
        let long = "x".repeat(200);
        let error = dial(OsStr::new(&long)).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::InvalidInput);
        assert!(dial(OsStr::new("a\0b")).is_err());
    }
}
