//! One stream connection between a guest port and a host Unix socket:
//! its state, its credit accounting in both directions, and the control
//! packets it owes the guest. All I/O is non-blocking.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::packet::*;

/// Bytes of guest data the host side buffers per connection when the host
/// socket is slow; also the credit the guest is given.
/// A fixed cap, whatever the guest does: more than this buffered resets
/// the connection, since the guest was never given the credit for it.
pub const HOST_BUFFER_SIZE: u32 = 256 * 1024;
/// Most control packets one connection can owe the guest at once.
pub const MAX_OWED: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    AwaitingResponse,
    Established,
}

/// What the muxer should do with the connection after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// Forget it; any RST owed has already been queued.
    Close,
}

pub struct Connection {
    pub stream: UnixStream,
    pub host_port: u32,
    pub guest_port: u32,
    pub state: State,
    /// Opened by the guest (to a `<path>_<port>` socket), not by a host
    /// client; these have their own, smaller cap.
    pub guest_initiated: bool,
    /// Guest data the host socket has not taken yet.
    to_host: VecDeque<u8>,
    /// Bytes of guest data handed to the host socket.
    forwarded: Wrapping<u32>,
    /// `forwarded` as last told to the guest.
    forwarded_announced: Wrapping<u32>,
    /// The guest's receive buffer and how much of our data it consumed.
    peer_buf_alloc: u32,
    peer_forwarded: Wrapping<u32>,
    /// Bytes of host data sent to the guest.
    sent_to_guest: Wrapping<u32>,
    /// The host socket reached end of file; the guest was told.
    host_eof: bool,
    guest_done_sending: bool,
    guest_done_receiving: bool,
    /// Control packets owed to the guest, oldest first.
    owed: VecDeque<(u16, u32)>,
}

impl Connection {
    pub fn new(stream: UnixStream, host_port: u32, guest_port: u32, state: State) -> Connection {
        Connection {
            stream,
            host_port,
            guest_port,
            state,
            guest_initiated: false,
            to_host: VecDeque::new(),
            forwarded: Wrapping(0),
            forwarded_announced: Wrapping(0),
            peer_buf_alloc: 0,
            peer_forwarded: Wrapping(0),
            sent_to_guest: Wrapping(0),
            host_eof: false,
            guest_done_sending: false,
            guest_done_receiving: false,
            owed: VecDeque::new(),
        }
    }

    /// Queues a control packet (REQUEST, RESPONSE, SHUTDOWN, RST, ...) for
    /// the guest. A guest that never posts RX buffers must not grow this
    /// queue, however many packets it sends, so owed packets coalesce:
    /// one credit update stands for any number (it carries the credit of
    /// the moment it is sent), SHUTDOWN flags merge, nothing follows an
    /// RST. The queue thus never holds more than [`MAX_OWED`] packets.
    pub fn owe(&mut self, op: u16, flags: u32) {
        if self.is_resetting() {
            return;
        }
        if op == OP_RST {
            self.owed.clear();
        } else if op == OP_CREDIT_UPDATE && self.owed.iter().any(|(o, _)| *o == op) {
            return;
        } else if let Some(pending) = self
            .owed
            .iter_mut()
            .find(|(o, _)| *o == op && op == OP_SHUTDOWN)
        {
            pending.1 |= flags;
            return;
        }
        if self.owed.len() >= MAX_OWED {
            // Unreachable by the rules above (REQUEST or RESPONSE, SHUTDOWN,
            // CREDIT_UPDATE); kept as the bound's last line.
            self.owed.pop_front();
        }
        self.owed.push_back((op, flags));
    }

    /// Control packets waiting for an RX buffer.
    pub fn owed_count(&self) -> usize {
        self.owed.len()
    }

    /// Every packet from the guest tells its current receive credit.
    pub fn update_guest_credit(&mut self, header: &PacketHeader) {
        self.peer_buf_alloc = header.buf_alloc;
        self.peer_forwarded = Wrapping(header.fwd_cnt);
    }

