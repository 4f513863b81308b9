//! Paths inside a container's root filesystem, resolved as if the root
//! were `/`: `..` stops at the root and a symlink (absolute or relative)
//! is followed within it, so nothing the image holds can send a mount
//! outside. The kernel does the resolution (openat2 with
//! RESOLVE_IN_ROOT, Linux 5.6+), and mounts then go onto the descriptor it
//! returned (`/proc/self/fd/N`), so nothing can swap a component in
//! between.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// `path` as components relative to the root: the root itself is empty.
/// Leading `/`, `.` and empty components are dropped; `..` is kept (the
/// kernel stops it at the root).
pub fn relative(path: &Path) -> PathBuf {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Component::Normal(n)),
            Component::ParentDir => Some(Component::ParentDir),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

fn cstring(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    CString::new(if bytes.is_empty() { b"." } else { bytes })
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// `struct open_how` of openat2(2).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `path` (relative to `root`, which must be a directory) with
/// `flags`, resolving every component within `root`. Magic links
/// (/proc/self/fd/...) are refused: they lead out of any root.
pub fn open_in_root(
    root: BorrowedFd<'_>,
    path: &Path,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> io::Result<OwnedFd> {
    let path = cstring(&relative(path))?;
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    loop {
        // SAFETY: openat2(2) reads the path and the open_how we pass.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            // SAFETY: openat2 returned a new descriptor that we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // The kernel asks for a retry when a rename raced the lookup.
            Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
            Some(libc::ENOSYS) => {
                return Err(io::Error::new(
                    e.kind(),
                    "openat2 is not available (Linux 5.6 or later is needed)",
                ))
            }
            _ => return Err(e),
        }
    }
}

/// An `O_PATH` descriptor of a directory at `path` in `root`, creating the
/// missing directories (mode `mode`) on the way, each within the root.
pub fn mkdir_all(root: BorrowedFd<'_>, path: &Path, mode: libc::mode_t) -> io::Result<OwnedFd> {
    match open_in_root(root, path, DIR_FLAGS, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => make_dir(root, path, mode),
        other => other,
    }
}

const DIR_FLAGS: libc::c_int = libc::O_PATH | libc::O_DIRECTORY;

/// [`mkdir_all`] for a `path` found missing already. The deepest existing
/// directory is looked for from the end (`/dev` of `/dev/pts`: one lookup
/// more), each lookup resolved in the root as before.
pub fn make_dir(root: BorrowedFd<'_>, path: &Path, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let rel = relative(path);
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return make_dir_walk(root, &rel, mode);
    };
    let parent_fd = mkdir_all(root, parent, mode)?;
    mkdir_at(&parent_fd, name, &rel, mode)?;
    open_in_root(root, &rel, DIR_FLAGS, 0)
}

/// `name` in `parent`; something that is there already but did not
/// resolve to a directory is an error.
fn mkdir_at(
    parent: &OwnedFd,
    name: &std::ffi::OsStr,
    shown: &Path,
    mode: libc::mode_t,
) -> io::Result<()> {
    let name = cstring(Path::new(name))?;
    // SAFETY: mkdirat(2) with a descriptor we own and a C string.
    if unsafe { libc::mkdirat(parent.as_raw_fd(), name.as_ptr(), mode) } < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EEXIST) {
            // Something is there that does not resolve: a dangling
            // symlink, say. Do not create its target.
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "{} exists but does not resolve to a directory in the root (dangling symlink?)",
                    shown.display()
                ),
            ));
        }
        return Err(e);
    }
    Ok(())
}

