//! The jailed VMM's credentials and limits: one unprivileged id, no
//! capability in any set, `no_new_privs`, not dumpable, and resource
//! limits sized for its VM.

use caps::CapSet;
use nix::sys::prctl;
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{getgroups, getresgid, getresuid, setgroups, setresgid, setresuid, Gid, Uid};

use crate::config::VmConfig;
use crate::devices::virtio::vsock::muxer::MAX_CONNECTIONS;
use crate::error::Error;

/// Descriptors besides vsock connections: stdio, KVM's VM, vCPU and stats
/// descriptors, irqfds, ioeventfds, the vsock listener and epoll, the
/// virtio-fs backends' sockets, guest memory's memfd. Measured with one
/// vCPU: 24 without a share, 45 with one (and a few connections).
const FIXED_FILES: u64 = 256;
/// Threads besides the vCPUs: the main thread and the devices'. Measured
/// with one vCPU: 4 without a share, 6 with one.
const OTHER_THREADS: u64 = 16;
/// Address space besides guest RAM: program, heap, thread stacks, and the
/// malloc arenas glibc reserves per thread (64 MiB each). Measured: a
/// VmPeak of 460 MiB for a 128 MiB guest with a share (332 MiB beyond).
const ADDRESS_SPACE_OVERHEAD: u64 = 2 << 30;

/// Resource limits of the jailed VMM (soft and hard alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_NPROC: threads of the jail's id, which only this VMM has.
    pub threads: u64,
    /// RLIMIT_AS, in bytes.
    pub address_space: u64,
}

impl Limits {
    /// What the VM of `config` needs, with room to spare; cores, locked
    /// memory and POSIX message queues get none.
    pub fn for_vm(config: &VmConfig) -> Limits {
        Limits {
            open_files: FIXED_FILES + MAX_CONNECTIONS as u64,
            threads: u64::from(config.vcpus) + OTHER_THREADS + config.net.len() as u64,
            address_space: config.memory_bytes() + ADDRESS_SPACE_OVERHEAD,
        }
    }

    fn apply(&self) -> Result<(), Error> {
        for (resource, value, name) in [
            (Resource::RLIMIT_NOFILE, self.open_files, "RLIMIT_NOFILE"),
            (Resource::RLIMIT_NPROC, self.threads, "RLIMIT_NPROC"),
            (Resource::RLIMIT_AS, self.address_space, "RLIMIT_AS"),
            (Resource::RLIMIT_CORE, 0, "RLIMIT_CORE"),
            (Resource::RLIMIT_MEMLOCK, 0, "RLIMIT_MEMLOCK"),
            (Resource::RLIMIT_MSGQUEUE, 0, "RLIMIT_MSGQUEUE"),
        ] {
            setrlimit(resource, value, value).map_err(|e| Error::Jail {
                step: "set the resource limits",
                reason: format!("{name} {value}: {e}"),
            })?;
        }
        Ok(())
    }
}

/// Becomes uid and gid `id` with no supplementary group, no capability,
/// `no_new_privs` and not dumpable, within `limits`. Must run while the
/// process has one thread: capabilities are per thread.
pub fn drop_to(id: u32, limits: &Limits) -> Result<(), Error> {
    limits.apply()?;
    // Dropping from the bounding set needs CAP_SETPCAP: before the ids.
    drop_bounding_set()?;
    for set in [CapSet::Ambient, CapSet::Inheritable] {
        caps::clear(None, set).map_err(Error::jail("clear the capabilities"))?;
    }
    setgroups(&[]).map_err(Error::jail("drop the supplementary groups"))?;
    let (uid, gid) = (Uid::from_raw(id), Gid::from_raw(id));
    setresgid(gid, gid, gid).map_err(Error::jail("set the group id"))?;
    // From root to another uid: the permitted and effective sets go.
    setresuid(uid, uid, uid).map_err(Error::jail("set the user id"))?;
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::clear(None, set).map_err(Error::jail("clear the capabilities"))?;
    }
    prctl::set_no_new_privs().map_err(Error::jail("set no_new_privs"))?;
    // No ptrace by the same id, no core dump, /proc entries root's.
    prctl::set_dumpable(false).map_err(Error::jail("clear the dumpable flag"))?;
    verify(id)
}

/// Every capability the kernel knows, including ones newer than the caps
/// crate: PR_CAPBSET_DROP fails with EINVAL past the last.
fn drop_bounding_set() -> Result<(), Error> {
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if rc != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(Error::Jail {
                step: "drop the bounding capabilities",
                reason: format!("capability {cap}: {error}"),
            });
        }
    }
    Ok(())
}

/// Checks the result, so a silently failed step cannot leave privileges.
fn verify(id: u32) -> Result<(), Error> {
    let fail = |reason: String| Error::Jail {
        step: "verify the dropped privileges",
        reason,
    };
    let uids = getresuid().map_err(|e| fail(e.to_string()))?;
    let gids = getresgid().map_err(|e| fail(e.to_string()))?;
    let ids = [uids.real, uids.effective, uids.saved].map(Uid::as_raw);
    let group_ids = [gids.real, gids.effective, gids.saved].map(Gid::as_raw);
    if ids != [id; 3] || group_ids != [id; 3] {
        return Err(fail(format!("ids {ids:?}, groups {group_ids:?}")));
    }
    let groups = getgroups().map_err(|e| fail(e.to_string()))?;
    if !groups.is_empty() {
        return Err(fail(format!("supplementary groups {groups:?} are left")));
    }
    for set in [
        CapSet::Effective,
        CapSet::Permitted,
        CapSet::Inheritable,
        CapSet::Ambient,
    ] {
        let left = caps::read(None, set).map_err(|e| fail(e.to_string()))?;
        if !left.is_empty() {
            return Err(fail(format!("{set:?} capabilities {left:?} are left")));
        }
    }
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap, 0, 0, 0) } == 1 {
            return Err(fail(format!("bounding capability {cap} is left")));
        }
    }
    if !prctl::get_no_new_privs().map_err(|e| fail(e.to_string()))? {
        return Err(fail("no_new_privs is not set".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_grow_with_the_vm() {
        let mut config = VmConfig::new("/vmlinux");
        config.memory_mib = 512;
        config.vcpus = 2;
        let small = Limits::for_vm(&config);
        assert_eq!(small.threads, 2 + OTHER_THREADS);
        assert_eq!(small.address_space, (512 << 20) + ADDRESS_SPACE_OVERHEAD);
        assert!(small.open_files > MAX_CONNECTIONS as u64);
        config.memory_mib = 4096;
        config.vcpus = 8;
        let large = Limits::for_vm(&config);
        assert_eq!(large.threads, small.threads + 6);
        assert_eq!(large.address_space - small.address_space, 3584 << 20);
        assert_eq!(large.open_files, small.open_files);
    }
}
