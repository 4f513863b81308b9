//! How much work a running VM's guest has cost KVM, read from outside the
//! VMM: its vCPUs' binary statistics (`KVM_GET_STATS_FD`).
//!
//! On a host whose KVM emulates the guest kernel instruction by instruction,
//! `insn_emulation` counts guest-kernel work in units that do not move with
//! the host's speed of the day, so benchmarks report it beside wall time.
//!
//! KVM answers vCPU ioctls only to the process that made the VM, so
//! `runvm-vmm` opens one statistics descriptor per vCPU and holds it; the
//! reader (root, or the VMM's owner) finds them by their `/proc/<pid>/fd`
//! link names (`anon_inode:kvm-vcpu-stats:<n>`), takes a duplicate with
//! `pidfd_getfd(2)` and reads the counters it needs.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;

/// The counters reported; everything else the descriptor offers is skipped.
pub const COUNTERS: [&str; 8] = [
    "insn_emulation",
    "exits",
    "io_exits",
    "mmio_exits",
    "halt_exits",
    "irq_injections",
    "pf_taken",
    "signal_exits",
];
/// Bounds on what a statistics header may claim (the kernel's own are far
/// smaller); anything larger is refused rather than allocated.
const MAX_DESCRIPTORS: usize = 4096;
const MAX_NAME_SIZE: usize = 256;

/// Counters summed over every vCPU of one VM, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuestCounters {
    pub values: BTreeMap<&'static str, u64>,
    /// How many vCPUs were read.
    pub vcpus: usize,
}

impl GuestCounters {
    pub fn get(&self, name: &str) -> u64 {
        self.values.get(name).copied().unwrap_or(0)
    }

    /// What happened between `earlier` and `self` (counters only grow).
    pub fn since(&self, earlier: &GuestCounters) -> GuestCounters {
        let values = self
            .values
            .iter()
            .map(|(name, value)| (*name, value.saturating_sub(earlier.get(name))))
            .collect();
        GuestCounters {
            values,
            vcpus: self.vcpus,
        }
    }
}

/// Reads the counters of the VM run by process `vmm_pid`.
pub fn read(vmm_pid: u32) -> io::Result<GuestCounters> {
    let pidfd = pidfd_open(vmm_pid)?;
    let mut counters = GuestCounters::default();
    for target_fd in stats_fds(vmm_pid)? {
        let stats = fs::File::from(pidfd_getfd(&pidfd, target_fd)?);
        for (name, value) in read_stats(&stats)? {
            *counters.values.entry(name).or_insert(0) += value;
        }
        counters.vcpus += 1;
    }
    if counters.vcpus == 0 {
        return Err(io::Error::other(format!(
            "process {vmm_pid} holds no KVM vCPU statistics descriptor"
        )));
    }
    Ok(counters)
}

/// The numbers of `pid`'s vCPU statistics descriptors.
fn stats_fds(pid: u32) -> io::Result<Vec<RawFd>> {
    let mut fds = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(link) = fs::read_link(entry.path()) else {
            continue; // closed meanwhile
        };
        if link
            .to_string_lossy()
            .starts_with("anon_inode:kvm-vcpu-stats:")
        {
            if let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
                fds.push(fd);
            }
        }
    }
    fds.sort_unstable();
    Ok(fds)
}

/// The counters in [`COUNTERS`] from one statistics descriptor.
fn read_stats(file: &fs::File) -> io::Result<Vec<(&'static str, u64)>> {
    // struct kvm_stats_header: flags, name_size, num_desc, id_offset,
    // desc_offset, data_offset (u32 each).
    let mut header = [0u8; 24];
    file.read_exact_at(&mut header, 0)?;
    let word =
        |i: usize| u32::from_ne_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    let (name_size, count) = (word(4) as usize, word(8) as usize);
    let (desc_offset, data_offset) = (u64::from(word(16)), u64::from(word(20)));
    if count > MAX_DESCRIPTORS || name_size > MAX_NAME_SIZE {
        return Err(io::Error::other("implausible KVM statistics header"));
    }
    // struct kvm_stats_desc: flags u32, exponent i16, size u16, offset u32,
    // bucket_size u32, then the name.
    let desc_size = 16 + name_size;
    let mut descriptors = vec![0u8; desc_size * count];
    file.read_exact_at(&mut descriptors, desc_offset)?;
    let mut found = Vec::new();
    for desc in descriptors.chunks_exact(desc_size) {
        let name_bytes = &desc[16..];
        let end = name_bytes
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(name_bytes.len());
        let Some(name) = COUNTERS.iter().find(|n| n.as_bytes() == &name_bytes[..end]) else {
            continue;
        };
        let offset = u64::from(u32::from_ne_bytes([desc[8], desc[9], desc[10], desc[11]]));
        let mut value = [0u8; 8];
        file.read_exact_at(&mut value, data_offset + offset)?;
        found.push((*name, u64::from_ne_bytes(value)));
    }
    Ok(found)
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn pidfd_getfd(pidfd: &OwnedFd, target: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just gave us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_subtracts_per_counter() {
        let mut a = GuestCounters::default();
        a.values.insert("exits", 10);
        let mut b = GuestCounters::default();
        b.values.insert("exits", 25);
        b.values.insert("io_exits", 3);
        let d = b.since(&a);
        assert_eq!(d.get("exits"), 15);
        assert_eq!(d.get("io_exits"), 3);
    }

    #[test]
    fn a_process_without_vcpus_is_named() {
        let err = read(std::process::id()).unwrap_err();
        assert!(err.to_string().contains("no KVM vCPU"), "{err}");
    }
}
