//! What the share binds from the host: a rootfs or a bind mount's source,
//! opened once. Like runc, runvm follows symlinks in a source path (the
//! bundle's author names host paths), but the object opened is the one
//! that is checked and the one that is mounted: the mount is cloned from
//! the descriptor (open_tree on it), so a path swapped for a symlink after
//! the check cannot redirect the mount.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use super::namespace::in_namespace;
use super::{io_error, sys, ShareError};

/// A host file or directory held open (O_PATH) until it is bound.
pub struct MountSource {
    path: PathBuf,
    fd: OwnedFd,
    kind: libc::mode_t,
}

impl MountSource {
    /// Opens `path` (following symlinks, as runc does for bind sources).
    pub fn open(path: &Path) -> io::Result<MountSource> {
        let fd = sys::open_path(path)?;
        let kind = sys::file_type(&fd)?;
        Ok(MountSource {
            path: path.to_owned(),
            fd,
            kind,
        })
    }

    /// The path it was opened by (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_dir(&self) -> bool {
        self.kind == libc::S_IFDIR
    }
}

impl fmt::Debug for MountSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountSource")
            .field("path", &self.path)
            .field("dir", &self.is_dir())
            .finish()
    }
}

/// How a source is bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindFlags {
    pub readonly: bool,
    /// The mounts below the source come along (`rbind`; a rootfs always).
    pub recursive: bool,
}

/// Binds `source` at `point` (relative) below the share directory `share`
/// in the namespace `ns`, with nosuid, nodev, private propagation and
/// optionally read-only set before it is attached (flags do not
/// propagate: set after attaching they would miss virtiofsd's copy).
/// `point` is opened there with no symlink on the way (runvm made it; a
/// symlink there can only have been planted).
pub(super) fn bind_detached(
    ns: libc::c_int,
    source: &MountSource,
    share: &Path,
    point: &Path,
    flags: BindFlags,
) -> Result<(), ShareError> {
    let tree = sys::open_tree(&source.fd, flags.recursive)
        .map_err(io_error("cannot clone the mount tree of", &source.path))?;
    let mut set = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if flags.readonly {
        set |= sys::MOUNT_ATTR_RDONLY;
    }
    sys::mount_setattr(&tree, set, libc::MS_PRIVATE)
        .map_err(io_error("cannot set the mount flags of", &source.path))?;
    in_namespace(ns, || {
        // The share's top as mounted there (the read-only bind).
        let top = sys::open_path(share)?;
        let target = sys::open_beneath(&top, point)?;
        sys::move_mount(&tree, &target)
    })
    .map_err(io_error("cannot attach a mount at", &share.join(point)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_what_was_opened_not_what_the_path_names_later() {
        let base = std::env::temp_dir().join(format!("runvm-source-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("dir")).unwrap();
        std::fs::write(base.join("file"), "x").unwrap();
        std::os::unix::fs::symlink(base.join("dir"), base.join("link")).unwrap();
        let dir = MountSource::open(&base.join("dir")).expect("dir");
        assert!(dir.is_dir());
        assert!(!MountSource::open(&base.join("file"))
            .expect("file")
            .is_dir());
        // Symlinks in a source are followed, as runc does.
        let through = MountSource::open(&base.join("link")).expect("link");
        assert!(through.is_dir());
        assert_eq!(through.path(), base.join("link"));
        // Swapping the path afterwards changes nothing about the object.
        std::fs::remove_file(base.join("link")).unwrap();
        std::fs::write(base.join("link"), "now a file").unwrap();
        assert!(through.is_dir());
        let missing = MountSource::open(&base.join("missing")).expect_err("missing");
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_planted_symlink_on_the_way_to_a_target_is_refused() {
        let base = std::env::temp_dir().join(format!("runvm-target-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("real/point")).unwrap();
        std::os::unix::fs::symlink(base.join("real"), base.join("planted")).unwrap();
        std::os::unix::fs::symlink("real", base.join("relative")).unwrap();
        let top = sys::open_dir(&base).unwrap();
        assert!(sys::open_beneath(&top, Path::new("real/point")).is_ok());
        for (path, errno) in [
            ("planted/point", libc::ELOOP),
            ("relative/point", libc::ELOOP),
            ("../x", libc::EXDEV),
        ] {
            let refused = sys::open_beneath(&top, Path::new(path)).expect_err(path);
            assert_eq!(refused.raw_os_error(), Some(errno), "{path}: {refused}");
        }
        std::fs::remove_dir_all(&base).unwrap();
    }
}
