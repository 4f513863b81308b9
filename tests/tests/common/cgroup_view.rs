//! A container's host cgroup as a test sees it, from the absolute
//! `linux.cgroupsPath` of its bundle: its cgroup2 directory, or on a v1
//! (or hybrid) host the directory in the memory hierarchy, whose `tasks`
//! lists every thread. What conmon, containerd's shim and kubelet read.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};

pub struct CgroupView {
    pub dir: PathBuf,
    /// On v1, the directory in the cpu hierarchy.
    cpu_dir: PathBuf,
    /// The host uses cgroup2 alone.
    pub v2: bool,
}

impl CgroupView {
    /// The cgroup of the absolute cgroupfs path `path` (`/a/b`).
    pub fn of(path: &str) -> CgroupView {
        let base = Path::new("/sys/fs/cgroup");
        let v2 = base.join("cgroup.controllers").exists();
        let relative = path.trim_start_matches('/');
        let (dir, cpu_dir) = if v2 {
            (base.join(relative), base.join(relative))
        } else {
            (
                base.join("memory").join(relative),
                base.join("cpu").join(relative),
            )
        };
        CgroupView { dir, cpu_dir, v2 }
    }

    /// The ids listed: processes on cgroup2 (`cgroup.procs`), threads on
    /// v1 (`tasks`).
    pub fn members(&self) -> Vec<u32> {
        let file = self
            .dir
            .join(if self.v2 { "cgroup.procs" } else { "tasks" });
        std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Asserts that process `pid` is in the cgroup, with all its threads
    /// on v1.
    #[track_caller]
    pub fn assert_holds(&self, pid: u32, what: &str) {
        let members = self.members();
        let ids: Vec<u32> = if self.v2 {
            vec![pid]
        } else {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|entries| {
                    entries
                        .flatten()
                        .filter_map(|e| e.file_name().to_str()?.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        assert!(!ids.is_empty(), "{what}: pid {pid} has no threads");
        for id in ids {
            assert!(
                members.contains(&id),
                "{what} (pid {pid}, thread {id}) is not in the cgroup {}, which lists {members:?}",
                self.dir.display()
            );
        }
    }

    /// The memory limit in bytes (`None`: unlimited).
    pub fn memory_limit(&self) -> Option<u64> {
        let file = self.dir.join(if self.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        });
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        // v1 says "unlimited" with a page-rounded i64::MAX.
        text.trim()
            .parse::<u64>()
            .ok()
            .filter(|limit| *limit < 1 << 60)
    }

    /// The CPU quota per period in microseconds (`None`: no quota).
    pub fn cpu_quota(&self) -> Option<u64> {
        let file = self.cpu_dir.join(if self.v2 {
            "cpu.max"
        } else {
            "cpu.cfs_quota_us"
        });
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        text.split_whitespace().next()?.parse().ok()
    }

    pub fn exists(&self) -> bool {
        self.dir.exists()
    }
}

/// The cgroups runvm places a process in, from /proc/PID/cgroup: each
/// v1 hierarchy of a controller (and systemd's), named by its
/// controllers, and cgroup2 (named ""), when mounted below
/// /sys/fs/cgroup; each with the process's path there.
pub fn placed_cgroups(pid: u32) -> Vec<(String, String)> {
    let unified = [
        "/sys/fs/cgroup/cgroup.controllers",
        "/sys/fs/cgroup/unified/cgroup.procs",
    ]
    .iter()
    .any(|file| Path::new(file).exists());
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            let placed = if controllers.is_empty() {
                id == "0" && unified
            } else {
                controllers == "name=systemd" || !controllers.starts_with("name=")
            };
            placed.then(|| (controllers.to_owned(), path.to_owned()))
        })
        .collect()
}

/// Asserts that a pod's VM runs in the cgroup of the absolute cgroupfs
/// path `path`: `processes` (pid, command line) hold a VMM and a
/// virtiofsd, and each is there in every hierarchy, with all its
/// threads; a containerd shim among them must not be.
#[track_caller]
pub fn assert_vm_in(path: &str, processes: &[(u32, String)]) {
    let view = CgroupView::of(path);
    let (shims, vm): (Vec<_>, Vec<_>) = processes
        .iter()
        .partition(|(_, cmdline)| cmdline.contains("containerd-shim"));
    for program in ["runvm-vmm", "virtiofsd"] {
        assert!(
            vm.iter().any(|(_, cmdline)| cmdline.contains(program)),
            "no {program} among {vm:?}"
        );
    }
    for (pid, cmdline) in &vm {
        let placed = placed_cgroups(*pid);
        assert!(!placed.is_empty(), "{cmdline}: no cgroup read");
        for (hierarchy, there) in placed {
            assert_eq!(there, path, "{cmdline} (pid {pid}) in {hierarchy}");
        }
        view.assert_holds(*pid, cmdline);
    }
    for (pid, _) in &shims {
        let memory = placed_cgroups(*pid)
            .into_iter()
            .find(|(hierarchy, _)| hierarchy == "memory" || hierarchy.is_empty());
        assert!(
            memory.is_some_and(|(_, there)| there != path),
            "the shim (pid {pid}) stays out of the pod's cgroup"
        );
    }
}
