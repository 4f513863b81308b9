//! The vsock muxer and its connections driven the way its event loop
//! drives them, with the fuzzer playing both a hostile guest (arbitrary
//! packet sequences, headers well formed or raw) and host clients (CONNECT
//! lines, data, half and full closes), over real Unix sockets.
//!
//! Besides "never panics": a header that passes validation is the
//! guest's, for the host, a known operation with a bounded length; and
//! every packet the muxer gives the guest is addressed from the host to
//! the guest, a known operation, with a length that fits the buffer and
//! matches the payload, data only within the credit the guest last
//! granted, and (for guest-initiated connections, whose host end the
//! harness knows) an end-of-stream only after the host end stopped
//! writing.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use runvm_vmm::devices::virtio::vsock::muxer::{FdOwner, Muxer, MAX_CONNECTIONS};
use runvm_vmm::devices::virtio::vsock::packet::*;
use vm_memory::ByteValued;

const CID: u64 = 3;
/// The host port guest connections can reach: a listener at `<path>_52`.
const SERVED_PORT: u32 = 52;
const FIRST_HOST_PORT: u32 = 1 << 30;
/// Bounds the sockets one input opens (the listen backlog is 128).
const MAX_OPS: usize = 48;
/// The device's largest RX payload.
const MAX_ROOM: usize = 64 * 1024;

/// RX buffers with room for a header only are allowed: a guest may post
/// them, and they carry control packets but no data.
fn rx_room(requested: u16) -> usize {
    usize::from(requested).min(MAX_ROOM)
}

type Key = (u32, u32); // (host port, guest port)

struct Fixture {
    path: PathBuf,
    served: UnixListener,
}

fn socket_dir() -> PathBuf {
    std::env::temp_dir().join(format!("runvm-fuzz-vsock-{}", std::process::id()))
}

/// libFuzzer ends a run with exit(): the socket directory goes with it.
extern "C" fn remove_socket_dir() {
    let _ = std::fs::remove_dir_all(socket_dir());
}

/// One socket directory per fuzzing process, and the host service the
/// guest can dial, kept across inputs.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = socket_dir();
        std::fs::create_dir_all(&dir).expect("socket directory");
        // SAFETY: registers a function that takes no arguments and only
        // removes a directory.
        unsafe { libc::atexit(remove_socket_dir) };
        let path = dir.join("v.sock");
        let mut served_path = path.clone().into_os_string();
        served_path.push(format!("_{SERVED_PORT}"));
        let _ = std::fs::remove_file(&served_path);
        let served = UnixListener::bind(&served_path).expect("served port listener");
        served.set_nonblocking(true).expect("non-blocking listener");
        Fixture { path, served }
    })
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Port {
    Served,
    HostInitiated(u8),
    Guest(u8),
    Any(u32),
}

