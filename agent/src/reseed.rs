//! A VM restored from a template starts with the template's memory: the
//! kernel's random generator state and the wall clock as they were when
//! the template was saved. `Reseed` gives it the host's entropy and time
//! before the host lets anything else run in it.
//!
//! The entropy goes in with RNDADDENTROPY (credited, so the pool counts
//! as freshly seeded) followed by RNDRESEEDCRNG, which makes the kernel's
//! generator draw a new key from the pool at once instead of at its next
//! scheduled reseed: from the answer on, `/dev/urandom` and getrandom(2)
//! differ between any two VMs of one template.
//!
//! A restored VM's network cards still have the template's placeholder
//! MACs: each gets its own here, before any interface is configured (the
//! pod's network finds its devices by their MACs).

use std::fs::File;
use std::os::fd::AsRawFd;

use runvm_agent_api::network::{validate_card_macs, CardMac};
use runvm_agent_api::{AgentError, ResponseBody, MAX_RESEED_BYTES, MIN_RESEED_BYTES};

use crate::exec::{invalid, system};

/// `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Handles `Reseed`.
pub fn reseed(
    entropy: &[u8],
    realtime_ns: u64,
    cards: &[CardMac],
) -> Result<ResponseBody, AgentError> {
    check_entropy_len(entropy.len())?;
    validate_card_macs(cards).map_err(invalid)?;
    let random =
        File::open("/dev/urandom").map_err(|e| system(format!("cannot open /dev/urandom: {e}")))?;
    let request = rand_pool_info(entropy);
    // SAFETY: RNDADDENTROPY reads a struct rand_pool_info: two ints (bits
    // credited, byte count) followed by that many bytes, which `request`
    // holds.
    let added = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, request.as_ptr()) };
    if added != 0 {
        return Err(system(format!(
            "cannot add entropy to the kernel's pool: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(system(format!(
            "cannot reseed the kernel's generator: {}",
            std::io::Error::last_os_error()
        )));
    }
    set_realtime(realtime_ns)?;
    if !cards.is_empty() {
        crate::network::assign_card_macs(cards).map_err(system)?;
    }
    Ok(ResponseBody::Done)
}

fn check_entropy_len(len: usize) -> Result<(), AgentError> {
    if (MIN_RESEED_BYTES..=MAX_RESEED_BYTES).contains(&len) {
        Ok(())
    } else {
        Err(invalid(format!(
            "reseed: {len} bytes of entropy, expected {MIN_RESEED_BYTES} to {MAX_RESEED_BYTES}"
        )))
    }
}

/// `struct rand_pool_info` for `entropy`, every bit credited, as 32-bit
/// words (the kernel's layout: `int entropy_count; int buf_size; __u32
/// buf[]`).
fn rand_pool_info(entropy: &[u8]) -> Vec<u32> {
    let words = entropy.len().div_ceil(4);
    let mut info = vec![0u32; 2 + words];
    // Both fit: the length is at most MAX_RESEED_BYTES.
    info[0] = (entropy.len() * 8) as u32;
    info[1] = entropy.len() as u32;
    for (word, chunk) in info[2..].iter_mut().zip(entropy.chunks(4)) {
        let mut bytes = [0u8; 4];
        bytes[..chunk.len()].copy_from_slice(chunk);
        *word = u32::from_ne_bytes(bytes);
    }
    info
}

fn set_realtime(realtime_ns: u64) -> Result<(), AgentError> {
    let time = libc::timespec {
        tv_sec: (realtime_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (realtime_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads the timespec we pass.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) } != 0 {
        return Err(system(format!(
            "cannot set the wall clock: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_request_is_laid_out_as_the_kernel_reads_it() {
        let info = rand_pool_info(&[1, 2, 3, 4, 5]);
        assert_eq!(info.len(), 4);
        assert_eq!(info[0], 40);
        assert_eq!(info[1], 5);
        assert_eq!(info[2], u32::from_ne_bytes([1, 2, 3, 4]));
        assert_eq!(info[3], u32::from_ne_bytes([5, 0, 0, 0]));
    }

    #[test]
    fn too_little_or_too_much_entropy_is_refused_before_anything_changes() {
        assert!(check_entropy_len(MIN_RESEED_BYTES - 1).is_err());
        assert!(check_entropy_len(MAX_RESEED_BYTES + 1).is_err());
        assert!(check_entropy_len(MIN_RESEED_BYTES).is_ok());
        let err = reseed(&[0; 8], 0, &[]).unwrap_err();
        assert!(err.message.contains("8 bytes"), "{}", err.message);
    }
}
