//! Bytes from the host's random generator, for what must differ between
//! processes and VMs (stream tokens, a restored VM's CID and entropy).

use std::io::Read;

/// Fills `buf` from `/dev/urandom`.
pub fn fill(buf: &mut [u8]) -> std::io::Result<()> {
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}
