//! The vnet header (`struct virtio_net_hdr_v1`, virtio 1.2 5.1.6) that
//! leads every frame, in the queues and on the tap alike: the tap is set
//! to the same 12-byte layout, so the header passes through. What the
//! guest writes is checked against the negotiated offloads before the
//! host kernel sees it; what the tap writes gets the one field the tap
//! leaves alone.

use super::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};

/// Its size with a virtio 1.x driver, with or without mergeable buffers.
pub const HEADER_LEN: usize = 12;

pub const FLAG_NEEDS_CSUM: u8 = 1;
pub const FLAG_DATA_VALID: u8 = 2;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_TCPV6: u8 = 4;

// Offsets of the fields.
const FLAGS: usize = 0;
const GSO_TYPE: usize = 1;
const NUM_BUFFERS: usize = 10;

// The tap's offload flags (linux/if_tun.h).
pub const TUN_F_CSUM: u32 = 0x01;
pub const TUN_F_TSO4: u32 = 0x02;
pub const TUN_F_TSO6: u32 = 0x04;

/// Checks and tidies the header of a frame the guest sends: an offload
/// the device did not agree to is refused (None: the frame is dropped),
/// the RX-only flag and field are cleared.
pub fn check_tx(header: &[u8; HEADER_LEN], features: u64) -> Option<[u8; HEADER_LEN]> {
    let mut out = *header;
    let flags = header[FLAGS] & !FLAG_DATA_VALID;
    if flags & !FLAG_NEEDS_CSUM != 0 {
        return None;
    }
    let csum = features & VIRTIO_NET_F_CSUM != 0;
    if flags & FLAG_NEEDS_CSUM != 0 && !csum {
        return None;
    }
    let allowed = match header[GSO_TYPE] {
        GSO_NONE => true,
        GSO_TCPV4 => csum && features & VIRTIO_NET_F_HOST_TSO4 != 0,
        GSO_TCPV6 => csum && features & VIRTIO_NET_F_HOST_TSO6 != 0,
        // UDP, ECN and anything unknown were never offered.
        _ => false,
    };
    if !allowed {
        return None;
    }
    out[FLAGS] = flags;
    out[NUM_BUFFERS..].fill(0);
    Some(out)
}

/// Completes the header of a frame read from the tap for the guest: the
/// tap writes the first 10 bytes; without mergeable buffers every frame
/// is in one buffer.
pub fn finish_rx(header: &mut [u8]) {
    if let Some(field) = header.get_mut(NUM_BUFFERS..HEADER_LEN) {
        field.copy_from_slice(&1u16.to_le_bytes());
    }
}

/// The offloads to ask of the tap for a guest that accepted `features`:
/// what the tap may hand over unsegmented, or with a partial checksum.
/// Segments need the checksum offload too, whatever a driver accepted.
pub fn tap_offloads(features: u64) -> u32 {
    if features & VIRTIO_NET_F_GUEST_CSUM == 0 {
        return 0;
    }
    let mut flags = TUN_F_CSUM;
    if features & VIRTIO_NET_F_GUEST_TSO4 != 0 {
        flags |= TUN_F_TSO4;
    }
    if features & VIRTIO_NET_F_GUEST_TSO6 != 0 {
        flags |= TUN_F_TSO6;
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::super::OFFLOADS;
    use super::*;

    fn header(flags: u8, gso: u8) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[FLAGS] = flags;
        h[GSO_TYPE] = gso;
        h[2..4].copy_from_slice(&54u16.to_le_bytes());
        h[NUM_BUFFERS] = 7;
        h
    }

    #[test]
    fn offloads_pass_only_when_negotiated() {
        let tso = header(FLAG_NEEDS_CSUM, GSO_TCPV4);
        let checked = check_tx(&tso, OFFLOADS).unwrap();
        assert_eq!(&checked[..NUM_BUFFERS], &tso[..NUM_BUFFERS]);
        assert_eq!(&checked[NUM_BUFFERS..], &[0, 0]);
        assert!(check_tx(&tso, VIRTIO_NET_F_CSUM).is_none());
        assert!(check_tx(&tso, VIRTIO_NET_F_HOST_TSO4).is_none());
        assert!(check_tx(&header(FLAG_NEEDS_CSUM, GSO_NONE), 0).is_none());
        assert!(check_tx(&header(0, GSO_TCPV6), OFFLOADS & !VIRTIO_NET_F_HOST_TSO6).is_none());
        assert!(check_tx(&header(0, GSO_NONE), 0).is_some());
    }

    #[test]
    fn unknown_flags_and_gso_types_are_refused() {
        for gso in [2, 3, 5, 0x80, 0x81, 0xff] {
            assert!(check_tx(&header(0, gso), OFFLOADS).is_none(), "{gso}");
        }
        assert!(check_tx(&header(4, GSO_NONE), OFFLOADS).is_none());
        // DATA_VALID means nothing on transmit: cleared.
        let checked = check_tx(&header(FLAG_DATA_VALID, GSO_NONE), 0).unwrap();
        assert_eq!(checked[FLAGS], 0);
    }

    #[test]
    fn rx_headers_say_one_buffer() {
        let mut h = [0xffu8; HEADER_LEN];
        finish_rx(&mut h);
        assert_eq!(&h[NUM_BUFFERS..], &[1, 0]);
        let mut short = [0u8; 4];
        finish_rx(&mut short);
        assert_eq!(short, [0; 4]);
    }

    #[test]
    fn the_tap_segments_only_with_the_checksum_offload() {
        assert_eq!(tap_offloads(OFFLOADS), TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
        assert_eq!(tap_offloads(VIRTIO_NET_F_GUEST_TSO4), 0);
        assert_eq!(
            tap_offloads(VIRTIO_NET_F_GUEST_CSUM | VIRTIO_NET_F_GUEST_TSO6),
            TUN_F_CSUM | TUN_F_TSO6
        );
        assert_eq!(tap_offloads(0), 0);
    }
}
