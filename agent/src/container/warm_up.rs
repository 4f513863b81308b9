//! What the first container of a VM would otherwise do, done once
//! beforehand in a VM that becomes a template.

use super::{cgroups, devices};
use crate::state::Agent;

/// Does, once, what the first container of a VM would otherwise do: turn
/// on the cgroup controllers, bring up `lo`, list the kernel's /proc and
/// /sys names, map the agent's own pages, and load the device program
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
/// the emulated host's `fork_copies_file_ptes`) none either.
fn map_own_file_pages() -> std::io::Result<()> {
    const MADV_POPULATE_READ: libc::c_int = 22;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(_perms), Some(_offset), Some(_dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if inode == "0" {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        // SAFETY: advice on a mapping of our own; populating changes no
        // contents.
        if unsafe { libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_READ) } < 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