/// [`make_dir`] component by component from the root, for paths that end
/// in `..`.
fn make_dir_walk(root: BorrowedFd<'_>, rel: &Path, mode: libc::mode_t) -> io::Result<OwnedFd> {
    let mut prefix = PathBuf::new();
    let mut parent = open_in_root(root, &prefix, DIR_FLAGS, 0)?;
    for component in rel.components() {
        prefix.push(component);
        match open_in_root(root, &prefix, DIR_FLAGS, 0) {
            Ok(fd) => {
                parent = fd;
                continue;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let Component::Normal(name) = component else {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        };
        mkdir_at(&parent, name, &prefix, mode)?;
        parent = open_in_root(root, &prefix, DIR_FLAGS, 0)?;
    }
    Ok(parent)
}

/// An `O_PATH` descriptor of the file at `path` in `root`, creating it
/// (empty, mode `mode`) and its directories if missing: the mount point of
/// a file bind mount.
pub fn create_file(root: BorrowedFd<'_>, path: &Path, mode: libc::mode_t) -> io::Result<OwnedFd> {
    match open_in_root(root, path, libc::O_PATH, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        other => return other,
    }
    let rel = relative(path);
    if let Some(parent) = rel.parent() {
        mkdir_all(root, parent, 0o755)?;
    }
    match open_in_root(
        root,
        &rel,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW,
        mode,
    ) {
        // EEXIST: a symlink (or a racing creator); resolve what is there.
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e),
    }
    open_in_root(root, &rel, libc::O_PATH, 0)
}

/// The path through which the kernel reaches what `fd` refers to, for
/// calls that take a path (mount(2)).
pub fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Whether `fd` (any kind of descriptor) is a directory.
pub fn is_dir(fd: &impl AsRawFd) -> io::Result<bool> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat(2) fills the stat buffer.
    if unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fstat succeeded, so the buffer is initialised.
    let st = unsafe { st.assume_init() };
    Ok(st.st_mode & libc::S_IFMT == libc::S_IFDIR)
}

/// Opens a directory as an `O_PATH` descriptor, following symlinks as
/// usual (for the root itself, which the host names).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    // SAFETY: open(2) with a C string.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: open returned a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::symlink;

    /// A scratch directory of a test, removed on drop.
    pub(in crate::container) struct TempDir(pub(in crate::container) PathBuf);

    impl TempDir {
        pub(in crate::container) fn new(name: &str) -> TempDir {
            let dir =
                std::env::temp_dir().join(format!("runvm-paths-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Where the kernel says `fd` is.
    fn where_is(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(fd_path(fd)).unwrap()
    }

    #[test]
    fn relative_drops_the_root_and_dots_but_keeps_dotdot() {
        assert_eq!(relative(Path::new("/a/./b//c/")), PathBuf::from("a/b/c"));
        assert_eq!(relative(Path::new("/")), PathBuf::new());
        assert_eq!(relative(Path::new("../x")), PathBuf::from("../x"));
        assert_eq!(relative(Path::new("rel")), PathBuf::from("rel"));
    }

    #[test]
    fn symlinks_and_dotdot_stay_inside_the_root() {
        let outside = TempDir::new("outside");
        let dir = TempDir::new("root");
        let root_path = dir.0.join("root");
        std::fs::create_dir_all(root_path.join("etc")).unwrap();
        symlink("/etc", root_path.join("abs")).unwrap();
        symlink("../../../..", root_path.join("up")).unwrap();
        symlink(&outside.0, root_path.join("out")).unwrap();
        let root = open_dir(&root_path).unwrap();
        let root_fd = root.as_fd();

        let etc = open_in_root(root_fd, Path::new("/abs"), libc::O_PATH, 0).unwrap();
        assert_eq!(where_is(&etc), root_path.join("etc"));
        let top = open_in_root(root_fd, Path::new("/up/../.."), libc::O_PATH, 0).unwrap();
        assert_eq!(where_is(&top), root_path);

        // mkdir_all through an absolute symlink creates inside the root.
        let made = mkdir_all(root_fd, Path::new("/abs/sub/dir"), 0o755).unwrap();
        assert_eq!(where_is(&made), root_path.join("etc/sub/dir"));
        // A symlink to a host directory is dangling inside the root:
        // refused, and nothing is made outside.
        assert!(mkdir_all(root_fd, Path::new("/out/sub"), 0o755).is_err());
        assert_eq!(std::fs::read_dir(&outside.0).unwrap().count(), 0);

        let file = create_file(root_fd, Path::new("/up/../etc/hosts"), 0o644).unwrap();
        assert_eq!(where_is(&file), root_path.join("etc/hosts"));
        assert!(!is_dir(&file).unwrap());
        assert!(is_dir(&made).unwrap());
    }

    #[test]
    fn magic_links_and_dangling_symlinks_are_refused() {
        let dir = TempDir::new("magic");
        symlink("/proc/self/root", dir.0.join("magic")).unwrap();
        symlink("nowhere/deeper", dir.0.join("dangling")).unwrap();
        let root = open_dir(&dir.0).unwrap();
        // /proc/self/root inside the root is just a missing path.
        assert!(open_in_root(root.as_fd(), Path::new("/magic"), libc::O_PATH, 0).is_err());
        let err = mkdir_all(root.as_fd(), Path::new("/dangling/x"), 0o755).unwrap_err();
        assert!(err.to_string().contains("dangling"), "{err}");
        assert!(!dir.0.join("nowhere").exists());
    }
}
