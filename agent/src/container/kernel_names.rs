//! The names at the top of the guest kernel's /proc and /sys, listed once
//! per VM. A masked or read-only path below a container's own proc or
//! sysfs whose first name the kernel does not have cannot exist in the
//! container either (same kernel, same entries), so the container's set-up
//! drops it instead of walking to it: when the guest kernel is emulated a
//! failed lookup in /proc costs ~13 ms, and of runc's ten default masked
//! paths this kernel has two. A kernel that loads modules can grow
//! entries later: there nothing is dropped.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Component, Path};

use super::spec::{ContainerPlan, MountKind, MountPlan};

#[derive(Debug, Default)]
pub struct KernelNames {
    proc: HashSet<OsString>,
    sys: HashSet<OsString>,
}

impl KernelNames {
    /// Lists the agent's own /proc and /sys.
    pub fn list() -> io::Result<KernelNames> {
        let names = |dir: &str| -> io::Result<HashSet<OsString>> {
            std::fs::read_dir(dir)?
                .map(|entry| entry.map(|e| e.file_name()))
                .collect()
        };
        Ok(KernelNames {
            proc: names("/proc")?,
            sys: names("/sys")?,
        })
    }

    #[cfg(test)]
    fn of(proc: &[&str], sys: &[&str]) -> KernelNames {
        KernelNames {
            proc: proc.iter().map(OsString::from).collect(),
            sys: sys.iter().map(OsString::from).collect(),
        }
    }

    /// Whether `path` (absolute, in the container) surely does not exist:
    /// the last of `mounts` covering it is a proc at /proc (or a sysfs at
    /// /sys) and the kernel has no entry of its first name in either
    /// (whichever an image's symlinks put where). Names of processes are
    /// never ruled out: the container has pids of its own.
    pub fn surely_absent(&self, path: &Path, mounts: &[MountPlan]) -> bool {
        if self.proc.contains(OsStr::new("modules")) {
            return false;
        }
        let mut parts = path.components();
        if parts.next() != Some(Component::RootDir) {
            return false;
        }
        let (Some(Component::Normal(top)), Some(Component::Normal(name))) =
            (parts.next(), parts.next())
        else {
            return false;
        };
        let fstype = match top.to_str() {
            Some("proc") => "proc",
            Some("sys") => "sysfs",
            _ => return false,
        };
        if name
            .to_str()
            .is_none_or(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            return false;
        }
        let covering = mounts
            .iter()
            .rev()
            .find(|m| path.starts_with(&m.destination));
        let fresh = matches!(covering, Some(MountPlan {
            destination,
            kind: MountKind::Fs { fstype: t, .. },
            ..
        }) if *destination == Path::new("/").join(top) && t == fstype);
        fresh && !self.proc.contains(name) && !self.sys.contains(name)
    }
}

/// Drops from `plan`'s masked and read-only paths those that surely do not
/// exist (see [`KernelNames::surely_absent`]).
pub fn drop_absent(plan: &mut ContainerPlan, names: &KernelNames) {
    let mounts = &plan.mounts;
    plan.masked_paths
        .retain(|p| !names.surely_absent(p, mounts));
    plan.readonly_paths
        .retain(|p| !names.surely_absent(p, mounts));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::mountopts::MountOptions;

    fn fs(destination: &str, fstype: &str) -> MountPlan {
        MountPlan {
            destination: destination.into(),
            kind: MountKind::Fs {
                fstype: fstype.into(),
                source: fstype.into(),
            },
            options: MountOptions::default(),
        }
    }

    fn bind(destination: &str) -> MountPlan {
        MountPlan {
            destination: destination.into(),
            kind: MountKind::Bind {
                source: "/elsewhere".into(),
            },
            options: MountOptions::default(),
        }
    }

    #[test]
    fn only_names_the_kernel_lacks_below_a_fresh_proc_or_sysfs_are_absent() {
        let names = KernelNames::of(&["timer_list", "sys", "1", "self"], &["fs", "firmware"]);
        let mounts = vec![fs("/proc", "proc"), fs("/sys", "sysfs")];
        let absent = |p: &str| names.surely_absent(Path::new(p), &mounts);
        assert!(absent("/proc/acpi"));
        assert!(absent("/proc/scsi/x"));
        assert!(!absent("/proc/timer_list"));
        assert!(!absent("/proc/sys/kernel"));
        assert!(absent("/sys/devices/virtual/powercap"));
        assert!(!absent("/sys/firmware"));
        // Processes differ between the agent and the container.
        assert!(!absent("/proc/7/status"));
        // Not below a kernel file system, or the file system itself.
        assert!(!absent("/etc/acpi"));
        assert!(!absent("/proc"));
        assert!(!absent("proc/acpi"));
    }

    #[test]
    fn a_kernel_with_modules_rules_nothing_out() {
        let names = KernelNames::of(&["modules", "self"], &["fs"]);
        let mounts = vec![fs("/proc", "proc")];
        assert!(!names.surely_absent(Path::new("/proc/acpi"), &mounts));
    }

    #[test]
    fn a_name_either_file_system_has_is_kept() {
        let names = KernelNames::of(&["sys"], &["firmware"]);
        let mounts = vec![fs("/proc", "proc"), fs("/sys", "sysfs")];
        assert!(!names.surely_absent(Path::new("/proc/firmware"), &mounts));
        assert!(!names.surely_absent(Path::new("/sys/sys"), &mounts));
        assert!(names.surely_absent(Path::new("/sys/acpi"), &mounts));
    }

    #[test]
    fn a_later_mount_over_the_path_or_no_fresh_proc_keeps_it() {
        let names = KernelNames::of(&[], &[]);
        let covered = vec![fs("/proc", "proc"), bind("/proc/cpuinfo")];
        assert!(!names.surely_absent(Path::new("/proc/cpuinfo"), &covered));
        assert!(names.surely_absent(Path::new("/proc/acpi"), &covered));
        let bound = vec![bind("/proc")];
        assert!(!names.surely_absent(Path::new("/proc/acpi"), &bound));
        let wrong_type = vec![fs("/proc", "tmpfs")];
        assert!(!names.surely_absent(Path::new("/proc/acpi"), &wrong_type));
        assert!(!names.surely_absent(Path::new("/proc/acpi"), &[]));
    }

    #[test]
    fn the_agents_own_proc_and_sys_are_listed() {
        let names = KernelNames::list().expect("listing /proc and /sys");
        assert!(names.proc.contains(&OsString::from("self")));
        assert!(!names.sys.is_empty());
    }
}
