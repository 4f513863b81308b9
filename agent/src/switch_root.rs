//! Leaving the initramfs at boot, so that containers can pivot_root.
//!
//! The kernel unpacks the guest image into rootfs, its first mount, which
//! has no parent: pivot_root refuses to move it, so containers could only
//! be entered by chroot, with the guest's root and its mounts left in
//! their mount namespace. PID 1 therefore puts its root on an ordinary
//! mount first, as switch_root does before it execs the real init: it
//! binds the initramfs onto a directory of itself, moves that mount over
//! `/` and chroots into it. The guest's root is then a mount with a parent
//! (rootfs); each container pivots away from it and unmounts it with
//! everything mounted below, which leaves only the kernel's rootfs under
//! the container's root: covered by it and reachable by no path.
//!
//! Why a bind and not a copy into a tmpfs (and emptying the initramfs):
//! on an emulating host a path syscall costs 10-15 ms in the guest; the
//! copy took 0.3 s of boot for the agent-only image and 7.8 s for the
//! test image (busybox's ~270 applet links), the bind takes four calls.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The image's directory the initramfs is bound on for the move: /run is
/// in every image and only gets its tmpfs later in the boot; once the
/// bind is moved over `/` it is a plain directory again.
pub const STAGING: &str = "/run";

/// Whether `/` is the initramfs: the kernel's rootfs is a tmpfs (or ramfs)
/// and PID 1 starts on it; any other root the kernel mounts is not. This
/// is the check switch_root makes (a tmpfs root that something else set
/// up would only be bound once more, which is harmless).
pub fn root_is_initramfs() -> bool {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    // Not among nix's or libc's constants (linux/magic.h).
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    statfs("/").is_ok_and(|st| [TMPFS_MAGIC, RAMFS_MAGIC].contains(&st.filesystem_type()))
}

/// What the kernel booted the guest from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Root {
    /// An initramfs (the kernel's rootfs): PID 1 found nothing mounted.
    Initramfs,
    /// A root filesystem the kernel mounted (the root disk); the kernel
    /// mounted devtmpfs on its /dev too (`CONFIG_DEVTMPFS_MOUNT`).
    Disk,
}

/// At boot, before anything is mounted: moves PID 1's root off the
/// initramfs when that is where it runs. A failure is logged and the agent
/// stays on the initramfs, where containers cannot start (they say why).
pub fn leave_initramfs() -> Root {
    if !root_is_initramfs() {
        return Root::Disk;
    }
    if let Err(e) = switch(Path::new(STAGING)) {
        agent_log!("cannot leave the initramfs: {e}; containers will not start");
    }
    Root::Initramfs
}

