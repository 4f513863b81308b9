//! The init's mount tree: the rootfs bound in its own mount namespace,
//! the spec's mounts, /dev, the masked and read-only paths, the names,
//! then pivot_root into it (see [`super::init`], whose stage 2 calls
//! [`build_container`]).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::mount::MsFlags;

use super::init::{check, Launch};
use super::mountopts::{MountAttr, MOUNT_ATTR_RDONLY};
use super::paths::{self, mkdir_all};
use super::phases::phase;
use super::rootfs::{make_dev, make_readonly, mount, mount_one, Masker};
use super::spec::ContainerPlan;
use super::terminal;

pub fn build_container(plan: &ContainerPlan, l: &Launch<'_>) -> Result<(), String> {
    // Device nodes get exactly the modes asked for.
    // SAFETY: umask(2) only changes our own mask.
    unsafe { libc::umask(0) };
    let rootfs = plan.rootfs.to_str().ok_or("the rootfs path is not UTF-8")?;
    mount(None, "/", None, plan.root_propagation, None)
        .map_err(|e| format!("cannot make the mount tree private: {e}"))?;
    // After a recursive change to slave, private or unbindable nothing in
    // the tree is shared, so the holder's state need not be read (reading
    // mountinfo formats every mount: ~0.1 s when emulated).
    let recursive = plan.root_propagation.contains(MsFlags::MS_REC);
    if !recursive || plan.root_propagation.contains(MsFlags::MS_SHARED) {
        super::propagation::unshare_holder(rootfs)?;
    }
    phase("b:private");
    mount(
        Some(rootfs),
        rootfs,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )
    .map_err(|e| format!("cannot bind the rootfs {rootfs}: {e}"))?;
    phase("b:bind-rootfs");
    let root = paths::open_dir(&plan.rootfs)
        .map_err(|e| format!("cannot open the rootfs {rootfs}: {e}"))?;
    let root_fd = unsafe { BorrowedFd::borrow_raw(root.as_raw_fd()) };
    let new_userns = plan.clone_flags() & libc::CLONE_NEWUSER != 0;
    for (index, m) in plan.mounts.iter().enumerate() {
        let premade = l
            .premade
            .iter()
            .find(|(i, _)| *i == index)
            .map(|(_, fd)| fd);
        mount_one(root_fd, m, plan, l.cgroup_dir, premade)
            .map_err(|e| format!("mount on {}: {e}", m.destination.display()))?;
        phase("b:mount");
    }
    if plan.setup_dev {
        make_dev(root_fd, plan, new_userns)?;
        phase("b:dev");
    }
    if l.terminal {
        terminal::open_in_container(root_fd, true, l.sync)?;
    }
    phase("b:terminal");
    let mut masker = Masker::new(l.mask_dir);
    for path in &plan.masked_paths {
        masker
            .mask(root_fd, path)
            .map_err(|e| format!("masking {}: {e}", path.display()))?;
    }
    phase("b:masked");
    for path in &plan.readonly_paths {
        make_readonly(root_fd, path)
            .map_err(|e| format!("making {} read-only: {e}", path.display()))?;
    }
    phase("b:readonly");
    for (path, value) in &plan.sysctl {
        std::fs::write(path, value)
            .map_err(|e| format!("cannot set sysctl {}: {e}", path.display()))?;
    }
    if let Some(name) = &plan.hostname {
        nix::unistd::sethostname(name).map_err(|e| format!("cannot set the hostname: {e}"))?;
    }
    if let Some(name) = &plan.domainname {
        // SAFETY: setdomainname(2) reads `len` bytes.
        check(
            unsafe { libc::setdomainname(name.as_ptr().cast(), name.len()) },
            "cannot set the domain name",
        )?;
    }
    phase("b:sysctl+names");
    // The working directory must exist; make it while the root is writable.
    let _ = mkdir_all(root_fd, &plan.process.cwd, 0o755);
    phase("b:cwd");
    if plan.readonly_root {
        // mount_setattr changes only this attribute: a remount would have
        // to learn the others first (statfs: a round trip to the host for
        // a root on the share).
        let readonly = MountAttr {
            set: MOUNT_ATTR_RDONLY,
            clear: 0,
        };
        readonly
            .apply_top(&root)
            .map_err(|e| format!("cannot make the rootfs read-only: {e}"))?;
    }
    phase("b:ro-root");
    let pivoted = pivot_root(&root);
    phase("b:pivot");
    pivoted
}

/// Makes `root` the root: pivot_root(".", ".") stacks the old root on the
/// new one, then the old one is detached with everything mounted below it,
/// so the container's mount namespace keeps nothing of the guest's; no
/// directory for it is needed. In the guest this needs the agent to have
/// left the initramfs at boot (see `crate::switch_root`): the initramfs
/// itself has no parent mount, which pivot_root refuses.
fn pivot_root(root: &OwnedFd) -> Result<(), String> {
    // SAFETY: plain syscalls; the descriptors are ours.
    unsafe {
        let old = libc::open(
            c"/".as_ptr(),
            libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
        );
        check(old, "open /")?;
        let old = OwnedFd::from_raw_fd(old);
        check(libc::fchdir(root.as_raw_fd()), "chdir to the rootfs")?;
        if libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) < 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EINVAL) {
                format!(
                    "pivot_root: {e} (is the agent's root still the initramfs, \
                     or is a mount involved shared?)"
                )
            } else {
                format!("pivot_root: {e}")
            });
        }
        check(libc::fchdir(old.as_raw_fd()), "chdir to the old root")?;
        // Keep the unmount from reaching the agent's mounts.
        mount(None, ".", None, MsFlags::MS_SLAVE | MsFlags::MS_REC, None)
            .map_err(|e| format!("cannot make the old root a slave: {e}"))?;
        check(
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
            "unmount the old root",
        )?;
        check(libc::chdir(c"/".as_ptr()), "chdir /")?;
    }
    Ok(())
}
