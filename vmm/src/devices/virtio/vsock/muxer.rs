//! The host side of the device in the "hybrid vsock" convention that
//! Firecracker and Cloud Hypervisor use, so existing tools work with it:
//!
//! - Host-initiated: a client connects to the Unix socket at `path`, writes
//!   `CONNECT <port>\n`, and once the guest accepts reads `OK <host_port>\n`;
//!   from then on the socket is a byte stream to the guest's listener.
//! - Guest-initiated: a connection to CID 2 port P is connected to the Unix
//!   socket `<path>_<P>`; if nobody listens there the guest gets RST.
//!
//! The muxer owns every connection and decides which packet the guest gets
//! next; the device's event loop does the queue and epoll work.

use std::collections::{BTreeMap, HashMap};
use std::io::{ErrorKind, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::connection::{Connection, State, Verdict};
use super::control::ControlQueue;
use super::dial::dial;
use super::packet::*;
use crate::devices::unix_socket::SocketName;

/// `CONNECT 4294967295\n` is 19 bytes; anything longer is not a handshake.
const MAX_HANDSHAKE_LINE: usize = 32;
/// Host-side ports of host-initiated connections start here, clear of the
/// well-known ports a guest might connect to.
const FIRST_HOST_PORT: u32 = 1 << 30;
/// Bound on connections (host clients still in their handshake included),
/// so a host client or the guest cannot exhaust the VMM's file descriptors
/// or memory: each connection buffers at most
/// [`HOST_BUFFER_SIZE`](super::connection::HOST_BUFFER_SIZE) of guest data,
/// so 64 MiB in all at worst. runvm uses a handful per container process.
pub const MAX_CONNECTIONS: usize = 256;
/// Of those, how many the guest may open to host sockets, so that a guest
/// cannot take the slots the runtime needs to reach its agent.
pub const MAX_GUEST_CONNECTIONS: usize = 64;

/// The longest `_<port>` a guest connection adds to the socket's name.
const PORT_SUFFIX_ROOM: usize = "_4294967295".len();

type Key = (u32, u32); // (host port, guest port)

/// A host client that connected but has not finished its CONNECT line.
struct Handshake {
    stream: UnixStream,
    line: Vec<u8>,
}

pub struct Muxer {
    guest_cid: u64,
    path: PathBuf,
    /// `path` as bind and connect take it, whatever its length.
    name: SocketName,
    listener: UnixListener,
    connections: BTreeMap<Key, Connection>,
    handshakes: HashMap<RawFd, Handshake>,
    /// Packets for the guest that belong to no live connection (RSTs).
    loose: ControlQueue,
    /// Connections whose host socket may have data.
    readable: Vec<Key>,
    next_host_port: u32,
}

/// What an fd the event loop watches belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdOwner {
    Listener,
    Handshake,
    Connection(Key),
}

