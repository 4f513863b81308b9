//! The share's mount namespace and what is mounted where: a private
//! namespace held by a descriptor, threads that enter it to make mount
//! calls there, and the mount points a mountinfo lists.

use std::fs;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::sys;

/// A new mount namespace, a copy of this thread's with every mount made a
/// slave (mounts made in it stay in it), held by the returned descriptor
/// only.
pub(super) fn new_namespace() -> io::Result<OwnedFd> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare(2) affects this thread only: CLONE_NEWNS
                // implies CLONE_FS, which gives the thread a root, cwd and
                // mount namespace of its own.
                if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                sys::mount(None, Path::new("/"), libc::MS_SLAVE | libc::MS_REC)?;
                let c = c"/proc/thread-self/ns/mnt";
                // SAFETY: open(2) with a C string.
                let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: a new descriptor that nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// Runs `f` on a thread that has entered the mount namespace `ns`.
pub(super) fn in_namespace<T: Send, E: Send + From<io::Error>>(
    ns: libc::c_int,
    f: impl FnOnce() -> Result<T, E> + Send,
) -> Result<T, E> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare(2) and setns(2) affect this thread only;
                // setns into a mount namespace needs an fs_struct that is
                // the thread's own.
                unsafe {
                    if libc::unshare(libc::CLONE_FS) != 0 {
                        return Err(io::Error::last_os_error().into());
                    }
                    if libc::setns(ns, libc::CLONE_NEWNS) != 0 {
                        return Err(io::Error::last_os_error().into());
                    }
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the mount thread panicked").into()))
    })
}

/// umount(2), lazily (MNT_DETACH) when the mount is busy; a path that is
/// no mount point (anymore) is fine.
pub(super) fn unmount(target: &Path) -> io::Result<()> {
    match sys::umount(target, 0) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => sys::umount(target, libc::MNT_DETACH),
        Err(e) => Err(e),
    }
}

/// Mount points at or below `dir` in this thread's mount namespace.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/thread-self/mountinfo") else {
        return Vec::new();
    };
    mounts_below_in(&mountinfo, dir)
}

/// Mount points at or below `dir` in a mountinfo text (paths that need
/// escaping in mountinfo are compared escaped: good enough for a safety
/// check).
pub fn mounts_below_in(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect()
}
