//! The host's cgroup hierarchies and where a container's cgroup goes in
//! each: read from /proc/self/mountinfo (what is mounted where) and
//! /proc/self/cgroup (the cgroup this process is in, for relative paths).
//!
//! Three layouts:
//! - unified: /sys/fs/cgroup is cgroup2, one directory per container;
//! - legacy (v1): one hierarchy per controller (or per group of
//!   controllers mounted together, `cpu,cpuacct`), plus systemd's named
//!   `name=systemd` one; the container gets a directory in each, as runc
//!   makes them;
//! - hybrid: legacy, plus a cgroup2 mount (`/sys/fs/cgroup/unified`,
//!   usually without controllers): runc makes the directory there too, so
//!   the processes show in both.

use std::path::{Path, PathBuf};

use super::path::Inner;
use super::CgroupError;

/// Where cgroup filesystems are mounted for the host's own use; mounts of
/// them elsewhere (a container's view, say) are not ours to use.
const CGROUP_MOUNT_BASE: &str = "/sys/fs/cgroup";

/// The v1 controllers runc gives a container a directory in; hierarchies
/// that hold none of them (other named ones) are left alone.
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "hugetlb",
    "net_cls",
    "net_prio",
    "perf_event",
    "rdma",
    "misc",
    "name=systemd",
];

/// One mounted hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    pub mountpoint: PathBuf,
    /// cgroup v1: its controllers (`cpu`, `name=systemd`); empty for
    /// cgroup2.
    pub controllers: Vec<String>,
    /// A cgroup2 hierarchy.
    pub unified: bool,
    /// This process's cgroup, as a directory below `mountpoint` (relative).
    pub own: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// /sys/fs/cgroup itself is cgroup2 (no v1 controllers in use).
    pub unified_mode: bool,
    pub hierarchies: Vec<Hierarchy>,
}

/// A container's directory in one hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub hierarchy: Hierarchy,
    /// Relative to the hierarchy's mountpoint.
    pub relative: PathBuf,
}

impl Placement {
    pub fn dir(&self) -> PathBuf {
        self.hierarchy.mountpoint.join(&self.relative)
    }
}

impl Layout {
    /// This host's layout, as this process sees it.
    pub fn current() -> Result<Layout, CgroupError> {
        let read = |path: &str| {
            std::fs::read_to_string(path)
                .map_err(|e| CgroupError::Layout(format!("cannot read {path}: {e}")))
        };
        Layout::parse(&read("/proc/self/mountinfo")?, &read("/proc/self/cgroup")?)
    }

    /// The layout from the text of /proc/self/mountinfo and
    /// /proc/self/cgroup.
    pub fn parse(mountinfo: &str, own_cgroups: &str) -> Result<Layout, CgroupError> {
        let mut hierarchies: Vec<Hierarchy> = Vec::new();
        let mut unified_mode = false;
        for line in mountinfo.lines() {
            let Some(mount) = Mount::parse(line) else {
                continue;
            };
            if !mount.mountpoint.starts_with(CGROUP_MOUNT_BASE) {
                continue;
            }
            let (unified, controllers) = match mount.fstype {
                "cgroup2" => (true, Vec::new()),
                "cgroup" => {
                    let controllers: Vec<String> = mount
                        .super_options
                        .split(',')
                        .filter(|o| V1_CONTROLLERS.contains(o))
                        .map(str::to_owned)
                        .collect();
                    if controllers.is_empty() {
                        continue;
                    }
                    (false, controllers)
                }
                _ => continue,
            };
            // A hierarchy mounted twice under the base is used once.
            if hierarchies
                .iter()
                .any(|h| h.unified == unified && h.controllers == controllers)
            {
                continue;
            }
            if unified && mount.mountpoint == Path::new(CGROUP_MOUNT_BASE) {
                unified_mode = true;
            }
            let own = own_cgroup(own_cgroups, unified, &controllers).ok_or_else(|| {
                CgroupError::Layout(format!(
                    "/proc/self/cgroup does not name this process's cgroup in {}",
                    mount.mountpoint.display()
                ))
            })?;
            // The mount shows the hierarchy from `root` down (a container's
            // view); our cgroup is named from the hierarchy's top.
            let own = Path::new(&own)
                .strip_prefix(&mount.root)
                .map(Path::to_path_buf)
                .unwrap_or_else(|_| PathBuf::from(own.trim_start_matches('/')));
            hierarchies.push(Hierarchy {
                mountpoint: mount.mountpoint,
                controllers,
                unified,
                own,
            });
        }
        if unified_mode {
            hierarchies.retain(|h| h.unified && h.mountpoint == Path::new(CGROUP_MOUNT_BASE));
        }
        if hierarchies.is_empty() {
            return Err(CgroupError::Layout(format!(
                "no cgroup hierarchy is mounted under {CGROUP_MOUNT_BASE}"
            )));
        }
        Ok(Layout {
            unified_mode,
            hierarchies,
        })
    }

