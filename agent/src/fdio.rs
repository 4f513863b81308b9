//! Non-blocking file descriptors on the tokio reactor.
//!
//! Sockets (vsock in the guest, Unix in the tests), pipes and pty masters
//! are all read and written the same way, so one type serves them all and
//! the server does not care which transport it runs on.
//!
//! Every syscall is expensive in the guest, so reads and writes follow
//! tokio's own rule for edge-triggered epoll: a short read or write shows
//! the descriptor has been drained (or filled), and readiness is cleared
//! without a further call that would only return `EAGAIN`.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};

fn cvt(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Puts `fd` in non-blocking mode (one ioctl, whatever the file type).
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    let mut on: libc::c_int = 1;
    // SAFETY: FIONBIO reads one int from the pointer we pass.
    let ret = unsafe { libc::ioctl(fd, libc::FIONBIO, &mut on) };
    cvt(ret as isize).map(drop)
}

/// A pipe as `(read end, write end)`, both close-on-exec and blocking.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    let ret = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    cvt(ret as isize)?;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` stays open, and the same descriptor, for as long
    // as the `AsyncFd` that owns it.
    unsafe { AsyncFd::register_with_interest(fd, interest) }.map_err(|e| e.into_parts().1)
}

/// A non-blocking descriptor registered with the reactor.
#[derive(Debug)]
pub struct Fd {
    inner: AsyncFd<OwnedFd>,
}

impl Fd {
    /// Registers `fd`, which must already be non-blocking.
    pub fn new(fd: OwnedFd) -> io::Result<Fd> {
        Ok(Fd {
            inner: register(fd, Interest::READABLE | Interest::WRITABLE)?,
        })
    }

    /// Makes `fd` non-blocking, then registers it.
    pub fn new_nonblocking(fd: OwnedFd) -> io::Result<Fd> {
        set_nonblocking(fd.as_raw_fd())?;
        Fd::new(fd)
    }

    pub fn raw(&self) -> RawFd {
        self.inner.as_raw_fd()
    }

    fn poll_read_raw(
        &self,
        cx: &mut Context<'_>,
        buf: *mut u8,
        len: usize,
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.inner.poll_read_ready(cx))?;
            // SAFETY: the caller hands us `len` writable bytes at `buf`.
            let result =
                guard.try_io(|fd| cvt(unsafe { libc::read(fd.as_raw_fd(), buf.cast(), len) }));
            match result {
                Ok(Ok(n)) => {
                    if n > 0 && n < len {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_write_raw(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.inner.poll_write_ready(cx))?;
            // SAFETY: `buf` is valid for reads of its length.
            let result = guard.try_io(|fd| {
                cvt(unsafe { libc::write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) })
            });
            match result {
                Ok(Ok(n)) => {
                    if n > 0 && n < buf.len() {
                        guard.clear_ready();
                    }
                    return Poll::Ready(Ok(n));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads what is there, up to `buf.len()`; 0 is end of file.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        poll_fn(|cx| self.poll_read_raw(cx, ptr, len)).await
    }

    pub async fn write(&self, buf: &[u8]) -> io::Result<usize> {
        poll_fn(|cx| self.poll_write_raw(cx, buf)).await
    }

    pub async fn write_all(&self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write(buf).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => buf = &buf[n..],
            }
        }
        Ok(())
    }

    /// Reads one line from a socket without consuming anything after its
    /// newline (the bytes that follow belong to whoever reads next): peeks
    /// at what has arrived, then reads exactly the line. Returns the line's
    /// length, newline included. `InvalidData` when `buf` fills up without
    /// a newline, `UnexpectedEof` when the peer closes first.
    pub async fn read_line(&self, buf: &mut [u8]) -> io::Result<usize> {
        let line_len = poll_fn(|cx| self.poll_peek_line(cx, buf)).await?;
        let mut got = 0;
        while got < line_len {
            match self.read(&mut buf[got..line_len]).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => got += n,
            }
        }
        Ok(line_len)
    }

