//! tmpfs mounts as runc makes them: the new tmpfs takes the mode of the
//! directory it covers (unless the options give one), and with
//! `tmpcopyup` (podman's `--read-only` puts it on /run, /tmp and /var/tmp,
//! and on every `--tmpfs`) it gets a copy of what the image had there:
//! files with their content, directories, symlinks, device nodes and
//! fifos, with modes, owners and access/modification times. Extended
//! attributes and hard links are not kept (nor are they by runc).
//!
//! Every guest syscall is expensive on an emulating host, so the copy
//! makes few: the covered directory is opened before the mount (the
//! descriptor still reaches it afterwards), so there is no scratch mount
//! to move; it is listed with one getdents64 call per 32 KiB, and nothing
//! more happens when it is empty, which it usually is. Each file costs
//! its stat, two opens, one sendfile, the times and two closes; owners
//! and set-id bits only when they need it.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::mount::MsFlags;

use super::paths::{fd_path, make_dir, open_in_root};

fn last_error<T>() -> io::Result<T> {
    Err(io::Error::last_os_error())
}

fn with_name(e: io::Error, what: &str, name: &CStr) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", name.to_string_lossy()))
}

/// Mounts a tmpfs at `dest` in `root`; see the module's description.
pub fn mount(
    root: BorrowedFd<'_>,
    dest: &Path,
    source: &str,
    flags: MsFlags,
    data: &str,
    copyup: bool,
) -> Result<(), String> {
    let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY;
    // Only a copy-up lists the covered directory; for its mode a path
    // descriptor does (opening a directory of a virtio-fs root for reading
    // is two round trips to the host: OPENDIR and RELEASEDIR).
    let covered_flags = if copyup {
        dir_flags
    } else {
        libc::O_PATH | libc::O_DIRECTORY
    };
    let covered = match open_in_root(root, dest, covered_flags, 0) {
        Ok(fd) => Some(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => None,
        Err(e) => return Err(format!("mount point: {e}")),
    };
    let mut options = Vec::new();
    let mut names = Vec::new();
    let target = match covered {
        Some(fd) => {
            let st = fstat(&fd).map_err(|e| format!("mount point: {e}"))?;
            // Options later in the list win: an explicit mode= stays.
            options.push(format!("mode={:o}", st.st_mode & 0o7777));
            if copyup {
                names = entries(&fd).map_err(|e| format!("tmpcopyup: listing: {e}"))?;
            }
            fd
        }
        // Found missing just now: no second lookup.
        None => make_dir(root, dest, 0o755).map_err(|e| format!("mount point: {e}"))?,
    };
    if !data.is_empty() {
        options.push(data.to_string());
    }
    let data = options.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    let copying = !names.is_empty();
    // A read-only tmpfs is filled first and made read-only after.
    let first = if copying {
        flags - MsFlags::MS_RDONLY
    } else {
        flags
    };
    nix::mount::mount(
        Some(source),
        fd_path(&target).as_str(),
        Some("tmpfs"),
        first,
        data,
    )
    .map_err(|e| format!("tmpfs: {e}"))?;
    if copying {
        let top = open_in_root(root, dest, dir_flags, 0)
            .map_err(|e| format!("tmpcopyup: the new tmpfs: {e}"))?;
        // SAFETY: geteuid(2)/getegid(2) cannot fail.
        let me = unsafe { (libc::geteuid(), libc::getegid()) };
        copy_entries(&target, &names, &top, me)
            .map_err(|e| format!("tmpcopyup from the image's {}: {e}", dest.display()))?;
        if flags.contains(MsFlags::MS_RDONLY) {
            nix::mount::mount(
                None::<&str>,
                fd_path(&top).as_str(),
                None::<&str>,
                flags | MsFlags::MS_REMOUNT,
                data,
            )
            .map_err(|e| format!("tmpfs: making it read-only: {e}"))?;
        }
    }
    Ok(())
}

fn fstat(fd: &impl AsRawFd) -> io::Result<libc::stat> {
    // SAFETY: fstat(2) fills the zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } < 0 {
        return last_error();
    }
    Ok(st)
}

