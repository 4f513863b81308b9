//! virtio-net (device id 1, virtio 1.2 section 5.1) backed by a tap.
//!
//! - [`backend`]: where frames go and come from: a tap opened by the VMM
//!   (or handed in as a descriptor) before it enters its jail, or, in
//!   tests, one end of a socket pair.
//! - [`frames`]: moving frames between the queues and the backend, with
//!   every guest-supplied descriptor checked and nothing buffered but the
//!   one frame the guest has no room for yet. Generic over the backend.
//! - [`header`]: the vnet header the guest and the tap share, checked
//!   against what was negotiated.
//! - [`device`]: the virtio device, its configuration space and its thread.
//! - [`pending`]: a VM template's card, which gets its tap when restored.

pub mod backend;
pub mod device;
pub mod frames;
pub mod header;
pub mod pending;
pub mod spec;

#[cfg(test)]
mod hostile_guest_tests;

pub use backend::{Backend, Tap};
pub use device::{Net, NetOptions};
pub use pending::PendingNet;
pub use spec::{NetConfig, TapSource};

/// virtio device id of a network card.
pub const VIRTIO_ID_NET: u32 = 1;

// Feature bits (virtio 1.2, 5.1.3).
/// The device takes frames with a partial checksum (the guest offloads).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
/// The driver takes frames with a partial checksum.
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
pub const VIRTIO_NET_F_MTU: u64 = 1 << 3;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// The offloads: the tap passes the vnet header through, so the host
/// kernel segments and checksums what the guest hands over, and hands the
/// guest large segments it would otherwise have cut to the MTU. A TCP
/// stream then costs one frame per 64 KiB instead of per 1.5 KiB, and on
/// a host that emulates guest code every frame is dear. UFO and ECN are
/// not offered: Linux no longer sends UFO, and ECN needs TSO_ECN in the
/// tap, which is not asked for.
pub const OFFLOADS: u64 = VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6;

/// Size of each queue. Without mergeable RX buffers a Linux driver that
/// takes TSO posts each RX buffer as a chain of 19 descriptors (64 KiB in
/// pages); 256 gives it 13 such buffers.
pub const QUEUE_SIZE: u16 = 256;

/// The largest Ethernet frame: a 64 KiB IP packet (what GSO builds) with
/// an Ethernet header and a VLAN tag.
pub const MAX_PACKET: usize = 65535 + 14 + 4;
/// Ethernet header: a frame shorter than this is no frame.
pub const ETH_HEADER: usize = 14;
/// The largest MTU: an IP packet cannot be longer.
pub const MAX_MTU: u16 = 65535;
/// IPv4's minimum.
pub const MIN_MTU: u16 = 68;

/// `struct virtio_net_config` up to `mtu`: mac, status, max queue pairs
/// (neither offered: zero), mtu; little-endian.
pub const CONFIG_SIZE: usize = 12;

pub fn config_space(mac: Option<[u8; 6]>, mtu: Option<u16>) -> [u8; CONFIG_SIZE] {
    let mut config = [0u8; CONFIG_SIZE];
    if let Some(mac) = mac {
        config[0..6].copy_from_slice(&mac);
    }
    if let Some(mtu) = mtu {
        config[10..12].copy_from_slice(&mtu.to_le_bytes());
    }
    config
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A MAC a card may have: unicast (bit 0 of the first byte clear) and
/// not all zeroes.
pub fn is_unicast(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && mac.iter().any(|&b| b != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_parse_only_in_their_one_form() {
        assert_eq!(
            parse_mac("02:0a:FF:00:10:9c"),
            Some([2, 10, 255, 0, 16, 0x9c])
        );
        for bad in [
            "",
            "02:0a:ff:00:10",
            "02:0a:ff:00:10:9c:01",
            "2:0a:ff:00:10:9c",
            "0x:0a:ff:00:10:9c",
            "02-0a-ff-00-10-9c",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
        assert!(is_unicast(&[2, 0, 0, 0, 0, 1]));
        assert!(!is_unicast(&[1, 0, 0, 0, 0, 1]));
        assert!(!is_unicast(&[0; 6]));
    }

    #[test]
    fn config_space_holds_mac_and_mtu() {
        let config = config_space(Some([2, 1, 2, 3, 4, 5]), Some(1450));
        assert_eq!(&config[0..6], &[2, 1, 2, 3, 4, 5]);
        assert_eq!(&config[6..10], &[0; 4]);
        assert_eq!(u16::from_le_bytes([config[10], config[11]]), 1450);
        assert_eq!(config_space(None, None), [0; CONFIG_SIZE]);
    }
}