    fn poll_peek_line(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.inner.poll_read_ready(cx))?;
            let result = guard.try_io(|fd| {
                // SAFETY: `buf` is valid for writes of its length.
                cvt(unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_PEEK,
                    )
                })
            });
            match result {
                Ok(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into())),
                Ok(Ok(n)) => {
                    if let Some(newline) = buf[..n].iter().position(|&b| b == b'\n') {
                        // Readiness stays set: the line (and maybe more) is
                        // still there to be read.
                        return Poll::Ready(Ok(newline + 1));
                    }
                    if n == buf.len() {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "no newline within the limit",
                        )));
                    }
                    if guard.ready().is_read_closed() {
                        // The peer is done: the rest of the line never comes
                        // (and peeking would find the same bytes forever).
                        return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                    }
                    // A partial line: wait for more to arrive (a new edge).
                    guard.clear_ready();
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }

    /// Receives one packet and the descriptor that may come with it (see
    /// [`recv_with_fd_blocking`]). Readiness is kept: on a packet socket
    /// the next packet may be queued already, and no new edge would come.
    pub async fn recv_with_fd(&self, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
        loop {
            let mut guard = self.inner.readable().await?;
            match guard.try_io(|fd| recv_with_fd_raw(fd.as_raw_fd(), buf)) {
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(result) => return result,
                Err(_would_block) => {}
            }
        }
    }

    /// Half-closes a socket: the peer reads end of file once it has
    /// everything sent before.
    pub fn shutdown_write(&self) -> io::Result<()> {
        // SAFETY: plain shutdown(2) on a descriptor we own.
        cvt(unsafe { libc::shutdown(self.raw(), libc::SHUT_WR) } as isize).map(drop)
    }
}

impl AsyncRead for &Fd {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: read(2) only writes into the unfilled part, and we mark as
        // initialised exactly what it wrote.
        let unfilled = unsafe { buf.unfilled_mut() };
        let (ptr, len) = (unfilled.as_mut_ptr().cast::<u8>(), unfilled.len());
        let n = ready!(self.poll_read_raw(cx, ptr, len))?;
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for &Fd {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_raw(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown_write())
    }
}

/// A listening socket (vsock in the guest, Unix in the tests).
#[derive(Debug)]
pub struct Listener {
    inner: AsyncFd<OwnedFd>,
    host_only: bool,
}

impl Listener {
    /// Registers a bound, listening socket; makes it non-blocking.
    pub fn new(fd: OwnedFd) -> io::Result<Listener> {
        set_nonblocking(fd.as_raw_fd())?;
        Ok(Listener {
            inner: register(fd, Interest::READABLE)?,
            host_only: false,
        })
    }

    /// A vsock listener whose connections are accepted only from the
    /// host (CID 2): a connection from anywhere else (a guest process
    /// through another transport, should the kernel have one) is closed
    /// before a byte of it is read.
    pub fn host_only(fd: OwnedFd) -> io::Result<Listener> {
        let mut listener = Listener::new(fd)?;
        listener.host_only = true;
        Ok(listener)
    }

