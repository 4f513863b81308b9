//! The API between the host (runtime, `runvm-vmm -- <cmd>`) and the agent,
//! defined once for both sides.
//!
//! - Control: one vsock connection to [`CONTROL_PORT`] carries framed JSON
//!   [`Request`]s and [`Response`]s (see [`codec`]), matched by request id.
//! - Stdio: each stream of a process (stdin, stdout, stderr, or its one
//!   terminal) is its own vsock connection to [`STREAM_PORT`], opened by
//!   the host before the exec and named by a [`StreamHello`] line; after
//!   that line it carries raw bytes only, never JSON.
//! - Readiness: once both ports listen, the agent connects to the host's
//!   [`READY_PORT`] (CID 2), writes [`READY_LINE`] and closes, so the host
//!   needs no polling while the guest boots (each probe would cost the
//!   guest kernel an interrupt and a reset packet).

pub mod codec;
pub mod containers;
pub mod features;
pub mod messages;
pub mod network;
pub mod oci;
pub mod passwd;

pub use codec::{read_frame, read_frame_bytes, write_frame, FrameError, MAX_FRAME_SIZE};
pub use containers::{
    shared_rootfs, validate_container_id, validate_share_tag, GUEST_SHARE_DIR,
    MAX_CONTAINER_ID_LEN, MAX_SHARE_TAG_LEN, SHARE_TAG,
};
pub use messages::*;

/// Bumped on any incompatible change; the agent refuses other versions.
pub const PROTOCOL_VERSION: u32 = 1;

/// Guest vsock port of the control connection.
pub const CONTROL_PORT: u32 = 1024;
/// Guest vsock port for process stdio streams.
pub const STREAM_PORT: u32 = 1025;
/// Host vsock port the agent announces readiness to (in hybrid vsock, the
/// Unix socket `<vsock socket>_1023`).
pub const READY_PORT: u32 = 1023;
/// What the agent writes there, and prints on the console.
pub const READY_LINE: &str = concat!("runvm-agent ", env!("CARGO_PKG_VERSION"), " ready\n");