/// The names in the directory `dir` (without `.` and `..`), read from its
/// current offset.
pub fn entries(dir: &impl AsRawFd) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        // SAFETY: getdents64(2) fills at most buf.len() bytes of buf.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        if n < 0 {
            return last_error();
        }
        if n == 0 {
            return Ok(names);
        }
        let mut at = 0usize;
        let end = n as usize;
        // struct linux_dirent64: d_ino (8), d_off (8), d_reclen (2),
        // d_type (1), then the NUL-terminated name.
        while at + 19 <= end {
            let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if reclen == 0 || at + reclen > end {
                break;
            }
            let name = CStr::from_bytes_until_nul(&buf[at + 19..at + reclen])
                .map_err(|_| io::Error::from_raw_os_error(libc::EIO))?;
            if name.to_bytes() != b"." && name.to_bytes() != b".." {
                names.push(name.to_owned());
            }
            at += reclen;
        }
    }
}

fn open_at(dir: &impl AsRawFd, name: &CStr, flags: libc::c_int, mode: u32) -> io::Result<OwnedFd> {
    // SAFETY: openat(2) with a plain name relative to a directory we hold.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode,
        )
    };
    if fd < 0 {
        return last_error();
    }
    // SAFETY: a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn times(st: &libc::stat) -> [libc::timespec; 2] {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}

/// Owner, set-id bits and times of a copy, through its descriptor or, with
/// `name`, through its name in `dir` (symlinks and nodes, not opened).
fn finish(
    fd: libc::c_int,
    name: Option<&CStr>,
    st: &libc::stat,
    me: (u32, u32),
    symlink: bool,
) -> io::Result<()> {
    let path = name.map_or(c"".as_ptr(), |n| n.as_ptr());
    let nofollow = libc::AT_SYMLINK_NOFOLLOW
        | if name.is_none() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    if (st.st_uid, st.st_gid) != me {
        // SAFETY: fchownat(2) on a descriptor or a plain name in it.
        if unsafe { libc::fchownat(fd, path, st.st_uid, st.st_gid, nofollow) } < 0 {
            let e = io::Error::last_os_error();
            // An owner that the container's user namespace does not map
            // cannot be given: the copy stays ours.
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(e);
            }
        }
    }
    // chown drops set-id bits and mkdir does not set them: put them back.
    if !symlink && st.st_mode & 0o6000 != 0 {
        let ret = match name {
            // SAFETY: fchmod(2)/fchmodat(2) on what we made.
            None => unsafe { libc::fchmod(fd, st.st_mode & 0o7777) },
            Some(n) => unsafe { libc::fchmodat(fd, n.as_ptr(), st.st_mode & 0o7777, 0) },
        };
        if ret < 0 {
            return last_error();
        }
    }
    let t = times(st);
    // SAFETY: futimens(3)/utimensat(2) read two timespecs.
    let ret = unsafe {
        match name {
            None => libc::futimens(fd, t.as_ptr()),
            Some(n) => libc::utimensat(fd, n.as_ptr(), t.as_ptr(), libc::AT_SYMLINK_NOFOLLOW),
        }
    };
    if ret < 0 {
        return last_error();
    }
    Ok(())
}

fn copy_data(from: &OwnedFd, to: &OwnedFd, size: i64) -> io::Result<()> {
    let mut left = u64::try_from(size).unwrap_or(0);
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        // SAFETY: sendfile(2) between two descriptors we hold, from the
        // input's own offset.
        let n = unsafe {
            libc::sendfile(
                to.as_raw_fd(),
                from.as_raw_fd(),
                std::ptr::null_mut(),
                chunk,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // A filesystem that cannot splice: copy through a buffer.
                Some(libc::EINVAL) | Some(libc::ENOSYS) => return copy_by_reading(from, to),
                _ => return Err(e),
            }
        }
        if n == 0 {
            // The file shrank meanwhile: what there was is copied.
            break;
        }
        left -= n as u64;
    }
    Ok(())
}

