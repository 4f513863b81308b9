//! runvm's taps: persistent, so they outlive the descriptor that made
//! them until teardown deletes them by name, and opened again, with vnet
//! headers, for the VMM. Netlink cannot create a tap: /dev/net/tun's
//! ioctls do, in the namespace of the thread that opens it.

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use super::NetworkError;

/// Every tap runvm makes is named `rvtap<N>`.
pub const TAP_PREFIX: &str = "rvtap";

const IFNAMSIZ: usize = 16;
const IFF_TAP: u16 = 0x0002;
const IFF_NO_PI: u16 = 0x1000;
const IFF_VNET_HDR: u16 = 0x4000;
// _IOW('T', 202, int) and _IOW('T', 203, int).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;

#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    flags: u16,
    _pad: [u8; 22],
}

fn tap_error(name: &str, what: &str) -> NetworkError {
    NetworkError::Tap {
        name: name.to_string(),
        reason: format!("{what}: {}", std::io::Error::last_os_error()),
    }
}

/// A descriptor attached to tap `name` (created if missing).
fn attach(name: &str, flags: u16) -> Result<OwnedFd, NetworkError> {
    if name.is_empty() || name.len() >= IFNAMSIZ {
        return Err(NetworkError::Tap {
            name: name.to_string(),
            reason: "not 1 to 15 bytes".into(),
        });
    }
    let tun = File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(|e| NetworkError::Tap {
            name: name.to_string(),
            reason: format!("cannot open /dev/net/tun: {e}"),
        })?;
    let mut request = IfReq {
        name: [0; IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    request.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `request` is.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) } < 0 {
        return Err(tap_error(name, "TUNSETIFF"));
    }
    Ok(OwnedFd::from(tun))
}

/// Creates the persistent tap `name` in this thread's namespace.
pub fn create(name: &str) -> Result<(), NetworkError> {
    let fd = attach(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)?;
    // SAFETY: TUNSETPERSIST takes its argument by value.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(tap_error(name, "TUNSETPERSIST"));
    }
    Ok(())
}

/// A descriptor of the existing tap `name`, as the VMM wants it.
pub fn open(name: &str) -> Result<OwnedFd, NetworkError> {
    attach(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
}

/// The name of the `index`th tap.
pub fn name(index: usize) -> String {
    format!("{TAP_PREFIX}{index}")
}

pub fn is_ours(name: &str) -> bool {
    name.strip_prefix(TAP_PREFIX)
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}