    /// The next connection, non-blocking and close-on-exec.
    pub async fn accept(&self) -> io::Result<Fd> {
        let fd = loop {
            let mut guard = self.inner.readable().await?;
            let mut peer: libc::sockaddr_vm = zeroed_sockaddr_vm();
            let result = guard.try_io(|fd| {
                let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
                // SAFETY: accept4 with an address buffer of `len` bytes.
                let ret = unsafe {
                    libc::accept4(
                        fd.as_raw_fd(),
                        (&mut peer as *mut libc::sockaddr_vm).cast(),
                        &mut len,
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                cvt(ret as isize)
            });
            match result {
                Ok(Ok(fd)) if self.host_only && !from_host(&peer) => {
                    // SAFETY: accept4 just returned this descriptor to us.
                    drop(unsafe { OwnedFd::from_raw_fd(fd as RawFd) });
                    agent_log!(
                        "refused a connection from vsock CID {} (only the host, CID {}, is served)",
                        peer.svm_cid,
                        libc::VMADDR_CID_HOST
                    );
                }
                Ok(Ok(fd)) => break fd as RawFd,
                Ok(Err(e))
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO)
                    ) => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        };
        // SAFETY: accept4 just returned this descriptor to us.
        Fd::new(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn zeroed_sockaddr_vm() -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all zeroes is a valid value.
    unsafe { std::mem::zeroed() }
}

/// Whether an accepted vsock peer is the host.
fn from_host(peer: &libc::sockaddr_vm) -> bool {
    i32::from(peer.svm_family) == libc::AF_VSOCK && peer.svm_cid == libc::VMADDR_CID_HOST
}

/// recvmsg(2) of one packet into `buf` and at most one descriptor, made
/// close-on-exec; any further descriptors a peer attached are closed.
#[cfg(test)]
pub fn recv_with_fd_blocking(
    fd: std::os::fd::BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    recv_with_fd_raw(fd.as_raw_fd(), buf)
}

fn recv_with_fd_raw(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for a few descriptors, aligned for cmsghdr.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data; every pointer in it stays valid for
    // the call, and the kernel writes at most msg_controllen bytes of
    // control data, which we then walk with the CMSG macros.
    unsafe {
        let mut message: libc::msghdr = std::mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = cvt(libc::recvmsg(fd, &mut message, libc::MSG_CMSG_CLOEXEC))?;
        let mut received = None;
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header).cast::<libc::c_int>();
                let bytes =
                    ((*header).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize);
                for i in 0..bytes / std::mem::size_of::<libc::c_int>() {
                    let owned = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    // The first is kept; dropping the others closes them.
                    if received.is_none() {
                        received = Some(owned);
                    }
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
        Ok((n, received))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn socket_pair() -> (Fd, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (Fd::new_nonblocking(ours.into()).unwrap(), theirs)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_and_writes_through_a_socket() {
        let (fd, mut peer) = socket_pair();
        fd.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        std::io::Read::read_exact(&mut peer, &mut got).unwrap();
        assert_eq!(&got, b"ping");
        std::io::Write::write_all(&mut peer, b"pong").unwrap();
        let mut buf = [0u8; 16];
        let n = fd.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"pong");
        drop(peer);
        assert_eq!(fd.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_line_is_read_without_what_follows() {
        let (fd, mut peer) = socket_pair();
        std::io::Write::write_all(&mut peer, b"STREAM 7\nrest").unwrap();
        let mut line = [0u8; 28];
        let n = fd.read_line(&mut line).await.unwrap();
        assert_eq!(&line[..n], b"STREAM 7\n");
        let mut rest = [0u8; 4];
        (&fd).read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"rest");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_line_may_arrive_in_pieces() {
        let (fd, peer) = socket_pair();
        let writer = std::thread::spawn(move || {
            let mut peer = peer;
            for piece in [&b"STR"[..], b"EAM 1", b"2\n"] {
                std::io::Write::write_all(&mut peer, piece).unwrap();
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            peer
        });
        let mut line = [0u8; 28];
        let n = fd.read_line(&mut line).await.unwrap();
        assert_eq!(&line[..n], b"STREAM 12\n");
        drop(writer.join().unwrap());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_line_without_newline_is_refused() {
        let (fd, mut peer) = socket_pair();
        std::io::Write::write_all(&mut peer, b"0123456789").unwrap();
        let mut line = [0u8; 8];
        let err = fd.read_line(&mut line).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        drop(peer);
        let (fd, mut peer) = socket_pair();
        std::io::Write::write_all(&mut peer, b"STR").unwrap();
        drop(peer);
        let err = fd.read_line(&mut line).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn pipes_work_too_and_a_half_close_reaches_the_peer() {
        let (r, w) = pipe().unwrap();
        let (r, w) = (
            Fd::new_nonblocking(r).unwrap(),
            Fd::new_nonblocking(w).unwrap(),
        );
        w.write_all(b"data").await.unwrap();
        drop(w);
        let mut all = Vec::new();
        (&r).read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"data");

        let (fd, mut peer) = socket_pair();
        fd.shutdown_write().unwrap();
        let mut rest = Vec::new();
        std::io::Read::read_to_end(&mut peer, &mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn only_the_host_cid_counts_as_the_host() {
        let mut peer = zeroed_sockaddr_vm();
        peer.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        peer.svm_cid = libc::VMADDR_CID_HOST;
        assert!(from_host(&peer));
        for cid in [libc::VMADDR_CID_LOCAL, 3, libc::VMADDR_CID_ANY] {
            peer.svm_cid = cid;
            assert!(!from_host(&peer), "CID {cid}");
        }
        peer.svm_cid = libc::VMADDR_CID_HOST;
        peer.svm_family = libc::AF_UNIX as libc::sa_family_t;
        assert!(!from_host(&peer));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_listener_accepts_unix_connections() {
        let dir = std::env::temp_dir().join(format!("runvm-agent-fdio-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("l.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let listener = Listener::new(listener.into()).unwrap();
        let client = tokio::net::UnixStream::connect(&path).await.unwrap();
        let conn = listener.accept().await.unwrap();
        let mut client = client;
        client.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        conn.read(&mut b).await.unwrap();
        assert_eq!(&b, b"x");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
