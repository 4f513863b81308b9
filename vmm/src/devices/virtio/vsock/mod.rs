//! virtio-vsock (device id 19) backed by host Unix sockets.

mod connection;
mod control;
mod dial;
pub mod device;
pub mod muxer;
pub mod packet;
