//! A container's terminal, made as runc makes it: the container's own
//! process opens a pty in the container's devpts (so it sees /dev/pts/N
//! of its own instance, and a new container gets that pty bound on
//! /dev/console), takes the slave as stdio and controlling terminal, and
//! hands the master to the agent over the sync socket (SCM_RIGHTS, with a
//! [`MSG_TERMINAL`] packet). The agent then pumps between the master and
//! the host's stream.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;

use nix::mount::MsFlags;

use super::paths::{create_file, fd_path, open_in_root};

/// Container process → agent: the pty master rides along (SCM_RIGHTS).
pub const MSG_TERMINAL: u8 = b'T';

/// In the container's process, before its user and capabilities change:
/// a pty of the devpts that `/dev/ptmx` leads to within `root` (the
/// container's root, not yet pivoted into; for an exec, `/` of the
/// container's mount namespace). With `console`, the slave is bound on
/// `/dev/console`. The master goes to the agent over `sync`; the slave
/// becomes stdin, stdout, stderr and the controlling terminal (the caller
/// leads a session of its own). Only raw syscalls: this runs between fork
/// and exec.
pub fn open_in_container(root: BorrowedFd<'_>, console: bool, sync: RawFd) -> Result<(), String> {
    let master = open_in_root(
        root,
        Path::new("/dev/ptmx"),
        libc::O_RDWR | libc::O_NOCTTY,
        0,
    )
    .map_err(|e| format!("cannot open the container's /dev/ptmx: {e}"))?;
    let slave = crate::exec::open_slave(&master)
        .map_err(|e| format!("cannot open the pty's slave: {e}"))?;
    if console {
        let target = create_file(root, Path::new("/dev/console"), 0o666)
            .map_err(|e| format!("/dev/console: {e}"))?;
        nix::mount::mount(
            Some(fd_path(&slave).as_str()),
            fd_path(&target).as_str(),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("cannot bind the terminal on /dev/console: {e}"))?;
    }
    send_with_fd(sync, MSG_TERMINAL, master.as_raw_fd())
        .map_err(|e| format!("cannot hand the terminal to the agent: {e}"))?;
    drop(master);
    // SAFETY: dup2 onto the standard descriptors, then TIOCSCTTY (an int
    // argument, 0: do not steal) on our new stdin.
    unsafe {
        for target in 0..3 {
            if libc::dup2(slave.as_raw_fd(), target) < 0 {
                return Err(errno("cannot make the terminal stdio"));
            }
        }
        if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            return Err(errno("cannot take the terminal (TIOCSCTTY)"));
        }
    }
    Ok(())
}

/// One packet: `kind`, with `fd` attached.
fn send_with_fd(sync: RawFd, kind: u8, fd: RawFd) -> io::Result<()> {
    let mut payload = [kind];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr().cast(),
        iov_len: payload.len(),
    };
    let mut control = [0u64; 4];
    // SAFETY: msghdr is plain data; the pointers set below stay valid for
    // the call, and the control buffer (32 bytes, aligned) holds
    // CMSG_SPACE(sizeof(int)) = 24 bytes.
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as _;
        let header = libc::CMSG_FIRSTHDR(&message);
        if header.is_null() {
            return Err(io::Error::other("no room for the descriptor"));
        }
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>(), fd);
        if libc::sendmsg(sync, &message, libc::MSG_NOSIGNAL) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// In the agent: checks that `fd`, which a container's process sent, is a
/// pty master, as it must be.
pub fn check_master(fd: &OwnedFd) -> Result<(), String> {
    let mut number: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int; any other kind of
    // descriptor refuses it.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGPTN, &mut number) } < 0 {
        return Err(format!(
            "the container's process sent something that is not a pty master: {}",
            io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn errno(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// The descriptor arrives with its packet, and the agent's check
    /// tells a master from anything else.
    #[test]
    fn a_master_travels_and_is_recognised() {
        let (ours, theirs) = super::super::init::sync_pair().expect("socketpair");
        let (master, _slave) = crate::exec::open_pty().expect("a pty");
        send_with_fd(theirs.as_raw_fd(), MSG_TERMINAL, master.as_raw_fd()).expect("send");
        let mut buf = [0u8; 16];
        let (n, fd) = crate::fdio::recv_with_fd_blocking(ours.as_fd(), &mut buf).expect("recv");
        assert_eq!(&buf[..n], &[MSG_TERMINAL]);
        let fd = fd.expect("a descriptor came along");
        check_master(&fd).expect("it is a master");
        let file = std::fs::File::open("/dev/null").expect("/dev/null");
        assert!(check_master(&OwnedFd::from(file)).is_err());
    }
}
