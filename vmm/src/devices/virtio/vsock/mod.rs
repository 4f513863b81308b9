//! virtio-vsock (device id 19) backed by host Unix sockets.

mod connection;
mod control;
pub mod device;
mod dial;
mod interest;
pub mod muxer;
pub mod packet;

#[cfg(test)]
mod hostile_guest_tests;
