//! `--console-socket`: like runc, runvm hands the caller the master side
//! of a pseudo-terminal over a unix socket (SCM_RIGHTS). The container's
//! terminal is in the guest; the monitor keeps the host pty's other side
//! and relays between it and the guest terminal's stream.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// A host pseudo-terminal pair.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

impl Pty {
    /// A new pair, both ends close-on-exec from the start (opened with
    /// O_CLOEXEC rather than flagged afterwards: a process started
    /// meanwhile by another thread must not inherit them).
    pub fn open() -> io::Result<Pty> {
        let flags = libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC;
        // SAFETY: open(2) with a C string; the descriptor is ours.
        let master = unsafe { libc::open(c"/dev/ptmx".as_ptr(), flags) };
        if master < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor owned by nobody else.
        let master = unsafe { OwnedFd::from_raw_fd(master) };
        // SAFETY: unlockpt(3) on our master.
        if unsafe { libc::unlockpt(master.as_raw_fd()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // The slave of this very master (no lookup by name).
        // SAFETY: TIOCGPTPEER takes the open flags and returns a new
        // descriptor.
        let slave = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, flags) };
        if slave < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor owned by nobody else.
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        Ok(Pty { master, slave })
    }

    /// The slave's device path (`/dev/pts/N`).
    pub fn slave_name(&self) -> io::Result<String> {
        std::fs::read_link(format!("/proc/self/fd/{}", self.slave.as_raw_fd()))
            .map(|path| path.display().to_string())
    }
}

/// Sends `fd` over the unix socket at `socket`, the way runc does (the
/// message carries the terminal's name, the descriptor rides as
/// SCM_RIGHTS).
pub fn send_to_console_socket(socket: &Path, name: &str, fd: &OwnedFd) -> io::Result<()> {
    let stream = crate::unix_socket::connect(socket)?;
    let mut payload = name.as_bytes().to_vec();
    if payload.is_empty() {
        payload.push(0);
    }
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; every pointer set below stays valid
    // for the sendmsg call.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space as _;
    // SAFETY: the control buffer is CMSG_SPACE(sizeof(int)) bytes, room
    // for exactly one header and one descriptor.
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        if header.is_null() {
            return Err(io::Error::other("no room for the control message"));
        }
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(
            libc::CMSG_DATA(header).cast::<libc::c_int>(),
            fd.as_raw_fd(),
        );
        if libc::sendmsg(stream.as_raw_fd(), &message, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Makes `slave` the controlling terminal of this process, which must
/// lead a session without one (after setsid): window size changes made on
/// the master then reach this process as SIGWINCH.
pub fn become_controlling_terminal(slave: &OwnedFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument (0: do not steal).
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn the_master_arrives_over_the_socket() {
        let dir = std::env::temp_dir().join(format!("runvm-console-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("console.sock");
        let listener = UnixListener::bind(&path).expect("listen");
        let pty = Pty::open().expect("a pty");
        assert!(pty.slave_name().expect("name").starts_with("/dev/pts/"));
        for end in [&pty.master, &pty.slave] {
            // SAFETY: fcntl(2) F_GETFD on our descriptor.
            let flags = unsafe { libc::fcntl(end.as_raw_fd(), libc::F_GETFD) };
            assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
        }
        let receiver = std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 64];
            let mut iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let mut control = [0u8; 64];
            // SAFETY: test code receiving into local buffers.
            let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
            message.msg_iov = &mut iov;
            message.msg_iovlen = 1;
            message.msg_control = control.as_mut_ptr().cast();
            message.msg_controllen = control.len() as _;
            let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut message, 0) };
            assert!(n > 0);
            let header = unsafe { libc::CMSG_FIRSTHDR(&message) };
            assert!(!header.is_null());
            let fd =
                unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>()) };
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            (String::from_utf8_lossy(&buf[..n as usize]).into_owned(), fd)
        });
        send_to_console_socket(&path, "/dev/ptmx", &pty.master).expect("send");
        let (name, master) = receiver.join().expect("receiver");
        assert_eq!(name, "/dev/ptmx");
        // Writing to the received master shows up on our slave.
        let mut master = std::fs::File::from(master);
        std::io::Write::write_all(&mut master, b"x\n").expect("write");
        let mut slave = std::fs::File::from(pty.slave);
        let mut got = [0u8; 2];
        std::io::Read::read_exact(&mut slave, &mut got).expect("read");
        assert_eq!(&got, b"x\n");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
