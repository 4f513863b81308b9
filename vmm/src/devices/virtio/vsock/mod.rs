//! virtio-vsock (device id 19) backed by host Unix sockets.

mod connection;
pub mod muxer;
pub mod packet;