fn copy_by_reading(from: &OwnedFd, to: &OwnedFd) -> io::Result<()> {
    use std::io::{Read, Write};
    let mut from = std::fs::File::from(from.try_clone()?);
    let mut to = std::fs::File::from(to.try_clone()?);
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        to.write_all(&buf[..n])?;
    }
}

/// Copies `names` of the directory `from` into the directory `to`, whole
/// trees for directories. Neither side follows a symlink: every name is
/// opened with O_NOFOLLOW relative to a directory already held.
pub fn copy_entries(
    from: &impl AsRawFd,
    names: &[CString],
    to: &impl AsRawFd,
    me: (u32, u32),
) -> io::Result<()> {
    for name in names {
        // SAFETY: fstatat(2) fills the zeroed struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe {
            libc::fstatat(
                from.as_raw_fd(),
                name.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        } < 0
        {
            return Err(with_name(io::Error::last_os_error(), "stat", name));
        }
        let mode = st.st_mode & 0o7777;
        let result = match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => copy_dir(from, name, to, &st, me),
            libc::S_IFREG => (|| {
                // Non-blocking: had the file become a fifo since the stat,
                // opening it would wait for a writer.
                let src = open_at(from, name, libc::O_RDONLY | libc::O_NONBLOCK, 0)?;
                let dst = open_at(
                    to,
                    name,
                    libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                    mode,
                )?;
                copy_data(&src, &dst, st.st_size)?;
                finish(dst.as_raw_fd(), None, &st, me, false)
            })(),
            libc::S_IFLNK => (|| {
                let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
                // SAFETY: readlinkat(2) writes at most buf.len() bytes.
                let n = unsafe {
                    libc::readlinkat(
                        from.as_raw_fd(),
                        name.as_ptr(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                    )
                };
                if n < 0 {
                    return last_error();
                }
                buf.truncate(n as usize);
                let target =
                    CString::new(buf).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
                // SAFETY: symlinkat(2) with C strings, in a directory we hold.
                if unsafe { libc::symlinkat(target.as_ptr(), to.as_raw_fd(), name.as_ptr()) } < 0 {
                    return last_error();
                }
                finish(to.as_raw_fd(), Some(name), &st, me, true)
            })(),
            // Device nodes, fifos and sockets.
            _ => (|| {
                // SAFETY: mknodat(2) with a plain name in a directory we hold.
                if unsafe { libc::mknodat(to.as_raw_fd(), name.as_ptr(), st.st_mode, st.st_rdev) }
                    < 0
                {
                    return last_error();
                }
                finish(to.as_raw_fd(), Some(name), &st, me, false)
            })(),
        };
        result.map_err(|e| with_name(e, "copying", name))?;
    }
    Ok(())
}

