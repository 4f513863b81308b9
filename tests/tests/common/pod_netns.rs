//! A pod's network namespace (netavark's or CNI's) seen from the host:
//! while the pod runs on runvm it holds runvm's tap and the TC redirects
//! joining it to `eth0` both ways; once the pod is removed the namespace
//! itself must be gone (no file, process, descriptor or mount keeps it),
//! which takes the persistent tap and the filters with it, and no tap of
//! runvm's may have landed in the namespace the caller ran in. Needs
//! `crate::harness` and `crate::netns`.

#![allow(dead_code)] // each test binary uses a different subset

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{self, wait_for};

/// The prefix of runvm's taps (`runvm::network::TAP_PREFIX`).
const TAP_PREFIX: &str = "rvtap";

/// A running pod's network namespace, as found while it runs.
pub struct PodNetns {
    path: PathBuf,
    /// The namespace's nsfs inode: `net:[inode]` wherever it is referred to.
    inode: u64,
}

/// `ip args` (or `tc`, by `program`) in the namespace at `netns`.
fn in_netns(netns: &Path, program: &str, args: &[&str]) -> String {
    let mut command = Command::new(program);
    command.args(args);
    crate::netns::enter(netns, &mut command);
    harness::run(&mut command).ok().stdout
}

/// runvm's taps in the namespace at `netns`.
pub fn taps_in(netns: &Path) -> Vec<String> {
    in_netns(netns, "ip", &["-o", "link", "show"])
        .lines()
        .filter_map(|line| line.split(':').nth(1))
        .map(|name| name.trim().split('@').next().unwrap_or("").to_string())
        .filter(|name| name.starts_with(TAP_PREFIX))
        .collect()
}

impl PodNetns {
    /// The namespace at `path` while its pod runs; with `runvm`, checks
    /// that it holds runvm's `rvtap0` and that TC redirects `eth0`'s
    /// ingress to it and its ingress back to `eth0`.
    #[track_caller]
    pub fn inspect(path: &Path, runvm: bool) -> PodNetns {
        let inode = std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("the pod's namespace {}: {e}", path.display()))
            .ino();
        if runvm {
            let taps = taps_in(path);
            assert_eq!(taps, ["rvtap0"], "runvm's tap in {}", path.display());
            for (from, to) in [("eth0", "rvtap0"), ("rvtap0", "eth0")] {
                let filters = in_netns(path, "tc", &["filter", "show", "dev", from, "ingress"]);
                assert!(
                    filters.contains(&format!("Redirect to device {to}")),
                    "TC redirects {from}'s ingress to {to}: {filters}"
                );
            }
        }
        PodNetns {
            path: path.to_path_buf(),
            inode,
        }
    }

    /// The pod is removed: its namespace file is gone, nothing refers to
    /// the namespace any more (so the kernel destroyed it, with whatever
    /// was in it), and `caller`, the namespace the caller (podman,
    /// containerd) runs in, holds no tap of runvm's.
    #[track_caller]
    pub fn assert_gone(&self, caller: &Path) {
        assert!(
            !self.path.exists(),
            "the pod's namespace {} was removed",
            self.path.display()
        );
        let name = format!("net:[{}]", self.inode);
        wait_for(&format!("nothing refers to {name} any more"), || {
            let users = users_of(&name);
            users.is_empty().then_some(()).ok_or(users.join("\n"))
        });
        let taps = taps_in(caller);
        assert!(
            taps.is_empty(),
            "runvm's taps left in the caller's namespace: {taps:?}"
        );
    }
}

/// What refers to the namespace `name` (`net:[inode]`): processes in it,
/// descriptors of it, mounts of it.
fn users_of(name: &str) -> Vec<String> {
    let mut users = Vec::new();
    for pid in harness::pids() {
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let refers = |link: PathBuf| std::fs::read_link(link).is_ok_and(|l| l.as_os_str() == name);
        if refers(dir.join("ns/net")) {
            users.push(format!("pid {pid} runs in it"));
        }
        let fds = std::fs::read_dir(dir.join("fd"))
            .into_iter()
            .flatten()
            .flatten();
        if let Some(fd) = fds.map(|fd| fd.path()).find(|fd| refers(fd.clone())) {
            users.push(format!("pid {pid} holds it open ({})", fd.display()));
        }
        let mounts = std::fs::read_to_string(dir.join("mountinfo")).unwrap_or_default();
        if let Some(mount) = mounts.lines().find(|line| line.contains(name)) {
            users.push(format!("pid {pid} sees it mounted: {mount}"));
        }
    }
    users
}
