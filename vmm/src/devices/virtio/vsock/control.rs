//! Control packets for the guest that belong to no live connection: the
//! RSTs answering packets for unknown connections and refused requests,
//! and the last RST of a connection already dropped.
//!
//! They wait here until the guest posts an RX buffer. A guest that floods
//! TX with requests while posting none would grow this without end, so it
//! is bounded: past [`MAX_LOOSE`] the oldest packet is dropped (as
//! Firecracker's muxer drops RSTs when its RX queue overflows). Losing one
//! is harmless: the guest's connect or close waits for its own timeout
//! instead, and a guest that behaves (Linux refills RX as it reads) never
//! gets near the cap, one RX ring of them.

use std::collections::VecDeque;

use super::packet::PacketHeader;

/// One full RX ring of control packets.
pub const MAX_LOOSE: usize = 256;

#[derive(Default)]
pub struct ControlQueue {
    packets: VecDeque<PacketHeader>,
}

impl ControlQueue {
    /// Queues `header` unless the same packet is already waiting (a repeated
    /// request gets one answer); drops the oldest when full.
    pub fn push(&mut self, header: PacketHeader) {
        if self.packets.contains(&header) {
            return;
        }
        if self.packets.len() >= MAX_LOOSE {
            self.packets.pop_front();
        }
        self.packets.push_back(header);
    }

    pub fn pop(&mut self) -> Option<PacketHeader> {
        self.packets.pop_front()
    }

    pub fn len(&self) -> usize {
        self.packets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::vsock::packet::OP_RST;

    fn rst(port: u32) -> PacketHeader {
        PacketHeader::to_guest(3, 1234, port, OP_RST)
    }

    #[test]
    fn the_queue_keeps_the_newest_packets_up_to_its_cap() {
        let mut queue = ControlQueue::default();
        for port in 0..(MAX_LOOSE as u32 + 10) {
            queue.push(rst(port));
        }
        assert_eq!(queue.len(), MAX_LOOSE);
        assert_eq!({ queue.pop().unwrap().dst_port }, 10);
    }

    #[test]
    fn a_repeated_packet_is_queued_once() {
        let mut queue = ControlQueue::default();
        queue.push(rst(7));
        queue.push(rst(7));
        assert_eq!(queue.len(), 1);
    }
}
