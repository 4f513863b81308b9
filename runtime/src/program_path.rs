//! The container's program found in its $PATH on the host. A process whose
//! `args[0]` has no `/` runs the first executable of that name in its
//! PATH, which the agent searches after setting the container up, as runc
//! does. In the guest each directory that is not there is a round trip
//! through virtio-fs (a miss is not cached); here the same root is a few
//! native syscalls away. The host names the program only when its answer
//! is the one the agent would reach:
//! - no mount or masked path of the spec covers a place the search looks
//!   at, none of them is placed through a symlink of the rootfs or inside
//!   a bind mount (whose contents the host does not see here);
//! - no symlink but a last-component one to a file beside it or at a
//!   plain absolute path is followed;
//! - every directory on the way and the file are open to every class of
//!   user (x for owner, group and others, no ACL), so neither the
//!   container's user nor its capabilities can change the answer.
//!
//! Otherwise the search is left to the agent, which also runs the search
//! when this user may not run the program it is given.

use std::fs::{File, Metadata};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use runvm_agent_api::oci::Spec;

use crate::share::sys;

/// As the agent's (and runc's) when the process has no PATH.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Owner, group and others may search a directory or run a file.
const ALL_X: u32 = 0o111;

/// The absolute path (in the container) of the program `spec` runs, when
/// the host can tell it for certain from `rootfs` (the host path of its
/// root); `None` leaves the search to the agent.
pub fn resolve(spec: &Spec, rootfs: &Path) -> Option<String> {
    let process = spec.process.as_ref()?;
    let name = process.args.as_ref()?.first()?;
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return None;
    }
    let path = process
        .env
        .iter()
        .flatten()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let hidden: Vec<&Path> = spec
        .mounts
        .iter()
        .flatten()
        .map(|m| m.destination.as_path())
        .chain(
            spec.linux
                .iter()
                .flat_map(|l| l.masked_paths.iter().flatten())
                .map(Path::new),
        )
        .collect();
    let root = sys::open_path(rootfs).ok()?;
    // The agent places mounts and masks through symlinks in the rootfs
    // (resolved within it), and inside bind mounts whose contents the host
    // does not see here: the places compared below are plain paths only
    // when neither happens.
    if !hidden.iter().all(|d| plain_on_host(&root, d)) {
        return None;
    }
    let binds: Vec<&Path> = spec
        .mounts
        .iter()
        .flatten()
        .filter(|m| {
            m.typ.as_deref() == Some("bind")
                || m.options
                    .iter()
                    .flatten()
                    .any(|o| o == "bind" || o == "rbind")
        })
        .map(|m| m.destination.as_path())
        .collect();
    let inside_a_bind = |d: &Path| binds.iter().any(|b| covers(b, d) && !covers(d, b));
    if hidden.iter().any(|d| inside_a_bind(d)) {
        return None;
    }
    for dir in path.split(':') {
        // A relative entry depends on the working directory: the agent's.
        if !dir.starts_with('/') {
            return None;
        }
        let candidate = Path::new(dir).join(name);
        if hidden.iter().any(|d| covers(d, &candidate)) {
            return None;
        }
        match look(&root, &candidate, &hidden, true) {
            Look::Runs => return candidate.to_str().map(str::to_owned),
            Look::Not => continue,
            Look::Unsure => return None,
        }
    }
    // Not found: the agent says so, in its own words.
    None
}

/// What the agent's search would make of one candidate.
#[derive(Debug, PartialEq)]
enum Look {
    /// An executable file anyone may run: the search ends here.
    Runs,
    /// Not there, or nothing anyone can run: the search goes on.
    Not,
    /// It depends on what the host cannot see or judge.
    Unsure,
}

/// `path` as the search meets it; a last-component link is followed once
/// (`may_follow`), to a file that must then be a program or missing.
fn look(root: &OwnedFd, path: &Path, hidden: &[&Path], may_follow: bool) -> Look {
    match dirs_on_the_way(root, path) {
        Look::Runs => {}
        other => return other,
    }
    let (file, meta) = match stat_in(root, path) {
        Ok(found) => found,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Look::Not,
        Err(_) => return Look::Unsure,
    };
    let kind = meta.file_type();
    if kind.is_file() {
        judge(&file, meta.mode())
    } else if kind.is_symlink() {
        match link_target(&file, path) {
            Some(target) if may_follow && !hidden.iter().any(|d| covers(d, &target)) => {
                look(root, &target, hidden, false)
            }
            _ => Look::Unsure,
        }
    } else if kind.is_dir() || may_follow {
        // A directory (or, named in PATH, a device or a FIFO) is not a
        // program: execve fails there and the search goes on.
        Look::Not
    } else {
        Look::Unsure
    }
}

