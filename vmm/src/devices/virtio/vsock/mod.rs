//! virtio-vsock (device id 19) backed by host Unix sockets.

mod connection;
pub mod device;
pub mod muxer;
pub mod packet;
