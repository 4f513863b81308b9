//! The virtio-vsock packet header (virtio 1.2, section 5.10.6) and the
//! checks every packet from the guest passes before the VMM acts on it.

use vm_memory::ByteValued;

/// The host's address; the guest's comes from the device configuration.
pub const HOST_CID: u64 = 2;
/// Lowest CID a guest may have (0-2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

pub const HEADER_SIZE: usize = std::mem::size_of::<PacketHeader>();
/// Largest payload accepted from the guest in one packet (Linux sends at
/// most 64 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// On the wire, little-endian; this VMM runs on x86_64 only.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketHeader {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

// SAFETY: plain integers, packed, no padding: every bit pattern is valid.
unsafe impl ByteValued for PacketHeader {}

const _: () = assert!(HEADER_SIZE == 44);

/// Why a packet from the guest was not acted upon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PacketError {
    /// The descriptor chain is shorter than a header.
    Truncated,
    /// `len` is larger than [`MAX_PAYLOAD`] or than the bytes supplied.
    BadLength(u32),
    /// Only stream sockets exist.
    UnsupportedType(u16),
    UnknownOp(u16),
    /// The guest claimed an address other than its own.
    SpoofedSource(u64),
    /// Packets go to the host only.
    NotForHost(u64),
}

impl std::fmt::Display for PacketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PacketError::Truncated => write!(f, "descriptor chain shorter than a packet header"),
            PacketError::BadLength(len) => write!(f, "bad payload length {len}"),
            PacketError::UnsupportedType(t) => write!(f, "unsupported socket type {t}"),
            PacketError::UnknownOp(op) => write!(f, "unknown operation {op}"),
            PacketError::SpoofedSource(cid) => write!(f, "source CID {cid} is not the guest's"),
            PacketError::NotForHost(cid) => write!(f, "destination CID {cid} is not the host"),
        }
    }
}

impl PacketHeader {
    /// Checks a header the guest sent, given the payload bytes that came
    /// with it.
    pub fn validate_from_guest(
        &self,
        guest_cid: u64,
        payload_available: usize,
    ) -> Result<(), PacketError> {
        let (src_cid, dst_cid, len, type_, op) =
            (self.src_cid, self.dst_cid, self.len, self.type_, self.op);
        if src_cid != guest_cid {
            return Err(PacketError::SpoofedSource(src_cid));
        }
        if dst_cid != HOST_CID {
            return Err(PacketError::NotForHost(dst_cid));
        }
        if type_ != TYPE_STREAM {
            return Err(PacketError::UnsupportedType(type_));
        }
        if !(OP_REQUEST..=OP_CREDIT_REQUEST).contains(&op) {
            return Err(PacketError::UnknownOp(op));
        }
        let len_usize = len as usize;
        if len_usize > MAX_PAYLOAD || len_usize > payload_available || (op != OP_RW && len != 0) {
            return Err(PacketError::BadLength(len));
        }
        Ok(())
    }

    /// A reply header from the host side of a connection to the guest.
    pub fn to_guest(guest_cid: u64, host_port: u32, guest_port: u32, op: u16) -> PacketHeader {
        PacketHeader {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: host_port,
            dst_port: guest_port,
            type_: TYPE_STREAM,
            op,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_guest(op: u16, len: u32) -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 52,
            len,
            type_: TYPE_STREAM,
            op,
            ..Default::default()
        }
    }

    #[test]
    fn a_well_formed_packet_passes() {
        assert_eq!(from_guest(OP_RW, 10).validate_from_guest(3, 10), Ok(()));
        assert_eq!(from_guest(OP_REQUEST, 0).validate_from_guest(3, 0), Ok(()));
    }

    #[test]
    fn lengths_are_checked_against_the_limit_and_the_chain() {
        assert_eq!(
            from_guest(OP_RW, 11).validate_from_guest(3, 10),
            Err(PacketError::BadLength(11))
        );
        let huge = MAX_PAYLOAD as u32 + 1;
        assert_eq!(
            from_guest(OP_RW, huge).validate_from_guest(3, usize::MAX),
            Err(PacketError::BadLength(huge))
        );
        assert_eq!(
            from_guest(OP_REQUEST, 4).validate_from_guest(3, 4),
            Err(PacketError::BadLength(4))
        );
    }

    #[test]
    fn addresses_types_and_ops_are_checked() {
        assert_eq!(
            from_guest(OP_RW, 0).validate_from_guest(4, 0),
            Err(PacketError::SpoofedSource(3))
        );
        let mut to_other_guest = from_guest(OP_RW, 0);
        to_other_guest.dst_cid = 5;
        assert_eq!(
            to_other_guest.validate_from_guest(3, 0),
            Err(PacketError::NotForHost(5))
        );
        let mut dgram = from_guest(OP_RW, 0);
        dgram.type_ = 3;
        assert_eq!(
            dgram.validate_from_guest(3, 0),
            Err(PacketError::UnsupportedType(3))
        );
        assert_eq!(
            from_guest(0, 0).validate_from_guest(3, 0),
            Err(PacketError::UnknownOp(0))
        );
        assert_eq!(
            from_guest(8, 0).validate_from_guest(3, 0),
            Err(PacketError::UnknownOp(8))
        );
    }

    #[test]
    fn header_bytes_are_little_endian_in_field_order() {
        let header = PacketHeader::to_guest(3, 1024, 52, OP_RESPONSE);
        let bytes = header.as_slice();
        assert_eq!(bytes.len(), 44);
        assert_eq!(&bytes[0..8], &2u64.to_le_bytes());
        assert_eq!(&bytes[8..16], &3u64.to_le_bytes());
        assert_eq!(&bytes[16..20], &1024u32.to_le_bytes());
        assert_eq!(&bytes[30..32], &OP_RESPONSE.to_le_bytes());
    }
}