fn check(ret: libc::c_int, what: &str) -> Result<(), String> {
    if ret < 0 {
        Err(format!("{what}: {}", io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// Binds `/` onto `staging` (an empty directory of it, created if
/// missing), moves that mount over `/` and chroots into it. The working
/// directory ends at the new root.
pub fn switch(staging: &Path) -> Result<(), String> {
    let staging_c = CString::new(staging.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", staging.display()))?;
    let bind = || {
        nix::mount::mount(
            Some("/"),
            staging,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match bind() {
        Ok(()) => {}
        // An image without the directory: make it (costs a call only then).
        Err(nix::errno::Errno::ENOENT) => {
            nix::unistd::mkdir(staging, nix::sys::stat::Mode::from_bits_truncate(0o755))
                .map_err(|e| format!("cannot create {}: {e}", staging.display()))?;
            bind().map_err(|e| format!("cannot bind / on {}: {e}", staging.display()))?;
        }
        Err(e) => return Err(format!("cannot bind / on {}: {e}", staging.display())),
    }
    // SAFETY: plain syscalls with C strings.
    let moved = unsafe {
        check(libc::chdir(staging_c.as_ptr()), "chdir to the bound root").and_then(|()| {
            check(
                libc::mount(
                    c".".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_MOVE,
                    std::ptr::null(),
                ),
                "cannot move the bound root over /",
            )
        })
    };
    if let Err(e) = moved {
        // Back to the initramfs as it was, staging directory free again.
        // SAFETY: as above.
        unsafe {
            libc::chdir(c"/".as_ptr());
            libc::umount2(staging_c.as_ptr(), libc::MNT_DETACH);
        }
        return Err(e);
    }
    // The working directory is the moved mount's root: it becomes the
    // root, and stays the working directory.
    // SAFETY: chroot(2) with a C string.
    check(
        unsafe { libc::chroot(c".".as_ptr()) },
        "chroot into the bound root",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    #[test]
    fn the_host_root_is_no_initramfs() {
        // The test runs on the host's root filesystem, never a tmpfs.
        assert!(!root_is_initramfs());
    }

    /// The mount id of what `fd` (or `path` relative to it) is on.
    fn mount_id(fd: libc::c_int, path: &std::ffi::CStr) -> Result<u64, String> {
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: statx(2) into our buffer.
        let ret = unsafe {
            libc::statx(
                fd,
                path.as_ptr(),
                libc::AT_EMPTY_PATH,
                libc::STATX_MNT_ID,
                &mut stx,
            )
        };
        check(ret, "statx")?;
        Ok(stx.stx_mnt_id)
    }

    /// The whole switch in a child process, in a mount namespace of its
    /// own, chrooted into a tmpfs that stands in for the initramfs.
    #[test]
    fn the_root_moves_onto_a_mount_of_its_own() {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "this test mounts and chroots: run it as root"
        );
        let base = std::env::temp_dir().join(format!("runvm-switch-{}", std::process::id()));
        fs::create_dir_all(&base).unwrap();
        // The server tests reap with waitpid(-1): not while our child runs.
        let _serial = crate::server::tests::one_at_a_time();
        // SAFETY: the child only makes syscalls and plain allocations
        // (glibc's fork keeps malloc usable) and ends with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = match in_child(&base) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("switch test: {e}");
                    1
                }
            };
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let _ = fs::remove_dir(&base);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the switch failed in the child (status {status:#x}); see its stderr"
        );
    }

    fn in_child(base: &Path) -> Result<(), String> {
        use nix::mount::{mount, MsFlags};
        check(unsafe { libc::unshare(libc::CLONE_NEWNS) }, "unshare")?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_PRIVATE | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| format!("private: {e}"))?;
        mount(
            Some("tmpfs"),
            base,
            Some("tmpfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| format!("tmpfs: {e}"))?;
        fs::create_dir(base.join("bin")).map_err(|e| e.to_string())?;
        fs::write(base.join("bin/busybox"), b"busybox").map_err(|e| e.to_string())?;
        // No staging directory in this image: the switch makes it.
        nix::unistd::chdir(base).map_err(|e| format!("chdir: {e}"))?;
        nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
        // SAFETY: open(2); the descriptor is ours.
        let old = unsafe {
            libc::open(
                c"/".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        check(old, "open /")?;
        let old = unsafe { OwnedFd::from_raw_fd(old) };

        switch(Path::new("/run"))?;

        let expect = |ok: bool, what: &str| if ok { Ok(()) } else { Err(what.to_string()) };
        let root_id = mount_id(libc::AT_FDCWD, c"/")?;
        expect(
            root_id != mount_id(old.as_raw_fd(), c"")?,
            "/ is still the old mount",
        )?;
        expect(
            mount_id(libc::AT_FDCWD, c".")? == root_id,
            "the working directory is not the new root",
        )?;
        expect(
            fs::read("/bin/busybox").ok().as_deref() == Some(&b"busybox"[..]),
            "the image is not there",
        )?;
        // The staging directory is a plain directory again, ready for
        // its own mount.
        expect(
            mount_id(libc::AT_FDCWD, c"/run")? == root_id,
            "/run is still a mount point",
        )?;
        // `..` at the new root stays there.
        expect(
            mount_id(libc::AT_FDCWD, c"/..")? == root_id,
            "/.. leaves the root",
        )
    }
}