    /// Acts on a validated packet from the guest for this connection.
    pub fn on_guest_packet(&mut self, header: &PacketHeader, payload: &[u8]) -> Verdict {
        self.update_guest_credit(header);
        match (header.op, self.state) {
            (OP_RESPONSE, State::AwaitingResponse) => {
                self.state = State::Established;
                // The hybrid-vsock handshake's answer; a fresh socket always
                // has room for it.
                let reply = format!("OK {}\n", self.host_port);
                match self.stream.write_all(reply.as_bytes()) {
                    Ok(()) => Verdict::Keep,
                    Err(_) => self.reset(),
                }
            }
            (OP_RW, State::Established) if !self.guest_done_sending => {
                let buffered = self.to_host.len() + payload.len();
                if buffered > HOST_BUFFER_SIZE as usize {
                    // The guest sent beyond the credit it was given.
                    return self.reset();
                }
                self.to_host.extend(payload);
                self.flush_to_host()
            }
            (OP_CREDIT_REQUEST, State::Established) => {
                self.owe(OP_CREDIT_UPDATE, 0);
                Verdict::Keep
            }
            (OP_CREDIT_UPDATE, State::Established) => Verdict::Keep,
            (OP_SHUTDOWN, State::Established) => {
                self.guest_done_sending |= header.flags & SHUTDOWN_SEND != 0;
                self.guest_done_receiving |= header.flags & SHUTDOWN_RCV != 0;
                // A full close is confirmed with RST once every byte the
                // guest sent has reached the host socket (flush_to_host).
                self.flush_to_host()
            }
            (OP_RST, _) => {
                // The guest has forgotten the connection: nothing owed to
                // it is news any more.
                self.owed.clear();
                Verdict::Close
            }
            // Anything else (a REQUEST on a live connection, data before
            // the handshake finished) breaks the protocol.
            _ => self.reset(),
        }
    }

    /// Queues an RST and drops the connection.
    fn reset(&mut self) -> Verdict {
        self.owe(OP_RST, 0);
        Verdict::Close
    }

