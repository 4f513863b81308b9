//! A read-only virtio-blk device (virtio 1.2, section 5.2) backed by a
//! host file: the guest's root file system, read on demand.
//!
//! [`disk`] is the backing image and the configuration space, [`request`]
//! turns a descriptor chain from the (untrusted) driver into a completed
//! request, and [`device`] is the virtio device and its worker thread.

pub mod device;
pub mod disk;
pub mod request;

pub use device::Block;
pub use disk::DiskImage;

/// virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;

/// The largest size of any single data segment.
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1 << 1;
/// The largest number of data segments in a request.
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 1 << 6;
/// used_event / avail_event suppression of interrupts and notifications.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Bytes per sector, whatever `blk_size` says: the unit of `capacity` and
/// of a request's `sector`.
pub const SECTOR_SIZE: u64 = 512;
/// The guest's logical block size. 512 rather than 4096: a small ext4
/// image has 1 KiB blocks, which a 4 KiB logical block size would refuse.
pub const BLOCK_SIZE: u32 = 512;

/// One queue, room for two requests of [`SEG_MAX`] segments (there are no
/// indirect descriptors: each segment takes a descriptor, plus header and
/// status). (64 slots and 32 segments cost the guest's probe the same.)
pub const QUEUE_SIZE: u16 = 256;
pub const SEG_MAX: u32 = 126;
pub const SIZE_MAX: u32 = 128 * 1024;
/// The most data a driver that honours `seg_max` and `size_max` can put in
/// one request; anything longer is malformed.
pub const MAX_REQUEST_BYTES: u64 = SEG_MAX as u64 * SIZE_MAX as u64;

/// What `VIRTIO_BLK_T_GET_ID` returns: up to 20 bytes, NUL-padded.
pub const ID_BYTES: usize = 20;
pub const DISK_ID: &[u8] = b"runvm-root";
const _: () = assert!(DISK_ID.len() <= ID_BYTES);
