//! The container's mount tree, as its init builds it before the pivot:
//! the spec's mounts (binds, filesystems, cgroup2), its /dev, masked and
//! read-only paths. Every path is resolved inside the rootfs (`paths`),
//! and mounts go onto the descriptors found there.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::mount::MsFlags;

use super::init::check;
use super::mountopts::{MountAttr, MOUNT_ATTR_RDONLY};
use super::paths::{self, create_file, fd_path, mkdir_all, open_in_root};
use super::spec::{ContainerPlan, MountKind, MountPlan, DEV_SYMLINKS};

pub fn c(path: &Path) -> Result<CString, String> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))
}

pub fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> nix::Result<()> {
    nix::mount::mount(source, target, fstype, flags, data)
}

/// Flags of the mount at `target` that a bind remount must keep (in a user
/// namespace the kernel refuses to drop locked ones).
fn mount_flags(target: &str) -> MsFlags {
    match nix::sys::statvfs::statvfs(target) {
        Ok(st) => {
            use nix::sys::statvfs::FsFlags;
            let f = st.flags();
            let mut flags = MsFlags::empty();
            for (have, ms) in [
                (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
                (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
                (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
                (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
                (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
                (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
                (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
            ] {
                if f.contains(have) {
                    flags |= ms;
                }
            }
            flags
        }
        Err(_) => MsFlags::empty(),
    }
}

/// Remounts the bind mount at `target` with `set` added and `cleared`
/// removed from its current flags.
pub fn bind_remount(target: &str, set: MsFlags, cleared: MsFlags) -> Result<(), String> {
    let flags = ((mount_flags(target) - cleared) | set) | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    mount(None, target, None, flags, None).map_err(|e| format!("cannot remount {target}: {e}"))
}

pub fn mount_one(
    root: BorrowedFd<'_>,
    m: &MountPlan,
    plan: &ContainerPlan,
    cgroup_dir: Option<&Path>,
    premade: Option<&OwnedFd>,
) -> Result<(), String> {
    let o = &m.options;
    let dest = &m.destination;
    let io_err = |what: &str, e: io::Error| format!("{what}: {e}");
    match (&m.kind, premade) {
        // Made ahead with this mount's very type, source, flags and
        // options (see `staged`): only moved into place.
        (MountKind::Fs { fstype, .. }, Some(tree)) => {
            let target = mkdir_all(root, dest, 0o755).map_err(|e| io_err("mount point", e))?;
            attach(tree, &target).map_err(|e| io_err(&format!("staged {fstype}"), e))?;
            if fstype != "sysfs" {
                // A new filesystem's root has the time it was made: now,
                // not the template's.
                let top = open_in_root(root, dest, libc::O_RDONLY | libc::O_DIRECTORY, 0)
                    .map_err(|e| io_err("reopen", e))?;
                // SAFETY: futimens(2) on our descriptor, times "now".
                let touched = unsafe { libc::futimens(top.as_raw_fd(), std::ptr::null()) };
                if touched < 0 {
                    return Err(io_err("staged times", io::Error::last_os_error()));
                }
            }
        }
        (MountKind::Bind { source }, _) => {
            let is_dir = std::fs::metadata(source)
                .map_err(|e| io_err(&format!("bind source {}", source.display()), e))?
                .is_dir();
            let target = if is_dir {
                mkdir_all(root, dest, 0o755)
            } else {
                create_file(root, dest, 0o644)
            }
            .map_err(|e| io_err("mount point", e))?;
            let source = source.to_str().ok_or("the bind source is not UTF-8")?;
            mount(
                Some(source),
                &fd_path(&target),
                None,
                MsFlags::MS_BIND | (o.flags & MsFlags::MS_REC),
                None,
            )
            .map_err(|e| format!("bind {source}: {e}"))?;
            let set = o.bind_remount_flags();
            if !set.is_empty() || !o.cleared.is_empty() {
                let top =
                    open_in_root(root, dest, libc::O_PATH, 0).map_err(|e| io_err("reopen", e))?;
                bind_remount(&fd_path(&top), set, o.cleared)?;
            }
        }
        (MountKind::Fs { fstype, source }, None) if fstype == "tmpfs" => {
            let flags = o.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
            super::tmpfs::mount(root, dest, source, flags, &o.data, o.tmpcopyup)?;
        }
        (MountKind::Fs { fstype, source }, None) => {
            let target = mkdir_all(root, dest, 0o755).map_err(|e| io_err("mount point", e))?;
            let flags = o.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
            let data = (!o.data.is_empty()).then_some(o.data.as_str());
            mount(Some(source), &fd_path(&target), Some(fstype), flags, data)
                .map_err(|e| format!("{fstype}: {e}"))?;
        }
        (MountKind::Cgroup, _) => {
            let target = mkdir_all(root, dest, 0o755).map_err(|e| io_err("mount point", e))?;
            let flags = o.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
            match cgroup_dir {
                // Without a cgroup namespace, show the container its own
                // cgroup only, as runc does.
                Some(dir) if !plan.has_namespace(libc::CLONE_NEWCGROUP) => {
                    let dir = dir.to_str().ok_or("the cgroup path is not UTF-8")?;
                    mount(Some(dir), &fd_path(&target), None, MsFlags::MS_BIND, None)
                        .map_err(|e| format!("bind {dir}: {e}"))?;
                    let top = open_in_root(root, dest, libc::O_PATH, 0)
                        .map_err(|e| io_err("reopen", e))?;
                    bind_remount(
                        &fd_path(&top),
                        flags & super::mountopts::REMOUNT_FLAGS,
                        o.cleared,
                    )?;
                }
                _ => mount(
                    Some("cgroup2"),
                    &fd_path(&target),
                    Some("cgroup2"),
                    flags,
                    None,
                )
                .map_err(|e| format!("cgroup2: {e}"))?,
            }
        }
    }
    if !o.recursive.is_empty() {
        let top = open_in_root(root, dest, libc::O_PATH, 0).map_err(|e| io_err("reopen", e))?;
        o.recursive
            .apply(&top)
            .map_err(|e| io_err("recursive mount attributes", e))?;
    }
    for propagation in &o.propagation {
        let top = open_in_root(root, dest, libc::O_PATH, 0).map_err(|e| io_err("reopen", e))?;
        mount(None, &fd_path(&top), None, *propagation, None)
            .map_err(|e| format!("propagation: {e}"))?;
    }
    Ok(())
}

/// Default devices (or the spec's) and the /dev symlinks.
pub fn make_dev(
    root: BorrowedFd<'_>,
    plan: &ContainerPlan,
    new_userns: bool,
) -> Result<(), String> {
    let mut dirs: Option<(&Path, OwnedFd)> = None;
    for device in &plan.devices {
        let what = |e: String| format!("device {}: {e}", device.path.display());
        if new_userns {
            // mknod is not allowed in a user namespace: bind the guest's.
            let target = create_file(root, &device.path, 0o644).map_err(|e| what(e.to_string()))?;
            let source = device
                .path
                .to_str()
                .ok_or_else(|| what("not UTF-8".into()))?;
            mount(
                Some(source),
                &fd_path(&target),
                None,
                MsFlags::MS_BIND,
                None,
            )
            .map_err(|e| what(e.to_string()))?;
            continue;
        }
        let parent = device.path.parent().unwrap_or(Path::new("/dev"));
        let name = device
            .path
            .file_name()
            .ok_or_else(|| what("no file name".into()))?;
        // Devices mostly share a directory: resolved once for a run of them.
        let dir = match dirs.take() {
            Some((path, fd)) if path == parent => fd,
            _ => mkdir_all(root, parent, 0o755).map_err(|e| what(e.to_string()))?,
        };
        let dir = &dirs.insert((parent, dir)).1;
        let name = c(Path::new(name))?;
        let dev = libc::makedev(device.major, device.minor);
        // SAFETY: mknodat(2)/fchownat(2) relative to a directory we resolved
        // in the root, with a plain file name.
        unsafe {
            if libc::mknodat(dir.as_raw_fd(), name.as_ptr(), device.mode, dev) < 0 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EEXIST) {
                    return Err(what(e.to_string()));
                }
                continue;
            }
            if (device.uid, device.gid) != (0, 0) {
                check(
                    libc::fchownat(
                        dir.as_raw_fd(),
                        name.as_ptr(),
                        device.uid,
                        device.gid,
                        libc::AT_SYMLINK_NOFOLLOW,
                    ),
                    format_args!("chown {}", device.path.display()),
                )?;
            }
        }
    }
    let dev = mkdir_all(root, Path::new("/dev"), 0o755).map_err(|e| format!("/dev: {e}"))?;
    for (link, target) in DEV_SYMLINKS {
        let name = c(Path::new(link)
            .strip_prefix("/dev")
            .unwrap_or(Path::new(link)))?;
        let target = c(Path::new(target))?;
        // SAFETY: symlinkat(2) in the resolved /dev.
        if unsafe { libc::symlinkat(target.as_ptr(), dev.as_raw_fd(), name.as_ptr()) } < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("symlink {link}: {e}"));
            }
        }
    }
    Ok(())
}

fn missing(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOENT)
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;

/// A detached copy of the mount tree at `path` relative to `dir`
/// (open_tree(2) with OPEN_TREE_CLONE: a bind mount not attached yet);
/// `recursive` takes the mounts below it along.
pub(super) fn clone_tree(dir: libc::c_int, path: &CStr, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    if path.is_empty() {
        flags |= libc::AT_EMPTY_PATH as libc::c_uint;
    }
    if recursive {
        flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree(2) reads the C string; the result is a new
    // descriptor that we own.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, dir, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Attaches the detached tree `tree` on the path that `target` (an
/// O_PATH descriptor) names (move_mount(2)): no path is looked up again.
fn attach(tree: &OwnedFd, target: &OwnedFd) -> io::Result<()> {
    // SAFETY: move_mount(2) with two descriptors and empty paths.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Masks paths: /dev/null over a file, an empty read-only tmpfs over a
/// directory. Every masked directory shows the same tmpfs (one
/// superblock, bound again for each), and every mount goes onto the
/// descriptor that found the path: a mask costs a lookup and two calls.
pub struct Masker<'a> {
    /// The first masked directory's tmpfs, once mounted.
    empty: Option<OwnedFd>,
    /// The agent's empty read-only tmpfs, for a container that cannot
    /// remount it (see `Containers::shared_mask`): bound instead of a new
    /// one (a tmpfs superblock costs ~60 ms when emulated). A path in the
    /// guest's tree, which the init's mount namespace has a copy of until
    /// the pivot.
    shared: Option<&'a Path>,
}

impl<'a> Masker<'a> {
    pub fn new(shared: Option<&'a Path>) -> Masker<'a> {
        Masker {
            empty: None,
            shared,
        }
    }

    pub fn mask(&mut self, root: BorrowedFd<'_>, path: &Path) -> Result<(), String> {
        let fd = match open_in_root(root, path, libc::O_PATH, 0) {
            Ok(fd) => fd,
            Err(e) if missing(&e) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        if !paths::is_dir(&fd).map_err(|e| e.to_string())? {
            let null = clone_tree(libc::AT_FDCWD, c"/dev/null", false)
                .map_err(|e| format!("/dev/null: {e}"))?;
            return attach(&null, &fd).map_err(|e| e.to_string());
        }
        if self.empty.is_none() {
            // Missing (a failed set-up of the agent's): a tmpfs of our own.
            self.empty = self.shared.and_then(|dir| paths::open_dir(dir).ok());
        }
        if let Some(empty) = &self.empty {
            let tree = clone_tree(empty.as_raw_fd(), c"", false).map_err(|e| e.to_string())?;
            return attach(&tree, &fd).map_err(|e| e.to_string());
        }
        mount(
            Some("tmpfs"),
            &fd_path(&fd),
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None,
        )
        .map_err(|e| e.to_string())?;
        let top = open_in_root(root, path, libc::O_PATH, 0).map_err(|e| e.to_string())?;
        self.empty = Some(top);
        Ok(())
    }
}

/// A read-only bind of `path` (with what is mounted below it) over
/// itself; only the top mount is made read-only, as with runc.
pub fn make_readonly(root: BorrowedFd<'_>, path: &Path) -> Result<(), String> {
    let fd = match open_in_root(root, path, libc::O_PATH, 0) {
        Ok(fd) => fd,
        Err(e) if missing(&e) => return Ok(()),
        Err(e) => return Err(e.to_string()),
    };
    let tree = clone_tree(fd.as_raw_fd(), c"", true).map_err(|e| e.to_string())?;
    let readonly = MountAttr {
        set: MOUNT_ATTR_RDONLY,
        clear: 0,
    };
    readonly.apply_top(&tree).map_err(|e| e.to_string())?;
    attach(&tree, &fd).map_err(|e| e.to_string())
}