/// `path` (below the root; a leading `/` is the root's) opened as a handle
/// without following any symlink, even its last component, nor leaving the
/// root's file system, and what it is.
fn stat_in(root: &OwnedFd, path: &Path) -> io::Result<(File, Metadata)> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH | libc::RESOLVE_NO_XDEV;
    let file = File::from(sys::openat2(
        root,
        relative,
        libc::O_PATH | libc::O_NOFOLLOW,
        resolve,
    )?);
    let meta = file.metadata()?;
    Ok((file, meta))
}

/// A regular file with these permission bits: runnable by anyone (x for
/// its owner, its group and others: the kernel checks only the class the
/// user falls in), by no one, or only by some users.
fn judge(file: &File, mode: u32) -> Look {
    if mode & 0o111 == 0 {
        Look::Not
    } else if mode & ALL_X == ALL_X && !has_acl(file) {
        Look::Runs
    } else {
        Look::Unsure
    }
}

/// Whether the file has an access ACL, which can refuse a user what the
/// mode bits grant.
fn has_acl(file: &File) -> bool {
    let Ok(path) = std::ffi::CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())) else {
        return true;
    };
    // SAFETY: getxattr(2) of the size only, with C strings; the path is
    // the descriptor's own (it names the file it was opened on).
    let size = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    size >= 0
        || !matches!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA) | Some(libc::EOPNOTSUPP)
        )
}

/// The directories above `path` (below the root): `Runs` when each is a
/// real directory anyone may search, `Not` when one is missing or not a
/// directory (execve fails there and the search goes on).
fn dirs_on_the_way(root: &OwnedFd, path: &Path) -> Look {
    let mut dir = PathBuf::new();
    let Some(parent) = path.parent() else {
        return Look::Unsure;
    };
    for component in parent.components() {
        match component {
            Component::RootDir => continue,
            Component::Normal(name) => dir.push(name),
            _ => return Look::Unsure,
        }
        let (file, meta) = match stat_in(root, &dir) {
            Ok(found) => found,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Look::Not,
            Err(_) => return Look::Unsure,
        };
        let kind = meta.file_type();
        if kind.is_dir() && meta.mode() & ALL_X == ALL_X && !has_acl(&file) {
            continue;
        }
        // A link is followed by the guest, not here.
        if kind.is_dir() || kind.is_symlink() {
            return Look::Unsure;
        }
        return Look::Not;
    }
    Look::Runs
}

/// The container path the last-component symlink `link` (open as
/// `handle`) names, when it is a plain one: a name beside it, or an
/// absolute path without `.` or `..` steps.
fn link_target(handle: &File, link: &Path) -> Option<PathBuf> {
    let mut buf = [0u8; 4096];
    // SAFETY: readlinkat(2) of the link the O_PATH descriptor is open on
    // (an empty path), into our buffer, at most its length.
    let n = unsafe {
        libc::readlinkat(
            handle.as_raw_fd(),
            c"".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n <= 0 || n as usize >= buf.len() {
        return None;
    }
    let target = std::str::from_utf8(&buf[..n as usize]).ok()?;
    let plain = |p: &Path| {
        p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::RootDir))
    };
    if target.starts_with('/') {
        let target = PathBuf::from(target);
        plain(&target).then_some(target)
    } else if !target.contains('/') && target != "." && target != ".." {
        Some(link.parent()?.join(target))
    } else {
        None
    }
}

/// Whether no step of `destination` that exists in the rootfs is a
/// symlink (what does not exist yet the agent makes as directories).
fn plain_on_host(root: &OwnedFd, destination: &Path) -> bool {
    let mut at = PathBuf::new();
    for component in destination.components() {
        match component {
            Component::Normal(name) => at.push(name),
            Component::RootDir | Component::CurDir => continue,
            _ => return false,
        }
        match stat_in(root, &at) {
            Ok((_, meta)) if meta.is_dir() => {}
            Ok((_, meta)) => return !meta.file_type().is_symlink(),
            Err(e) => return e.raw_os_error() == Some(libc::ENOENT),
        }
    }
    true
}

/// Whether a mount (or masked path) at `destination` in the container
/// changes what is at `path`: it is `path` or one of its directories. A
/// destination with `..` is taken to cover everything.
fn covers(destination: &Path, path: &Path) -> bool {
    let mut parts = Vec::new();
    for component in destination.components() {
        match component {
            Component::Normal(name) => parts.push(name),
            Component::ParentDir => return true,
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let mut below = path.components().filter_map(|c| match c {
        Component::Normal(name) => Some(name),
        _ => None,
    });
    parts.iter().all(|part| below.next() == Some(part))
}

#[cfg(test)]
#[path = "program_path_tests.rs"]
mod tests;
