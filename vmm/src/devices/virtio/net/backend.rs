//! Where the device's frames go: a [`Backend`] moves whole frames, each
//! led by the vnet header, without blocking. In production it is a
//! [`Tap`]; the tests use one end of a `SOCK_SEQPACKET` pair, which keeps
//! frame boundaries just as a tap does.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::header::HEADER_LEN;

/// One side of the wire, seen from the device.
pub trait Backend: AsRawFd + Send {
    /// Reads one frame into `buf`; `WouldBlock` when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Sends one whole frame; `WouldBlock` when it cannot take one now.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// What may arrive unsegmented or with a partial checksum (the tap's
    /// `TUN_F_*` flags), following the offloads the guest accepted.
    fn set_offloads(&mut self, tun_flags: u32) -> io::Result<()>;
}

vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, b'T' as u32, 202, libc::c_int);
vmm_sys_util::ioctl_iow_nr!(TUNSETOFFLOAD, b'T' as u32, 208, libc::c_uint);
vmm_sys_util::ioctl_ior_nr!(TUNGETIFF, b'T' as u32, 210, libc::c_uint);
vmm_sys_util::ioctl_iow_nr!(TUNSETVNETHDRSZ, b'T' as u32, 216, libc::c_int);

const IFF_TUN: u16 = 0x0001;
const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
const IFNAMSIZ: usize = 16;

/// `struct ifreq` as TUNSETIFF and TUNGETIFF use it: a name and flags.
#[repr(C)]
#[derive(Default)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: u16,
    _pad: [u8; 22],
}

/// A tap device, non-blocking, with 12-byte vnet headers.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

impl Tap {
    /// Creates (or attaches to, if it exists and is persistent) the tap
    /// `name` in the caller's network namespace.
    pub fn open(name: &str) -> io::Result<Tap> {
        if name.is_empty() || name.len() >= IFNAMSIZ || name.contains(['/', '\0', ' ']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is no interface name (1 to 15 bytes, no '/' or space)"),
            ));
        }
        let tun = File::options()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open /dev/net/tun: {e}")))?;
        let mut request = IfReq {
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            ..IfReq::default()
        };
        request.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes one ifreq, which `request` is.
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF(), &mut request) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create tap {name}: {e}"),
            ));
        }
        Tap::from_fd(OwnedFd::from(tun))
    }

    /// Takes over a descriptor of a tap opened by someone else, which must
    /// have been opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Tap> {
        let mut request = IfReq::default();
        // SAFETY: TUNGETIFF writes one ifreq, which `request` is; on a
        // descriptor that is no tun device it fails and writes nothing.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNGETIFF(), &mut request) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("not an attached tap: {e}"),
            ));
        }
        let end = request
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(IFNAMSIZ);
        let name = String::from_utf8_lossy(&request.name[..end]).into_owned();
        let wanted = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        if request.flags & wanted != wanted || request.flags & IFF_TUN != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{name} has flags {:#x}: a tap with IFF_NO_PI and IFF_VNET_HDR is needed",
                    request.flags
                ),
            ));
        }
        let size = HEADER_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ(), &size) } < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("{name}: cannot set the vnet header size: {e}"),
            ));
        }
        set_nonblocking(fd.as_raw_fd())
            .map_err(|e| io::Error::new(e.kind(), format!("{name}: {e}")))?;
        Ok(Tap { fd, name })
    }

    /// Takes over descriptor `fd`, inherited from the process's parent.
    ///
    /// # Safety
    /// `fd` must be open and owned by no one else in this process.
    pub unsafe fn from_raw_fd(fd: RawFd) -> io::Result<Tap> {
        // SAFETY: the caller vouches that nothing else owns it.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        // Not to be passed on to anything the VMM might start.
        // SAFETY: plain fcntl on a descriptor we own.
        unsafe { libc::fcntl(owned.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
        Tap::from_fd(owned)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Backend for Tap {
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        read_frame(self.fd.as_raw_fd(), buf)
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        write_frame(self.fd.as_raw_fd(), frame)
    }

    fn set_offloads(&mut self, tun_flags: u32) -> io::Result<()> {
        let flags = libc::c_ulong::from(tun_flags);
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETOFFLOAD(), flags) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl calls on a valid descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One read: one frame on a tap or a seqpacket socket.
pub(super) fn read_frame(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: reads at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// One write: one frame, whole or not at all.
pub(super) fn write_frame(fd: RawFd, frame: &[u8]) -> io::Result<()> {
    loop {
        // SAFETY: writes `frame.len()` bytes from `frame`.
        let n = unsafe { libc::write(fd, frame.as_ptr().cast(), frame.len()) };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
pub mod tests {
    use std::os::unix::net::UnixDatagram;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    use super::*;

    /// One end of a seqpacket pair, standing in for a tap; the offloads
    /// asked for are recorded.
    pub struct PairBackend {
        fd: OwnedFd,
        pub offloads: Arc<AtomicU32>,
    }

    /// The device's end and the test's (a "wire" frames can be put on and
    /// taken off, each with its vnet header).
    pub fn pair() -> (PairBackend, UnixDatagram) {
        let mut fds = [0; 2];
        // SAFETY: socketpair writes two descriptors into `fds`.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        // SAFETY: both are fresh descriptors, owned from here on. A
        // UnixDatagram sends and receives seqpacket frames alike.
        let (ours, theirs) = unsafe {
            (
                OwnedFd::from_raw_fd(fds[0]),
                UnixDatagram::from_raw_fd(fds[1]),
            )
        };
        theirs.set_nonblocking(false).unwrap();
        theirs
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let backend = PairBackend {
            fd: ours,
            offloads: Arc::new(AtomicU32::new(u32::MAX)),
        };
        (backend, theirs)
    }

    impl AsRawFd for PairBackend {
        fn as_raw_fd(&self) -> RawFd {
            self.fd.as_raw_fd()
        }
    }

    impl Backend for PairBackend {
        fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            read_frame(self.fd.as_raw_fd(), buf)
        }

        fn send(&mut self, frame: &[u8]) -> io::Result<()> {
            write_frame(self.fd.as_raw_fd(), frame)
        }

        fn set_offloads(&mut self, tun_flags: u32) -> io::Result<()> {
            self.offloads.store(tun_flags, Ordering::Release);
            Ok(())
        }
    }

    #[test]
    fn a_descriptor_that_is_no_tap_is_refused_by_name() {
        let (backend, _wire) = pair();
        let error = Tap::from_fd(backend.fd).unwrap_err().to_string();
        assert!(error.contains("not an attached tap"), "{error}");
    }

    #[test]
    fn tap_names_are_checked_before_anything_is_opened() {
        for bad in ["", "a/b", "sixteen-bytes-xx", "a b"] {
            let error = Tap::open(bad).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }
}
