//! Thin wrappers over the mount and open system calls the share uses
//! (`openat2` also serves `home_dir`, reading a rootfs file safely).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// struct mount_attr (MOUNT_ATTR_SIZE_VER0).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

pub fn cstr(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn check(result: libc::c_long) -> io::Result<libc::c_long> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

pub fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target = cstr(target)?;
    // SAFETY: mount(2) with C strings (or NULL) and no data.
    check(unsafe {
        libc::mount(
            source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    } as libc::c_long)?;
    Ok(())
}

pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cstr(target)?;
    // SAFETY: umount2(2) with a C string.
    check(unsafe { libc::umount2(target.as_ptr(), flags) } as libc::c_long)?;
    Ok(())
}

pub fn mkdirat(dir: &OwnedFd, path: &Path, mode: libc::mode_t) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: mkdirat(2) relative to our descriptor.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) } as libc::c_long)?;
    Ok(())
}

/// An empty regular file (mode includes S_IFREG), which fails if
/// anything is at `path` already.
pub fn mknodat(dir: &OwnedFd, path: &Path, mode: libc::mode_t) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: mknodat(2) relative to our descriptor.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, 0) } as libc::c_long)?;
    Ok(())
}

/// unlinkat(2): a file, or with `directory` an empty directory.
pub fn unlinkat(dir: &OwnedFd, path: &Path, directory: bool) -> io::Result<()> {
    let c = cstr(path)?;
    let flags = if directory { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: unlinkat(2) relative to our descriptor.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) } as libc::c_long)?;
    Ok(())
}

pub fn rmdirat(dir: &OwnedFd, path: &Path) -> io::Result<()> {
    let c = cstr(path)?;
    // SAFETY: unlinkat(2) relative to our descriptor; it removes empty
    // directories only, and never one that is a mount point.
    check(
        unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) } as libc::c_long,
    )?;
    Ok(())
}

/// `path` opened as a handle (O_PATH, following symlinks as runc does for
/// a bind source): what is checked and what is mounted is this object,
/// whatever happens at `path` later.
pub fn open_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: open(2) with a C string; the descriptor is ours.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `path` below the directory `dir` opened as a handle (O_PATH), with no
/// symlink on the way and no way out of `dir` (openat2 with
/// RESOLVE_NO_SYMLINKS and RESOLVE_BENEATH): for places runvm made
/// itself, where a symlink can only have been planted.
pub fn open_beneath(dir: &OwnedFd, path: &Path) -> io::Result<OwnedFd> {
    openat2(
        dir,
        path,
        libc::O_PATH,
        libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH,
    )
}

/// openat2(2) of `path` relative to `dir`, with `flags` (close-on-exec
/// added) and the `resolve` restrictions.
pub fn openat2(
    dir: &OwnedFd,
    path: &Path,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: open_how is plain data; zero is "no flag" for each field.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = resolve;
    // SAFETY: openat2(2) relative to our descriptor; it reads `size`
    // bytes of `how` and a C string.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    })?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// The file type bits of what `fd` refers to.
pub fn file_type(fd: &OwnedFd) -> io::Result<libc::mode_t> {
    // SAFETY: stat is plain data that fstat(2) fills.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat(2) on our descriptor (O_PATH descriptors allow it).
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } as libc::c_long)?;
    Ok(stat.st_mode & libc::S_IFMT)
}

/// A detached copy of the mount at the object `source` refers to (with
/// the mounts below it when `recursive`), taken from the descriptor
/// itself: no path is looked up again.
pub fn open_tree(source: &OwnedFd, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    if recursive {
        flags |= AT_RECURSIVE;
    }
    // SAFETY: open_tree(2) on our descriptor with an empty path; it
    // returns a new descriptor.
    let fd = check(unsafe {
        libc::syscall(libc::SYS_open_tree, source.as_raw_fd(), c"".as_ptr(), flags)
    })?;
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Sets `set` and the propagation on every mount of the tree `tree`.
pub fn mount_setattr(tree: &OwnedFd, set: u64, propagation: u64) -> io::Result<()> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    let flags = libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE;
    // SAFETY: mount_setattr(2) reads `size` bytes of `attr`.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })?;
    Ok(())
}

/// Attaches the detached tree `tree` on the object `target` refers to
/// (both descriptors: no path is looked up).
pub fn move_mount(tree: &OwnedFd, target: &OwnedFd) -> io::Result<()> {
    // SAFETY: move_mount(2) between two of our descriptors.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })?;
    Ok(())
}

/// A directory, not through a symlink at its last component.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: open(2) with a C string; the descriptor is ours.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