impl Muxer {
    /// Binds the Unix socket at `path` (removing a stale one first).
    pub fn bind(guest_cid: u64, path: &Path) -> std::io::Result<Muxer> {
        let name = SocketName::of(path, PORT_SUFFIX_ROOM)?;
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(name.name())?;
        listener.set_nonblocking(true)?;
        Ok(Muxer {
            guest_cid,
            path: path.to_path_buf(),
            name,
            listener,
            connections: BTreeMap::new(),
            handshakes: HashMap::new(),
            loose: ControlQueue::default(),
            readable: Vec::new(),
            next_host_port: FIRST_HOST_PORT,
        })
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn owner_of(&self, fd: RawFd) -> Option<FdOwner> {
        if fd == self.listener.as_raw_fd() {
            return Some(FdOwner::Listener);
        }
        if self.handshakes.contains_key(&fd) {
            return Some(FdOwner::Handshake);
        }
        self.connections
            .iter()
            .find(|(_, c)| c.stream.as_raw_fd() == fd)
            .map(|(key, _)| FdOwner::Connection(*key))
    }

    /// Every fd with the readiness the loop should wait for: (fd, read, write).
    pub fn interest(&self) -> Vec<(RawFd, bool, bool)> {
        let mut fds = vec![(self.listener.as_raw_fd(), true, false)];
        fds.extend(self.handshakes.keys().map(|fd| (*fd, true, false)));
        fds.extend(self.connections.values().map(|c| {
            (
                c.stream.as_raw_fd(),
                c.wants_host_data(),
                c.has_data_for_host(),
            )
        }));
        fds
    }

    /// Accepts pending host clients; their CONNECT line comes later.
    pub fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.handshakes.len() + self.connections.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue; // dropping it closes it
                    }
                    self.handshakes.insert(
                        stream.as_raw_fd(),
                        Handshake {
                            stream,
                            line: Vec::new(),
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    /// Reads a host client's handshake; a complete `CONNECT <port>` line
    /// opens a connection to that guest port.
    pub fn continue_handshake(&mut self, fd: RawFd) {
        let Some(handshake) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        // Byte by byte: whatever follows the line is data for the guest and
        // must stay in the socket.
        loop {
            match handshake.stream.read(&mut byte) {
                Ok(0) => {
                    self.handshakes.remove(&fd);
                    return;
                }
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) if handshake.line.len() < MAX_HANDSHAKE_LINE => handshake.line.push(byte[0]),
                Ok(_) => {
                    self.handshakes.remove(&fd);
                    return;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.handshakes.remove(&fd);
                    return;
                }
            }
        }
        let Some(handshake) = self.handshakes.remove(&fd) else {
            return;
        };
        let Some(guest_port) = parse_connect_line(&handshake.line) else {
            return; // not a handshake: close
        };
        let Some(host_port) = self.allocate_host_port(guest_port) else {
            return;
        };
        let mut connection = Connection::new(
            handshake.stream,
            host_port,
            guest_port,
            State::AwaitingResponse,
        );
        connection.owe(OP_REQUEST, 0);
        self.connections.insert((host_port, guest_port), connection);
    }

    fn allocate_host_port(&mut self, guest_port: u32) -> Option<u32> {
        for _ in 0..MAX_CONNECTIONS * 2 {
            let port = self.next_host_port;
            self.next_host_port = self
                .next_host_port
                .checked_add(1)
                .unwrap_or(FIRST_HOST_PORT);
            if !self.connections.contains_key(&(port, guest_port)) {
                return Some(port);
            }
        }
        None
    }

    /// Handles one packet from the guest (already read off the TX queue).
    pub fn on_guest_packet(&mut self, header: &PacketHeader, payload: &[u8]) {
        if header
            .validate_from_guest(self.guest_cid, payload.len())
            .is_err()
        {
            // Answer what can be answered; drop what cannot be trusted.
            if header.src_cid == self.guest_cid && header.op != OP_RST {
                self.reset_unknown(header);
            }
            return;
        }
        let key = (header.dst_port, header.src_port);
        let payload = &payload[..header.len as usize];
        match self.connections.get_mut(&key) {
            Some(connection) => {
                if connection.on_guest_packet(header, payload) == Verdict::Close {
                    self.close(key);
                }
            }
            None if header.op == OP_REQUEST => self.connect_to_host(header),
            None if header.op == OP_RST => {}
            None => self.reset_unknown(header),
        }
    }

    /// A guest connecting to the host: dial `<path>_<port>`, without
    /// waiting for a host program that does not accept (see [`dial`]).
    fn connect_to_host(&mut self, header: &PacketHeader) {
        let (host_port, guest_port) = (header.dst_port, header.src_port);
        let guest_opened = self
            .connections
            .values()
            .filter(|c| c.guest_initiated)
            .count();
        if self.connections.len() + self.handshakes.len() >= MAX_CONNECTIONS
            || guest_opened >= MAX_GUEST_CONNECTIONS
        {
            return self.reset_unknown(header);
        }
        let target = self.name.with_suffix(&format!("_{host_port}"));
        let Ok(stream) = dial(&target) else {
            return self.reset_unknown(header);
        };
        let mut connection = Connection::new(stream, host_port, guest_port, State::Established);
        connection.guest_initiated = true;
        connection.update_guest_credit(header);
        connection.owe(OP_RESPONSE, 0);
        self.connections.insert((host_port, guest_port), connection);
    }

    fn reset_unknown(&mut self, header: &PacketHeader) {
        let reply =
            PacketHeader::to_guest(self.guest_cid, header.dst_port, header.src_port, OP_RST);
        self.loose.push(reply);
    }

    /// Drops a connection, keeping the packets it still owes (its RST).
    fn close(&mut self, key: Key) {
        if let Some(mut connection) = self.connections.remove(&key) {
            while let Some(header) = connection.next_owed(self.guest_cid) {
                self.loose.push(header);
            }
        }
        self.readable.retain(|k| *k != key);
    }

    /// The host socket of `key` became readable, writable, or hung up.
    pub fn on_connection_ready(&mut self, key: Key, readable: bool, writable: bool) {
        if readable && !self.readable.contains(&key) {
            self.readable.push(key);
        }
        if writable {
            let verdict = self
                .connections
                .get_mut(&key)
                .map_or(Verdict::Keep, Connection::flush_to_host);
            if verdict == Verdict::Close {
                self.close(key);
            }
        }
    }

    /// Whether a packet for the guest may be ready.
    pub fn has_work_for_guest(&self) -> bool {
        !self.loose.is_empty()
            || self.connections.values().any(Connection::has_owed_packets)
            || self.readable.iter().any(|k| {
                self.connections
                    .get(k)
                    .is_some_and(Connection::wants_host_data)
            })
    }

    /// The next packet for the guest, its payload written to `payload`.
    /// Control packets go first; then data, one connection after another.
    pub fn next_packet_for_guest(&mut self, payload: &mut [u8]) -> Option<(PacketHeader, usize)> {
        if let Some(header) = self.loose.pop() {
            return Some((header, 0));
        }
        let owing = self
            .connections
            .iter()
            .find(|(_, c)| c.has_owed_packets())
            .map(|(key, _)| *key);
        if let Some(key) = owing {
            let connection = self.connections.get_mut(&key)?;
            let header = connection.next_owed(self.guest_cid)?;
            if header.op == OP_RST {
                self.close(key);
            }
            return Some((header, 0));
        }
        // A header-only buffer carries control packets only; data waits
        // for a buffer with room.
        if payload.is_empty() {
            return None;
        }
        while !self.readable.is_empty() {
            let key = self.readable.remove(0);
            let Some(connection) = self.connections.get_mut(&key) else {
                continue;
            };
            let read = connection.read_for_guest(self.guest_cid, payload);
            if connection.is_resetting() {
                self.close(key);
                continue;
            }
            match read {
                Some(packet) => {
                    // More may be waiting: back of the line, for fairness.
                    self.readable.push(key);
                    return Some(packet);
                }
                None => {
                    if connection.has_owed_packets() {
                        return self.next_packet_for_guest(payload);
                    }
                }
            }
        }
        None
    }

    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Control packets waiting for the guest's RX buffers: bounded by
    /// [`MAX_LOOSE`](super::control::MAX_LOOSE) plus
    /// [`MAX_OWED`](super::connection::MAX_OWED) per connection.
    pub fn queued_control_packets(&self) -> usize {
        self.loose.len()
            + self
                .connections
                .values()
                .map(Connection::owed_count)
                .sum::<usize>()
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(line).ok()?;
    let port = text.trim_end_matches('\r').strip_prefix("CONNECT ")?;
    port.parse().ok()
}

/// Test helpers, shared with the device-level tests (hostile_guest_tests).
#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::io::Write;

    pub(crate) const CID: u64 = 3;

    /// A private directory for one test's sockets, removed afterwards.
    pub(crate) struct TestDir(pub(crate) PathBuf);

    impl TestDir {
        pub(crate) fn new(name: &str) -> TestDir {
            let dir = std::env::temp_dir()
                .join(format!("runvm-vsock-test-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            TestDir(dir)
        }

        pub(crate) fn socket(&self) -> PathBuf {
            self.0.join("v.sock")
        }

        /// Where a guest connection to host port `port` goes.
        pub(crate) fn port_path(&self, port: u32) -> PathBuf {
            self.0.join(format!("v.sock_{port}"))
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A stream packet from the guest with a 64 KiB receive buffer.
    pub(crate) fn from_guest(op: u16, src_port: u32, dst_port: u32) -> PacketHeader {
        PacketHeader {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 65536,
            ..Default::default()
        }
    }

    fn next(m: &mut Muxer) -> Option<PacketHeader> {
        let mut payload = [0u8; 4096];
        m.next_packet_for_guest(&mut payload).map(|(h, _)| h)
    }

    #[test]
    fn parses_connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect_line(b"CONNECT -1"), None);
        assert_eq!(parse_connect_line(b"connect 52"), None);
        assert_eq!(parse_connect_line(b"CONNECT 99999999999"), None);
    }

    #[test]
    fn host_initiated_connection_handshake() {
        let dir = TestDir::new("host-init");
        let path = dir.socket();
        let mut muxer = Muxer::bind(CID, &path).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"CONNECT 52\nearly").unwrap();
        muxer.accept();
        let fd = muxer.interest()[1].0;
        assert_eq!(muxer.owner_of(fd), Some(FdOwner::Handshake));
        muxer.continue_handshake(fd);
        let request = next(&mut muxer).unwrap();
        assert_eq!(({ request.op }, { request.dst_port }), (OP_REQUEST, 52));
        let host_port = request.src_port;
        muxer.on_guest_packet(&from_guest(OP_RESPONSE, 52, host_port), &[]);
        let mut ok = [0u8; 14];
        client.read_exact(&mut ok).unwrap();
        assert_eq!(&ok[..], format!("OK {host_port}\n").as_bytes());
        // What followed the CONNECT line reaches the guest as data.
        muxer.on_connection_ready((host_port, 52), true, false);
        let mut payload = [0u8; 64];
        let (data, n) = muxer.next_packet_for_guest(&mut payload).unwrap();
        assert_eq!({ data.op }, OP_RW);
        assert_eq!(&payload[..n], b"early");
    }

    #[test]
    fn a_bad_handshake_closes_the_client() {
        let dir = TestDir::new("bad-handshake");
        let path = dir.socket();
        let mut muxer = Muxer::bind(CID, &path).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        client.write_all(b"HELLO\n").unwrap();
        muxer.accept();
        let fd = muxer.interest()[1].0;
        muxer.continue_handshake(fd);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert!(next(&mut muxer).is_none());
    }

    #[test]
    fn guest_initiated_connection_reaches_the_port_socket() {
        let dir = TestDir::new("guest-init");
        let path = dir.socket();
        let mut muxer = Muxer::bind(CID, &path).unwrap();
        let mut port_path = path.clone().into_os_string();
        port_path.push("_1234");
        let _ = std::fs::remove_file(&port_path);
        let listener = UnixListener::bind(&port_path).unwrap();
        muxer.on_guest_packet(&from_guest(OP_REQUEST, 5000, 1234), &[]);
        let response = next(&mut muxer).unwrap();
        assert_eq!(
            ({ response.op }, { response.dst_port }, {
                response.src_port
            }),
            (OP_RESPONSE, 5000, 1234)
        );
        let (mut host, _) = listener.accept().unwrap();
        let mut data = from_guest(OP_RW, 5000, 1234);
        data.len = 3;
        muxer.on_guest_packet(&data, b"abc");
        let mut got = [0u8; 3];
        host.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abc");
        std::fs::remove_file(&port_path).unwrap();
    }

    #[test]
    fn a_socket_path_longer_than_an_address_works_both_ways() {
        let dir = TestDir::new("long-path");
        let deep = dir.0.join("d".repeat(100)).join("e".repeat(100));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("vsock.sock");
        let mut muxer = Muxer::bind(CID, &path).unwrap();
        assert!(path.exists());
        let host_side = SocketName::of(&path, 0).unwrap();
        UnixStream::connect(host_side.name()).unwrap();
        muxer.accept();
        assert_eq!(muxer.interest().len(), 2, "the host client was accepted");
        let listener = UnixListener::bind(host_side.with_suffix("_1234")).unwrap();
        muxer.on_guest_packet(&from_guest(OP_REQUEST, 5000, 1234), &[]);
        assert_eq!({ next(&mut muxer).unwrap().op }, OP_RESPONSE);
        listener.accept().unwrap();
        drop(muxer);
        assert!(!path.exists());
    }

    #[test]
    fn a_request_for_a_port_nobody_serves_is_refused() {
        let dir = TestDir::new("refused");
        let path = dir.socket();
        let mut muxer = Muxer::bind(CID, &path).unwrap();
        muxer.on_guest_packet(&from_guest(OP_REQUEST, 5000, 4321), &[]);
        let reply = next(&mut muxer).unwrap();
        assert_eq!(({ reply.op }, { reply.dst_port }), (OP_RST, 5000));
        assert_eq!(muxer.connection_count(), 0);
    }

    #[test]
    fn packets_for_unknown_connections_get_rst_and_rst_gets_nothing() {
        let dir = TestDir::new("unknown");
        let path = dir.socket();
        let mut muxer = Muxer::bind(CID, &path).unwrap();
        muxer.on_guest_packet(&from_guest(OP_CREDIT_UPDATE, 1, 2), &[]);
        assert_eq!({ next(&mut muxer).unwrap().op }, OP_RST);
        muxer.on_guest_packet(&from_guest(OP_RST, 1, 2), &[]);
        assert!(next(&mut muxer).is_none());
    }

    #[test]
    fn spoofed_packets_are_dropped_silently() {
        let dir = TestDir::new("spoofed");
        let path = dir.socket();
        let mut muxer = Muxer::bind(CID, &path).unwrap();
        let mut spoofed = from_guest(OP_REQUEST, 1, 2);
        spoofed.src_cid = 7;
        muxer.on_guest_packet(&spoofed, &[]);
        assert!(next(&mut muxer).is_none());
    }

    #[test]
    fn the_socket_file_goes_with_the_muxer() {
        let dir = TestDir::new("cleanup");
        let path = dir.socket();
        drop(Muxer::bind(CID, &path).unwrap());
        assert!(!path.exists());
    }
}
