//! The guest's loopback interface. The guest's network namespace is the
//! pod's (see `container::spec`), and a pod's containers talk over
//! localhost, as CNI's loopback plugin lets them on a host: the agent
//! brings `lo` up before the first container, not at boot (a VM that only
//! runs commands does without).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Sets `lo` up in the agent's network namespace (nothing if it is up).
pub fn bring_up() -> io::Result<()> {
    // SAFETY: socket(2); the descriptor is ours.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that we own.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills the flags of the named interface.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the union's flags member, just filled in by the kernel.
    let flags = unsafe { request.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    request.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the request.
    if unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a network namespace of its own (a thread's), where `lo` starts
    /// down: up after one call, and a second call finds it so.
    #[test]
    fn lo_comes_up_in_a_new_namespace() {
        std::thread::spawn(|| {
            // SAFETY: unshare(2) of this thread's network namespace only.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "needs root: {}",
                io::Error::last_os_error()
            );
            let route = || {
                std::net::UdpSocket::bind("127.0.0.1:0")
                    .and_then(|socket| socket.connect("127.0.0.1:9"))
            };
            // No route to 127.0.0.1 while lo is down.
            assert!(route().is_err());
            bring_up().unwrap();
            bring_up().unwrap();
            route().unwrap();
        })
        .join()
        .unwrap();
    }
}