fn copy_dir(
    from: &impl AsRawFd,
    name: &CStr,
    to: &impl AsRawFd,
    st: &libc::stat,
    me: (u32, u32),
) -> io::Result<()> {
    // SAFETY: mkdirat(2) with a plain name in a directory we hold.
    if unsafe { libc::mkdirat(to.as_raw_fd(), name.as_ptr(), st.st_mode & 0o7777) } < 0 {
        return last_error();
    }
    let dir_flags = libc::O_RDONLY | libc::O_DIRECTORY;
    let src = open_at(from, name, dir_flags, 0)?;
    let dst = open_at(to, name, dir_flags, 0)?;
    let names = entries(&src)?;
    copy_entries(&src, &names, &dst, me)?;
    // Last: copying into it changed its times.
    finish(dst.as_raw_fd(), None, st, me, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};

    use crate::container::paths::tests::TempDir;

    fn open(path: &Path) -> std::fs::File {
        std::fs::File::open(path).unwrap()
    }

    #[test]
    fn entries_lists_everything_but_dots() {
        let t = TempDir::new("entries");
        assert!(entries(&open(&t.0)).unwrap().is_empty());
        for i in 0..600 {
            // Past one 32 KiB getdents64 buffer.
            std::fs::write(t.0.join(format!("a-rather-long-file-name-{i:04}")), "").unwrap();
        }
        let mut names = entries(&open(&t.0)).unwrap();
        names.sort();
        assert_eq!(names.len(), 600);
        assert_eq!(names[0].to_str().unwrap(), "a-rather-long-file-name-0000");
    }

    #[test]
    fn a_tree_is_copied_with_modes_owners_times_and_links() {
        let t = TempDir::new("copyup");
        let (src, dst) = (t.0.join("src"), t.0.join("dst"));
        std::fs::create_dir_all(src.join("sub/deeper")).unwrap();
        std::fs::create_dir(&dst).unwrap();
        std::fs::write(src.join("file"), "content\n").unwrap();
        std::fs::write(src.join("sub/deeper/big"), vec![7u8; 300_000]).unwrap();
        std::fs::write(src.join("setuid"), "").unwrap();
        std::fs::set_permissions(src.join("setuid"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        std::fs::set_permissions(src.join("sub"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::write(src.join("private"), "x").unwrap();
        std::fs::set_permissions(src.join("private"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::os::unix::fs::symlink("../elsewhere", src.join("sub/link")).unwrap();
        let fifo = CString::new(src.join("fifo").to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o640) }, 0);
        let root = unsafe { libc::geteuid() } == 0;
        if root {
            std::os::unix::fs::chown(src.join("file"), Some(1000), Some(1001)).unwrap();
            std::os::unix::fs::lchown(src.join("sub/link"), Some(1002), Some(1003)).unwrap();
            std::os::unix::fs::chown(src.join("setuid"), Some(1000), Some(1000)).unwrap();
            // chown dropped the bit.
            std::fs::set_permissions(src.join("setuid"), std::fs::Permissions::from_mode(0o4755))
                .unwrap();
        }
        // An old modification time, to see it kept.
        let old = CString::new(src.join("sub/deeper").to_str().unwrap()).unwrap();
        let when = [
            libc::timespec {
                tv_sec: 1_000_000,
                tv_nsec: 5,
            },
            libc::timespec {
                tv_sec: 2_000_000,
                tv_nsec: 7,
            },
        ];
        assert_eq!(
            unsafe { libc::utimensat(libc::AT_FDCWD, old.as_ptr(), when.as_ptr(), 0) },
            0
        );

        // SAFETY: umask(2); build_container runs the copy under umask 0.
        let mask = unsafe { libc::umask(0) };
        let from = open(&src);
        let names = entries(&from).unwrap();
        let me = unsafe { (libc::geteuid(), libc::getegid()) };
        let result = copy_entries(&from, &names, &open(&dst), me);
        unsafe { libc::umask(mask) };
        result.unwrap();

        assert_eq!(
            std::fs::read_to_string(dst.join("file")).unwrap(),
            "content\n"
        );
        assert_eq!(
            std::fs::read(dst.join("sub/deeper/big")).unwrap(),
            vec![7u8; 300_000]
        );
        let meta = |p: &str| std::fs::symlink_metadata(dst.join(p)).unwrap();
        assert_eq!(meta("sub").mode() & 0o7777, 0o1777);
        assert_eq!(meta("private").mode() & 0o7777, 0o600);
        assert_eq!(meta("setuid").mode() & 0o7777, 0o4755);
        assert!(meta("fifo").file_type().is_fifo());
        assert_eq!(meta("fifo").mode() & 0o7777, 0o640);
        assert_eq!(
            std::fs::read_link(dst.join("sub/link")).unwrap(),
            Path::new("../elsewhere")
        );
        assert_eq!(meta("sub/deeper").mtime(), 2_000_000);
        assert_eq!(meta("sub/deeper").mtime_nsec(), 7);
        assert_eq!(meta("sub/deeper").atime(), 1_000_000);
        if root {
            assert_eq!((meta("file").uid(), meta("file").gid()), (1000, 1001));
            assert_eq!(
                (meta("sub/link").uid(), meta("sub/link").gid()),
                (1002, 1003)
            );
            assert_eq!(meta("setuid").uid(), 1000);
        }
    }
}