impl Port {
    fn value(self) -> u32 {
        match self {
            Port::Served => SERVED_PORT,
            Port::HostInitiated(n) => FIRST_HOST_PORT + u32::from(n % 8),
            Port::Guest(n) => 5000 + u32::from(n % 4),
            Port::Any(p) => p,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Header {
    spoofed_src: Option<u64>,
    wrong_dst: Option<u64>,
    /// The guest's port (its source).
    guest_port: Port,
    /// The host's port (the destination).
    host_port: Port,
    wrong_type: Option<u16>,
    op: u16,
    /// `None`: the payload's length.
    len: Option<u32>,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

impl Header {
    fn build(&self, payload_len: usize) -> PacketHeader {
        PacketHeader {
            src_cid: self.spoofed_src.unwrap_or(CID),
            dst_cid: self.wrong_dst.unwrap_or(HOST_CID),
            src_port: self.guest_port.value(),
            dst_port: self.host_port.value(),
            len: self.len.unwrap_or(payload_len as u32),
            type_: self.wrong_type.unwrap_or(TYPE_STREAM),
            // Mostly known operations, sometimes anything.
            op: if self.op < 0x8000 {
                self.op % 8
            } else {
                self.op
            },
            flags: self.flags,
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Guest {
        header: Header,
        payload: Vec<u8>,
    },
    /// The same data packet `times` times, to reach the buffer limits.
    GuestFlood {
        header: Header,
        len: u16,
        times: u8,
    },
    GuestRaw {
        header: [u8; HEADER_SIZE],
        payload: Vec<u8>,
    },
    HostConnect {
        line: Vec<u8>,
    },
    HostWrite {
        peer: u8,
        data: Vec<u8>,
        extra: u16,
    },
    HostShutdownWrite {
        peer: u8,
    },
    HostDrop {
        peer: u8,
    },
    HostRead {
        peer: u8,
    },
    /// One turn of the device's event loop over the ready sockets.
    Poll,
    /// The guest posts `count` RX buffers with `room` payload bytes each.
    ToGuest {
        room: u16,
        count: u8,
    },
}

struct Peer {
    stream: UnixStream,
    /// For connections the guest made: their muxer key.
    key: Option<Key>,
    write_closed: bool,
}

#[derive(Default)]
struct GuestView {
    /// The receive buffer the guest last announced per connection.
    buf_alloc: HashMap<Key, u32>,
    /// Connections the guest reset: control packets they still owed may
    /// reach the guest after a new connection took the same ports.
    reset: HashSet<Key>,
}

struct Harness {
    muxer: Muxer,
    peers: Vec<Peer>,
    guest: GuestView,
    payload: Vec<u8>,
}

impl Harness {
    fn peer(&mut self, index: u8) -> Option<&mut Peer> {
        let len = self.peers.len();
        (len > 0).then(|| &mut self.peers[usize::from(index) % len])
    }

    fn send_to_muxer(&mut self, header: &PacketHeader, payload: &[u8]) {
        // What the device hands over: at most the header's length.
        let wanted = (header.len as usize).min(MAX_PAYLOAD);
        let payload = &payload[..payload.len().min(wanted)];
        let valid = header.validate_from_guest(CID, payload.len()).is_ok();
        if valid {
            // What validation promises the muxer.
            let (src, dst, type_, op, len) = (
                header.src_cid,
                header.dst_cid,
                header.type_,
                header.op,
                header.len as usize,
            );
            assert_eq!((src, dst, type_), (CID, HOST_CID, TYPE_STREAM));
            assert!((OP_REQUEST..=OP_CREDIT_REQUEST).contains(&op));
            assert!(len <= payload.len() && len <= MAX_PAYLOAD);
            assert!(op == OP_RW || len == 0);
        }
        if valid {
            let key = (header.dst_port, header.src_port);
            self.guest.buf_alloc.insert(key, header.buf_alloc);
            if header.op == OP_RST {
                self.guest.reset.insert(key);
            }
        }
        let count_before = self.muxer.connection_count();
        self.muxer.on_guest_packet(header, payload);
        assert!(self.muxer.connection_count() <= MAX_CONNECTIONS);
        // A guest connection to the served port shows up at its listener.
        if valid && header.op == OP_REQUEST && self.muxer.connection_count() > count_before {
            let key = (header.dst_port, header.src_port);
            if let Ok((stream, _)) = fixture().served.accept() {
                stream.set_nonblocking(true).expect("non-blocking peer");
                for old in self.peers.iter_mut().filter(|p| p.key == Some(key)) {
                    old.key = None;
                }
                self.peers.push(Peer {
                    stream,
                    key: Some(key),
                    write_closed: false,
                });
            }
        }
    }

    fn poll(&mut self) {
        let interest = self.muxer.interest();
        let mut fds: Vec<libc::pollfd> = interest
            .iter()
            .map(|&(fd, read, write)| libc::pollfd {
                fd,
                events: (if read { libc::POLLIN } else { 0 })
                    | (if write { libc::POLLOUT } else { 0 }),
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd of that length.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
        if ready <= 0 {
            return;
        }
        for pollfd in fds.iter().filter(|p| p.revents != 0) {
            match self.muxer.owner_of(pollfd.fd) {
                Some(FdOwner::Listener) => self.muxer.accept(),
                Some(FdOwner::Handshake) => self.muxer.continue_handshake(pollfd.fd),
                Some(FdOwner::Connection(key)) => {
                    let readable =
                        pollfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
                    let writable = pollfd.revents & libc::POLLOUT != 0;
                    self.muxer.on_connection_ready(key, readable, writable);
                }
                None => {}
            }
        }
    }

    fn receive(&mut self, room: usize) -> Option<PacketHeader> {
        let (header, len) = self
            .muxer
            .next_packet_for_guest(&mut self.payload[..room])?;
        let (src, dst, type_, op, hlen) = (
            header.src_cid,
            header.dst_cid,
            header.type_,
            header.op,
            header.len,
        );
        assert_eq!(
            (src, dst, type_),
            (HOST_CID, CID, TYPE_STREAM),
            "{header:?}"
        );
        assert!((OP_REQUEST..=OP_CREDIT_REQUEST).contains(&op), "{header:?}");
        assert!(len <= room, "payload {len} beyond the buffer's {room}");
        assert_eq!(hlen as usize, len, "header length and payload differ");
        let key = (header.src_port, header.dst_port);
        if op == OP_RW {
            assert!(len > 0, "an empty data packet");
            let granted = self.guest.buf_alloc.get(&key).copied().unwrap_or(0);
            assert!(
                len as u32 <= granted,
                "{len} bytes beyond the guest's buffer of {granted}"
            );
        } else {
            assert_eq!(len, 0, "a control packet with a payload");
        }
        let stale_possible = self.guest.reset.contains(&key);
        if op == OP_SHUTDOWN && header.flags & SHUTDOWN_SEND != 0 && !stale_possible {
            if let Some(peer) = self.peers.iter().find(|p| p.key == Some(key)) {
                assert!(
                    peer.write_closed,
                    "end of stream for {key:?} while its host end is still open"
                );
            }
        }
        Some(header)
    }

    fn run(&mut self, op: Op) {
        match op {
            Op::Guest { header, payload } => {
                let header = header.build(payload.len());
                self.send_to_muxer(&header, &payload);
            }
            Op::GuestFlood { header, len, times } => {
                let payload = vec![0x5a; usize::from(len)];
                let header = header.build(payload.len());
                for _ in 0..times % 16 {
                    self.send_to_muxer(&header, &payload);
                }
            }
            Op::GuestRaw { header, payload } => {
                let header = *PacketHeader::from_slice(&header).expect("header-sized slice");
                self.send_to_muxer(&header, &payload);
            }
            Op::HostConnect { line } => {
                if let Ok(mut stream) = UnixStream::connect(&fixture().path) {
                    stream.set_nonblocking(true).expect("non-blocking client");
                    let _ = stream.write(&line);
                    self.peers.push(Peer {
                        stream,
                        key: None,
                        write_closed: false,
                    });
                }
            }
            Op::HostWrite { peer, data, extra } => {
                if let Some(peer) = self.peer(peer) {
                    let _ = peer.stream.write(&data);
                    let _ = peer.stream.write(&vec![0xa5; usize::from(extra)]);
                }
            }
            Op::HostShutdownWrite { peer } => {
                if let Some(peer) = self.peer(peer) {
                    let _ = peer.stream.shutdown(Shutdown::Write);
                    peer.write_closed = true;
                }
            }
            Op::HostDrop { peer } => {
                if !self.peers.is_empty() {
                    let index = usize::from(peer) % self.peers.len();
                    // Keep the record (its key) but close the socket.
                    let peer = &mut self.peers[index];
                    let _ = peer.stream.shutdown(Shutdown::Both);
                    peer.write_closed = true;
                }
            }
            Op::HostRead { peer } => {
                if let Some(peer) = self.peer(peer) {
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match peer.stream.read(&mut buf) {
                            Ok(0) => break,
                            Ok(_) => continue,
                            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                            Err(_) => break,
                        }
                    }
                }
            }
            Op::Poll => self.poll(),
            Op::ToGuest {
                room: requested,
                count,
            } => {
                let room = rx_room(requested);
                for _ in 0..count % 32 {
                    if !self.muxer.has_work_for_guest() || self.receive(room).is_none() {
                        break;
                    }
                }
            }
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let fixture = fixture();
    let muxer = Muxer::bind(CID, &fixture.path).expect("bind the muxer socket");
    let mut harness = Harness {
        muxer,
        peers: Vec::new(),
        guest: GuestView::default(),
        payload: vec![0u8; MAX_ROOM],
    };
    for op in ops.into_iter().take(MAX_OPS) {
        harness.run(op);
    }
    // Whatever is still owed must come out well formed too.
    for _ in 0..64 {
        harness.poll();
        if harness.receive(MAX_ROOM).is_none() {
            break;
        }
    }
    drop(harness);
    // Guest connections nobody took (the muxer accepted none itself).
    while fixture.served.accept().is_ok() {}
});