    /// The container's directory in each hierarchy, for `inner`: an
    /// absolute path is below the hierarchy's mountpoint; a relative one
    /// below our own cgroup, or on a unified host below its parent (runc's
    /// choice: our own cgroup holds processes, so the controllers cannot
    /// be enabled for its children).
    pub fn placements(&self, inner: &Inner) -> Vec<Placement> {
        self.hierarchies
            .iter()
            .map(|hierarchy| {
                let base = if inner.absolute {
                    PathBuf::new()
                } else if self.unified_mode {
                    hierarchy
                        .own
                        .parent()
                        .map(Path::to_path_buf)
                        .unwrap_or_default()
                } else {
                    hierarchy.own.clone()
                };
                Placement {
                    hierarchy: hierarchy.clone(),
                    relative: base.join(inner.relative_path()),
                }
            })
            .collect()
    }
}

/// The fields of a mountinfo line that matter here.
struct Mount<'a> {
    root: PathBuf,
    mountpoint: PathBuf,
    fstype: &'a str,
    super_options: &'a str,
}

impl<'a> Mount<'a> {
    /// `id parent major:minor root mountpoint options [optional...] -
    /// fstype source super-options`.
    fn parse(line: &'a str) -> Option<Mount<'a>> {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let mut after = after.split(' ');
        let fstype = after.next()?;
        let _source = after.next()?;
        Some(Mount {
            root: PathBuf::from(unescape(fields.get(3)?)),
            mountpoint: PathBuf::from(unescape(fields.get(4)?)),
            fstype,
            super_options: after.next().unwrap_or(""),
        })
    }
}

/// mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        if let Some(digits) = octal {
            let value = digits.iter().fold(0u32, |v, d| v * 8 + u32::from(d - b'0'));
            out.push(value as u8);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The path /proc/self/cgroup gives for a hierarchy: the `0::` line for
/// cgroup2, else the line whose controller list is the hierarchy's.
fn own_cgroup(text: &str, unified: bool, controllers: &[String]) -> Option<String> {
    text.lines().find_map(|line| {
        let mut fields = line.splitn(3, ':');
        let id = fields.next()?;
        let list = fields.next()?;
        let path = fields.next()?;
        let matches = if unified {
            id == "0" && list.is_empty()
        } else {
            let mut listed: Vec<&str> = list.split(',').filter(|c| !c.is_empty()).collect();
            let mut wanted: Vec<&str> = controllers.iter().map(String::as_str).collect();
            listed.sort_unstable();
            wanted.sort_unstable();
            !listed.is_empty() && listed == wanted
        };
        matches.then(|| path.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::super::path::resolve;
    use super::*;

    /// This development host: v1 controllers, name=systemd, an empty
    /// cgroup2 at /sys/fs/cgroup/unified; cpu and cpuacct mounted apart;
    /// our memory cgroup is not the root.
    const HYBRID_MOUNTINFO: &str = "\
22 1 0:20 / /proc rw,nosuid - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
99 98 0:32 / /var/lib/x/memory rw,relatime - cgroup cgroup rw,memory
";
    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/abc
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
";

    /// A v1 host as Debian 10 had it: cpu,cpuacct mounted together (with
    /// symlinks, which mountinfo does not show), net_cls,net_prio too.
    const V1_MOUNTINFO: &str = "\
25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
31 25 0:28 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio
";
    const V1_CGROUP: &str = "\
5:net_cls,net_prio:/
4:memory:/system.slice/containerd.service
3:cpu,cpuacct:/system.slice/containerd.service
1:name=systemd:/system.slice/containerd.service
";

    const V2_MOUNTINFO: &str = "\
25 24 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";
    const V2_CGROUP: &str = "0::/system.slice/containerd.service\n";

    fn dirs(layout: &Layout, path: Option<&str>, systemd: bool) -> Vec<String> {
        let inner = resolve(path.map(Path::new), "c1", systemd).expect("resolves");
        layout
            .placements(&inner)
            .iter()
            .map(|p| p.dir().display().to_string())
            .collect()
    }

    #[test]
    fn hybrid_hierarchies_and_their_directories() {
        let layout = Layout::parse(HYBRID_MOUNTINFO, HYBRID_CGROUP).expect("parses");
        assert!(!layout.unified_mode);
        // The second memory mount, outside /sys/fs/cgroup, is not used.
        assert_eq!(layout.hierarchies.len(), 10);
        assert_eq!(
            dirs(&layout, Some("/default/c1"), false),
            [
                "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
                "systemd", "unified"
            ]
            .map(|h| format!("/sys/fs/cgroup/{h}/default/c1"))
        );
        // Relative: below our own cgroup in each hierarchy (runc's way).
        let relative = dirs(&layout, None, false);
        assert_eq!(relative[0], "/sys/fs/cgroup/cpu/c1");
        assert_eq!(relative[3], "/sys/fs/cgroup/memory/process_api/abc/c1");
        assert_eq!(relative[9], "/sys/fs/cgroup/unified/c1");
        assert_eq!(
            dirs(&layout, Some("machine.slice:libpod:x"), true)[3],
            "/sys/fs/cgroup/memory/machine.slice/libpod-x.scope"
        );
    }

    #[test]
    fn v1_with_comounted_controllers() {
        let layout = Layout::parse(V1_MOUNTINFO, V1_CGROUP).expect("parses");
        assert!(!layout.unified_mode);
        assert_eq!(layout.hierarchies[1].controllers, ["cpu", "cpuacct"]);
        assert_eq!(
            dirs(&layout, Some("k8s/pod1/c1"), false),
            [
                "/sys/fs/cgroup/systemd/system.slice/containerd.service/k8s/pod1/c1",
                "/sys/fs/cgroup/cpu,cpuacct/system.slice/containerd.service/k8s/pod1/c1",
                "/sys/fs/cgroup/memory/system.slice/containerd.service/k8s/pod1/c1",
                "/sys/fs/cgroup/net_cls,net_prio/k8s/pod1/c1",
            ]
        );
    }

    #[test]
    fn unified_relative_paths_go_below_our_parent() {
        let layout = Layout::parse(V2_MOUNTINFO, V2_CGROUP).expect("parses");
        assert!(layout.unified_mode);
        assert_eq!(
            dirs(&layout, Some("/kubepods/pod1/c1"), false),
            ["/sys/fs/cgroup/kubepods/pod1/c1"]
        );
        assert_eq!(
            dirs(&layout, Some("x"), false),
            ["/sys/fs/cgroup/system.slice/x"]
        );
        assert_eq!(
            dirs(&layout, Some(":docker:abc"), true),
            ["/sys/fs/cgroup/system.slice/docker-abc.scope"]
        );
    }

    #[test]
    fn a_mount_that_shows_part_of_the_hierarchy() {
        // In a container without a cgroup namespace: the mount's root is
        // our own cgroup's ancestor.
        let mountinfo =
            "40 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        let layout = Layout::parse(mountinfo, "4:memory:/docker/abc/inner\n").expect("parses");
        assert_eq!(
            dirs(&layout, Some("c"), false),
            ["/sys/fs/cgroup/memory/inner/c"]
        );
    }

    #[test]
    fn nothing_mounted_is_an_error() {
        let error = Layout::parse("22 1 0:20 / /proc rw - proc proc rw\n", "0::/\n")
            .expect_err("no hierarchy");
        assert!(error.to_string().contains("no cgroup hierarchy"), "{error}");
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
