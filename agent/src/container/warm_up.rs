//! What the first container of a VM would otherwise do, done once
//! beforehand in a VM that becomes a template.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use super::launch::open_ns;
use super::staged::Staged;
use super::{cgroups, devices};
use crate::state::Agent;

/// Does, once, what the first container of a VM would otherwise do: turn
/// on the cgroup controllers, bring up `lo`, list the kernel's /proc and
/// /sys names, make the IPC namespace it asks for (making one registers its
/// own sysctl tables and mqueue instance: ~40 ms when emulated), mount the
/// filesystems of runc's default /dev and /sys ahead (see `staged`) and
/// the empty tmpfs masked directories share (see `rootfs::Masker`), map
/// the agent's own pages, and load the device program
/// for runc's default rules (loading runs the guest kernel's verifier,
/// about 40% of a container's set-up when emulated). For a VM saved as a
/// template: every VM restored from it starts with this done. A failure
/// is logged and left to the first container, which tries again.
pub fn warm_up(agent: &Agent) {
    let mut c = agent.containers.borrow_mut();
    if let Err(e) = c.ensure_controllers(cgroups::ALWAYS) {
        agent_log!("warming up: cannot enable the cgroup controllers: {e}");
    }
    if let Err(e) = c.ensure_loopback() {
        agent_log!("warming up: cannot bring up lo: {e}");
    }
    c.kernel_names();
    match spare_ipc_namespace() {
        Ok(spare) => c.spare_ipc = Some(spare),
        Err(e) => agent_log!("warming up: cannot make an IPC namespace: {e}"),
    }
    c.staged = Staged::make(&mut c.spare_ipc);
    c.shared_mask();
    if let Err(e) = map_own_file_pages() {
        agent_log!("warming up: cannot map the agent's pages: {e}");
    }
    match devices::default_program() {
        Ok(Some(program)) => {
            if let Err(e) = c.device_programs.preload(&program) {
                agent_log!("warming up: {e}");
            }
        }
        Ok(None) => {}
        Err(e) => agent_log!("warming up: the default device program: {e}"),
    }
}

/// Maps every page of the agent's file mappings (its binary: it is static)
/// into its page tables now, from the page cache, reading what is not
/// there yet: a VM restored from the template then takes no faults on
/// the agent's code the first time a request needs it, and the container
/// processes the agent clones (which copy its file mappings' entries, see
/// the emulated host's `fork_copies_file_ptes`) none either. An agent
/// mapped by runvm-vmm's loader (`--init-program`) has its code in
/// /dev/mem mappings, whose page tables were filled when they were made:
/// the kernel answers EINVAL for those, and there is nothing to do.
fn map_own_file_pages() -> std::io::Result<()> {
    const MADV_POPULATE_READ: libc::c_int = 22;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let mut first_error = None;
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [range, perms, _offset, _dev, inode, ..] = fields[..] else {
            continue;
        };
        // Only readable mappings of a file can be populated for reading.
        if inode == "0" || !perms.starts_with('r') {
            continue;
        }
        let Some((Ok(start), Ok(end))) = range
            .split_once('-')
            .map(|(s, e)| (usize::from_str_radix(s, 16), usize::from_str_radix(e, 16)))
        else {
            continue;
        };
        // SAFETY: advice on a mapping of our own; populating changes no
        // contents.
        let advised = unsafe {
            libc::madvise(
                start as *mut libc::c_void,
                end.saturating_sub(start),
                MADV_POPULATE_READ,
            )
        };
        if advised < 0 && first_error.is_none() {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EINVAL) {
                first_error = Some(error);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A new IPC namespace, held by a descriptor only: the agent enters one
/// and goes back to its own. Nothing has used it; a container that joins
/// it gets what a new one would be.
fn spare_ipc_namespace() -> std::io::Result<OwnedFd> {
    let home = open_ns(Path::new("/proc/self/ns/ipc"))?;
    // SAFETY: unshare(2) of this (single-threaded) process's IPC namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWIPC) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let spare = open_ns(Path::new("/proc/self/ns/ipc"));
    // SAFETY: setns(2) back into the namespace the agent came from.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWIPC) } < 0 {
        // The agent is in it: it is nobody's spare.
        return Err(std::io::Error::last_os_error());
    }
    spare
}