    /// Writes buffered guest data to the host socket, as much as it takes.
    pub fn flush_to_host(&mut self) -> Verdict {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match self.stream.write(front) {
                Ok(0) => return self.reset(),
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.forwarded += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.reset(),
            }
        }
        if self.to_host.is_empty() && self.guest_done_sending {
            let _ = self.stream.shutdown(Shutdown::Write);
            if self.guest_done_receiving {
                // Fully closed by the guest and all handed over: confirm
                // with RST so it can free its socket.
                return self.reset();
            }
        }
        if self.guest_credit_is_low() {
            self.owe(OP_CREDIT_UPDATE, 0);
        }
        Verdict::Keep
    }

    /// Whether the guest's idea of our free buffer space has fallen below
    /// half, so it may stall waiting for credit.
    fn guest_credit_is_low(&self) -> bool {
        let sent_by_guest = self.forwarded + Wrapping(self.to_host.len() as u32);
        let in_use_as_guest_sees_it = (sent_by_guest - self.forwarded_announced).0;
        self.forwarded != self.forwarded_announced && in_use_as_guest_sees_it > HOST_BUFFER_SIZE / 2
    }

    pub fn has_data_for_host(&self) -> bool {
        !self.to_host.is_empty()
    }

    /// Bytes the guest can take now.
    pub fn guest_credit(&self) -> u32 {
        let in_flight = (self.sent_to_guest - self.peer_forwarded).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether reading the host socket could produce a packet.
    pub fn wants_host_data(&self) -> bool {
        self.state == State::Established
            && !self.host_eof
            && !self.guest_done_receiving
            && self.guest_credit() > 0
    }

    pub fn has_owed_packets(&self) -> bool {
        !self.owed.is_empty()
    }

    /// The next control packet owed to the guest, if any.
    pub fn next_owed(&mut self, guest_cid: u64) -> Option<PacketHeader> {
        let (op, flags) = self.owed.pop_front()?;
        let mut header = self.header(guest_cid, op);
        header.flags = flags;
        Some(header)
    }

    /// Reads host data for the guest into `payload`, within the guest's
    /// credit. `None` when nothing can be read now; end of file turns into
    /// an owed SHUTDOWN.
    pub fn read_for_guest(
        &mut self,
        guest_cid: u64,
        payload: &mut [u8],
    ) -> Option<(PacketHeader, usize)> {
        if !self.wants_host_data() {
            return None;
        }
        let limit = payload.len().min(self.guest_credit() as usize);
        // No room (a header-only RX buffer): reading zero bytes would look
        // like the host's end of file.
        if limit == 0 {
            return None;
        }
        loop {
            match self.stream.read(&mut payload[..limit]) {
                Ok(0) => {
                    self.host_eof = true;
                    // Half-close: the guest may still send.
                    self.owe(OP_SHUTDOWN, SHUTDOWN_SEND);
                    return None;
                }
                Ok(n) => {
                    self.sent_to_guest += Wrapping(n as u32);
                    let mut header = self.header(guest_cid, OP_RW);
                    header.len = n as u32;
                    return Some((header, n));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return None,
                Err(_) => {
                    self.reset();
                    return None;
                }
            }
        }
    }

    /// Every packet to the guest carries our current credit.
    fn header(&mut self, guest_cid: u64, op: u16) -> PacketHeader {
        let mut header = PacketHeader::to_guest(guest_cid, self.host_port, self.guest_port, op);
        header.buf_alloc = HOST_BUFFER_SIZE;
        header.fwd_cnt = self.forwarded.0;
        self.forwarded_announced = self.forwarded;
        header
    }

    /// True once an RST is owed: the muxer drops the connection after
    /// sending it.
    pub fn is_resetting(&self) -> bool {
        self.owed.back().is_some_and(|(op, _)| *op == OP_RST)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CID: u64 = 3;

    fn established() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut connection = Connection::new(ours, 1024, 52, State::Established);
        connection.on_guest_packet(&guest(OP_CREDIT_UPDATE, 0, 0), &[]);
        (connection, theirs)
    }

    fn guest(op: u16, flags: u32, fwd_cnt: u32) -> PacketHeader {
        PacketHeader {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port: 52,
            dst_port: 1024,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: 4096,
            fwd_cnt,
            ..Default::default()
        }
    }

    #[test]
    fn guest_data_reaches_the_host_socket() {
        let (mut c, mut host) = established();
        let mut header = guest(OP_RW, 0, 0);
        header.len = 5;
        assert_eq!(c.on_guest_packet(&header, b"hello"), Verdict::Keep);
        let mut buf = [0u8; 5];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn host_data_is_bounded_by_the_guest_credit() {
        let (mut c, mut host) = established();
        host.write_all(&[7u8; 10_000]).unwrap();
        let mut payload = vec![0u8; 65536];
        let (header, n) = c.read_for_guest(CID, &mut payload).unwrap();
        assert_eq!(n, 4096, "the guest advertised 4096 bytes of buffer");
        assert_eq!({ header.len }, 4096);
        assert_eq!(c.guest_credit(), 0);
        assert!(c.read_for_guest(CID, &mut payload).is_none());
        // The guest consumed it all: credit is back.
        c.on_guest_packet(&guest(OP_CREDIT_UPDATE, 0, 4096), &[]);
        assert_eq!(c.read_for_guest(CID, &mut payload).unwrap().1, 4096);
    }

    #[test]
    fn a_guest_rst_drops_what_was_owed_to_it() {
        let (mut c, _host) = established();
        c.on_guest_packet(&guest(OP_CREDIT_REQUEST, 0, 0), &[]);
        assert!(c.has_owed_packets());
        assert_eq!(c.on_guest_packet(&guest(OP_RST, 0, 0), &[]), Verdict::Close);
        assert!(c.next_owed(CID).is_none(), "nothing for a reset connection");
    }

    #[test]
    fn a_buffer_without_room_is_not_the_hosts_end_of_file() {
        let (mut c, mut host) = established();
        host.write_all(b"hi").unwrap();
        assert!(c.read_for_guest(CID, &mut []).is_none());
        assert!(!c.has_owed_packets(), "no SHUTDOWN for an open host end");
        let mut payload = [0u8; 16];
        assert_eq!(c.read_for_guest(CID, &mut payload).unwrap().1, 2);
    }

    #[test]
    fn host_eof_becomes_a_half_close() {
        let (mut c, host) = established();
        drop(host);
        let mut payload = [0u8; 16];
        assert!(c.read_for_guest(CID, &mut payload).is_none());
        let shutdown = c.next_owed(CID).unwrap();
        assert_eq!(
            ({ shutdown.op }, { shutdown.flags }),
            (OP_SHUTDOWN, SHUTDOWN_SEND)
        );
        assert!(!c.wants_host_data());
    }

    #[test]
    fn a_full_shutdown_from_the_guest_is_confirmed_with_rst() {
        let (mut c, _host) = established();
        let verdict = c.on_guest_packet(&guest(OP_SHUTDOWN, SHUTDOWN_SEND | SHUTDOWN_RCV, 0), &[]);
        assert_eq!(verdict, Verdict::Close);
        assert_eq!({ c.next_owed(CID).unwrap().op }, OP_RST);
    }

    #[test]
    fn a_full_shutdown_waits_for_a_slow_host_reader() {
        let (mut c, mut host) = established();
        // More than a Unix socket buffer holds, so some stays queued.
        let chunk: Vec<u8> = (0..MAX_PAYLOAD).map(|i| i as u8).collect();
        let mut header = guest(OP_RW, 0, 0);
        header.len = MAX_PAYLOAD as u32;
        let mut sent = Vec::new();
        while !c.has_data_for_host() {
            assert_eq!(c.on_guest_packet(&header, &chunk), Verdict::Keep);
            sent.extend_from_slice(&chunk);
        }
        let full = guest(OP_SHUTDOWN, SHUTDOWN_SEND | SHUTDOWN_RCV, 0);
        assert_eq!(c.on_guest_packet(&full, &[]), Verdict::Keep);
        // Credit updates may be owed; an RST may not, yet.
        while let Some(owed) = c.next_owed(CID) {
            assert_ne!({ owed.op }, OP_RST, "no RST while data is still queued");
        }

        let mut received = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let verdict = loop {
            let n = host.read(&mut buf).unwrap();
            received.extend_from_slice(&buf[..n]);
            let verdict = c.flush_to_host();
            if verdict == Verdict::Close {
                break verdict;
            }
        };
        assert_eq!(verdict, Verdict::Close);
        assert!(c.is_resetting());
        host.read_to_end(&mut received).unwrap();
        assert_eq!(received.len(), sent.len());
        assert!(received == sent, "the bytes arrive unchanged and in order");
    }

    #[test]
    fn guest_half_close_shuts_the_host_socket_for_writing() {
        let (mut c, mut host) = established();
        c.on_guest_packet(&guest(OP_SHUTDOWN, SHUTDOWN_SEND, 0), &[]);
        let mut rest = Vec::new();
        host.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn data_beyond_the_granted_credit_resets() {
        let (mut c, _host) = established();
        // Fill the host socket so nothing drains, then overrun the buffer.
        let chunk = vec![0u8; MAX_PAYLOAD];
        let mut header = guest(OP_RW, 0, 0);
        header.len = MAX_PAYLOAD as u32;
        let mut verdict = Verdict::Keep;
        for _ in 0..64 {
            verdict = c.on_guest_packet(&header, &chunk);
            if verdict == Verdict::Close {
                break;
            }
        }
        assert_eq!(verdict, Verdict::Close);
        assert!(c.is_resetting());
    }

    #[test]
    fn credit_request_is_answered() {
        let (mut c, _host) = established();
        c.on_guest_packet(&guest(OP_CREDIT_REQUEST, 0, 0), &[]);
        let update = c.next_owed(CID).unwrap();
        assert_eq!({ update.op }, OP_CREDIT_UPDATE);
        assert_eq!({ update.buf_alloc }, HOST_BUFFER_SIZE);
    }

    #[test]
    fn owed_control_packets_coalesce_whatever_the_guest_sends() {
        let (mut c, _host) = established();
        for _ in 0..1000 {
            c.on_guest_packet(&guest(OP_CREDIT_REQUEST, 0, 0), &[]);
        }
        assert_eq!(c.owed_count(), 1, "one credit update answers them all");
        c.owe(OP_SHUTDOWN, SHUTDOWN_SEND);
        c.owe(OP_SHUTDOWN, SHUTDOWN_RCV);
        assert_eq!(c.owed_count(), 2);
        assert_eq!({ c.next_owed(CID).unwrap().op }, OP_CREDIT_UPDATE);
        let shutdown = c.next_owed(CID).unwrap();
        assert_eq!({ shutdown.flags }, SHUTDOWN_SEND | SHUTDOWN_RCV);
        c.owe(OP_CREDIT_UPDATE, 0);
        c.owe(OP_RST, 0);
        c.owe(OP_CREDIT_UPDATE, 0);
        assert_eq!(c.owed_count(), 1, "an RST replaces and ends the queue");
        assert!(c.is_resetting());
    }

    #[test]
    fn response_completes_a_host_initiated_handshake() {
        let (ours, mut host) = UnixStream::pair().unwrap();
        let mut c = Connection::new(ours, 1025, 52, State::AwaitingResponse);
        assert_eq!(
            c.on_guest_packet(&guest(OP_RESPONSE, 0, 0), &[]),
            Verdict::Keep
        );
        assert_eq!(c.state, State::Established);
        let mut line = [0u8; 8];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1025\n");
    }

    #[test]
    fn data_before_the_handshake_resets() {
        let (ours, _host) = UnixStream::pair().unwrap();
        let mut c = Connection::new(ours, 1025, 52, State::AwaitingResponse);
        let mut header = guest(OP_RW, 0, 0);
        header.len = 1;
        assert_eq!(c.on_guest_packet(&header, b"x"), Verdict::Close);
    }
}
