//! A runvm VMM's jail as the host's /proc shows it (see the `jail` module
//! of runvm-vmm): the process the runtime started is the supervisor; the
//! jailed VMM, which runs the vCPUs, is its only child.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The two processes of one VMM.
#[derive(Debug)]
pub struct VmmProcesses {
    /// The process the runtime started (and signals, and waits for).
    pub supervisor: u32,
    /// The jailed VMM.
    pub jailed: u32,
}

/// The VMM among `processes` (pid and command line, as
/// `harness::processes_referencing` lists them): exactly one supervisor
/// (a `runvm-vmm` whose parent is not one) with exactly one child, the
/// jailed VMM, and no other `runvm-vmm`.
#[track_caller]
pub fn vmm_processes(processes: &[(u32, String)]) -> VmmProcesses {
    let vmms: Vec<u32> = processes
        .iter()
        .filter(|(_, line)| line.contains("runvm-vmm"))
        .map(|(pid, _)| *pid)
        .collect();
    let supervisors: Vec<u32> = vmms
        .iter()
        .copied()
        .filter(|pid| !parent(*pid).is_some_and(|p| vmms.contains(&p)))
        .collect();
    assert_eq!(
        supervisors.len(),
        1,
        "one VMM supervisor among {processes:?}"
    );
    let supervisor = supervisors[0];
    let children =
        std::fs::read_to_string(format!("/proc/{supervisor}/task/{supervisor}/children"))
            .unwrap_or_default();
    let children: Vec<u32> = children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    assert_eq!(
        children.len(),
        1,
        "the VMM supervisor {supervisor} has one child, the jailed VMM: {children:?}"
    );
    assert_eq!(
        vmms.len(),
        2,
        "the supervisor and the jailed VMM, no other: {vmms:?}"
    );
    VmmProcesses {
        supervisor,
        jailed: children[0],
    }
}

fn parent(pid: u32) -> Option<u32> {
    status_field(pid, "PPid")?.parse().ok()
}

fn status_field(pid: u32, name: &str) -> Option<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key == name).then(|| value.trim().to_string())
    })
}

/// Asserts that `pid` is jailed in `jail_dir`: a non-root uid and gid of
/// its own, no capability, no_new_privs, namespaces of its own, the jail
/// directory as its root holding exactly `entries`, and vCPU threads,
/// every thread under a seccomp filter.
#[track_caller]
pub fn assert_jailed(pid: u32, jail_dir: &Path, entries: &[&str]) {
    let field = |name: &str| {
        status_field(pid, name).unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    for name in ["Uid", "Gid"] {
        let ids: Vec<u64> = field(name)
            .split_whitespace()
            .map(|id| id.parse().expect("a numeric id"))
            .collect();
        assert!(
            ids.len() == 4 && ids.iter().all(|id| *id != 0 && *id == ids[0]),
            "the jailed VMM's {name}s (real, effective, saved, fs): {ids:?}"
        );
    }
    assert_eq!(field("Groups"), "", "the jailed VMM's supplementary groups");
    for name in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(name), "0000000000000000", "the jailed VMM's {name}");
    }
    assert_eq!(field("NoNewPrivs"), "1", "the jailed VMM's no_new_privs");
    for ns in ["mnt", "net", "pid", "ipc", "uts"] {
        let of = |who: &str| {
            std::fs::read_link(format!("/proc/{who}/ns/{ns}"))
                .unwrap_or_else(|e| panic!("/proc/{who}/ns/{ns}: {e}"))
        };
        assert_ne!(
            of(&pid.to_string()),
            of("self"),
            "the jailed VMM's {ns} namespace"
        );
    }
    // readlink of /proc/PID/root shows "/" for a root in another mount
    // namespace; the directory it leads to is the jail's.
    let root = std::fs::metadata(format!("/proc/{pid}/root")).expect("the jailed VMM's root");
    let jail = std::fs::metadata(jail_dir).expect("the jail directory");
    assert_eq!(
        (root.dev(), root.ino()),
        (jail.dev(), jail.ino()),
        "the jailed VMM's root is {}",
        jail_dir.display()
    );
    let listed: BTreeSet<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .expect("list the jailed VMM's root")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let expected: BTreeSet<String> = entries.iter().map(|e| e.to_string()).collect();
    assert_eq!(listed, expected, "what the jailed VMM's root holds");
    // Every thread under its seccomp filter (mode 2).
    let threads: Vec<(String, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the jailed VMM's threads")
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            let seccomp = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))?
                .trim()
                .to_string();
            Some((name.trim().to_string(), seccomp))
        })
        .collect();
    assert!(
        threads.iter().any(|(name, _)| name == "vcpu0"),
        "the jailed VMM runs the vCPUs: {threads:?}"
    );
    assert!(
        threads.iter().all(|(_, mode)| mode == "2"),
        "every thread of the jailed VMM in seccomp mode 2: {threads:?}"
    );
}
