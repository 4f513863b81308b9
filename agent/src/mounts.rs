//! The guest's kernel filesystems: one table, mounted in order at boot.

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::mkdir;

use crate::switch_root::Root;

/// One entry of the boot mount table.
#[derive(Debug)]
pub struct Mount {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MsFlags,
    pub data: Option<&'static str>,
    /// Create the mount point first. Set for mount points inside a filesystem
    /// mounted earlier in this table (a fresh devtmpfs has no /dev/pts); the
    /// top-level mount points come with the initramfs.
    pub mkdir: bool,
    /// The kernel mounted it already when it booted from a root disk
    /// (devtmpfs, `CONFIG_DEVTMPFS_MOUNT`): mounting it again would only
    /// stack a second mount of the same filesystem.
    pub kernel_mounts_on_disk: bool,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// Everything PID 1 mounts, in order (parents before children).
pub const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        mkdir: false,
        kernel_mounts_on_disk: false,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        mkdir: false,
        kernel_mounts_on_disk: false,
    },
    // cgroup v2 for the containers' cgroups. nsdelegate: a container's
    // cgroup namespace is a delegation boundary.
    Mount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
        mkdir: false,
        kernel_mounts_on_disk: false,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
        mkdir: false,
        kernel_mounts_on_disk: true,
    },
    Mount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        mkdir: true,
        kernel_mounts_on_disk: false,
    },
    Mount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
        mkdir: true,
        kernel_mounts_on_disk: false,
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
        mkdir: false,
        kernel_mounts_on_disk: false,
    },
];

/// Mount every entry of [`MOUNTS`] that the kernel has not mounted for a
/// guest booted from `root`. Failures are logged and skipped: a guest with
/// a missing filesystem is still more useful than one that panics.
/// Returns the number of failed entries.
pub fn mount_all(root: Root) -> usize {
    let mut failed = 0;
    for m in MOUNTS
        .iter()
        .filter(|m| !(root == Root::Disk && m.kernel_mounts_on_disk))
    {
        if let Err((what, errno)) = mount_one(m) {
            agent_log!(
                "{what} {} ({}) on {} failed: {errno}",
                m.source,
                m.fstype,
                m.target
            );
            failed += 1;
        }
    }
    failed
}

fn mount_one(m: &Mount) -> Result<(), (&'static str, Errno)> {
    if m.mkdir {
        make_dir(m.target).map_err(|e| ("mkdir for", e))?;
    }
    match do_mount(m) {
        // Already mounted (e.g. by the kernel): that is what we wanted.
        Ok(()) | Err(Errno::EBUSY) => Ok(()),
        // The mount point is missing from the image: create it and retry once.
        // Costs nothing on the normal path.
        Err(Errno::ENOENT) if !m.mkdir => {
            make_dir(m.target).map_err(|e| ("mkdir for", e))?;
            match do_mount(m) {
                Ok(()) | Err(Errno::EBUSY) => Ok(()),
                Err(e) => Err(("mount", e)),
            }
        }
        Err(e) => Err(("mount", e)),
    }
}

/// Where the containers' cgroups go: /sys/fs/cgroup when cgroup v2 is
/// mounted there (one statfs).
pub fn cgroup2_root() -> Option<std::path::PathBuf> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let st = nix::sys::statfs::statfs("/sys/fs/cgroup").ok()?;
    (st.filesystem_type().0 as i64 == CGROUP2_SUPER_MAGIC).then(|| "/sys/fs/cgroup".into())
}

fn make_dir(path: &str) -> Result<(), Errno> {
    match mkdir(path, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

fn do_mount(m: &Mount) -> Result<(), Errno> {
    mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_absolute_and_unique() {
        for (i, m) in MOUNTS.iter().enumerate() {
            assert!(m.target.starts_with('/'), "{} not absolute", m.target);
            assert!(
                MOUNTS[..i].iter().all(|o| o.target != m.target),
                "{} mounted twice",
                m.target
            );
        }
    }

    #[test]
    fn parents_are_mounted_before_children() {
        for (i, m) in MOUNTS.iter().enumerate() {
            for later in &MOUNTS[i + 1..] {
                assert!(
                    !m.target.starts_with(&format!("{}/", later.target)),
                    "{} is mounted before its parent {}",
                    m.target,
                    later.target
                );
            }
        }
    }

    #[test]
    fn created_mount_points_live_in_an_earlier_mount() {
        for (i, m) in MOUNTS.iter().enumerate().filter(|(_, m)| m.mkdir) {
            assert!(
                MOUNTS[..i]
                    .iter()
                    .any(|p| m.target.starts_with(&format!("{}/", p.target))),
                "{} is created but not inside an earlier mount",
                m.target
            );
        }
    }

    #[test]
    fn only_devtmpfs_is_left_to_the_kernel() {
        let left: Vec<_> = MOUNTS
            .iter()
            .filter(|m| m.kernel_mounts_on_disk)
            .map(|m| (m.target, m.fstype))
            .collect();
        assert_eq!(left, [("/dev", "devtmpfs")]);
    }

    #[test]
    fn required_filesystems_present() {
        for (target, fstype) in [
            ("/proc", "proc"),
            ("/sys", "sysfs"),
            ("/dev", "devtmpfs"),
            ("/run", "tmpfs"),
        ] {
            assert!(
                MOUNTS
                    .iter()
                    .any(|m| m.target == target && m.fstype == fstype),
                "{fstype} on {target} missing"
            );
        }
        let run = MOUNTS.iter().find(|m| m.target == "/run");
        assert_eq!(run.and_then(|m| m.data), Some("mode=0755"));
    }
}
