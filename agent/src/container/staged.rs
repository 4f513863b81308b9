//! Filesystems mounted ahead, in a VM that becomes a template (see
//! `warm_up`), for the first container whose spec asks for the same ones.
//! Making a tmpfs, devpts, mqueue or sysfs mount costs 40-80 ms of
//! emulated guest-kernel work; moving a made one into place about 6 ms.
//!
//! Each is made with the very mount(2) call a container's init would make
//! (same type, source, flags and options) on a scratch directory, then
//! detached (open_tree's clone of it, the scratch mount dropped): a mount
//! that belongs to no namespace until the init moves it onto its rootfs.
//! A staged mount serves one container only (a tmpfs or devpts instance
//! must not be shared); later containers mount their own.

use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;

use nix::mount::MsFlags;

use super::mountopts;
use super::rootfs::clone_tree;
use super::spec::{MountKind, MountPlan};

/// Mounts that runc's default spec (and podman's and containerd's, for
/// most of them) asks for: destination, type, source and options.
const LIKELY: &[(&str, &str, &[&str])] = &[
    (
        "tmpfs",
        "tmpfs",
        &["nosuid", "strictatime", "mode=755", "size=65536k"],
    ),
    (
        "devpts",
        "devpts",
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ],
    ),
    (
        "tmpfs",
        "shm",
        &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
    ),
    ("mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
    ("sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
];

/// What a mount is made of: two mounts with the same key are the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountKey {
    fstype: String,
    source: String,
    flags: MsFlags,
    data: String,
}

impl MountKey {
    /// The key of a planned mount that a staged one may stand in for: a
    /// new tmpfs (with its mode given: otherwise it takes the covered
    /// directory's), devpts, mqueue or sysfs, without a copy-up.
    pub fn of(m: &MountPlan) -> Option<MountKey> {
        let MountKind::Fs { fstype, source } = &m.kind else {
            return None;
        };
        let o = &m.options;
        let stageable = match fstype.as_str() {
            "tmpfs" => !o.tmpcopyup && o.data.split(',').any(|d| d.starts_with("mode=")),
            "devpts" | "mqueue" | "sysfs" => true,
            _ => false,
        };
        (stageable && !o.bind).then(|| MountKey {
            fstype: fstype.clone(),
            source: source.clone(),
            flags: o.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT),
            data: o.data.clone(),
        })
    }
}

/// The staged mounts not taken yet.
#[derive(Default)]
pub struct Staged {
    mounts: Vec<(MountKey, OwnedFd)>,
}

/// In what the container differs from the agent, which decides what a
/// staged mount made in the agent's namespaces can serve.
pub struct Fit {
    /// The container joins the spare IPC namespace (the staged mqueue's).
    pub spare_ipc: bool,
    /// It has a network namespace of its own (sysfs shows the mounter's).
    pub own_netns: bool,
    /// It has a user namespace (its mounts belong to it).
    pub user_ns: bool,
}

impl Staged {
    /// Stages [`LIKELY`] mounts; `spare_ipc` is the IPC namespace the
    /// mqueue mount is made in (without it, none is; should the agent
    /// fail to come back from it, it is nobody's spare any more and is
    /// taken away). Failures are logged: a container then mounts its own.
    pub fn make(spare_ipc: &mut Option<OwnedFd>) -> Staged {
        let mut staged = Staged::default();
        let scratch = Path::new("/run/runvm-staging");
        if let Err(e) = std::fs::create_dir(scratch) {
            agent_log!("staging mounts: {}: {e}", scratch.display());
            return staged;
        }
        for (fstype, source, options) in LIKELY {
            let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
            let plan = match mountopts::parse(&options) {
                Ok(o) => MountPlan {
                    destination: scratch.into(),
                    kind: MountKind::Fs {
                        fstype: fstype.to_string(),
                        source: source.to_string(),
                    },
                    options: o,
                },
                Err(e) => {
                    agent_log!("staging a {fstype} mount: {e}");
                    continue;
                }
            };
            let Some(key) = MountKey::of(&plan) else {
                continue;
            };
            let made = if *fstype == "mqueue" {
                let Some(ns) = spare_ipc.as_ref() else {
                    continue;
                };
                match in_ipc_namespace(ns, || stage_one(scratch, &key)) {
                    Ok(made) => made,
                    Err(e) => {
                        // The agent is in it: it is nobody's spare.
                        agent_log!("staging mounts: the spare IPC namespace: {e}");
                        *spare_ipc = None;
                        continue;
                    }
                }
            } else {
                stage_one(scratch, &key)
            };
            match made {
                Ok(tree) => staged.mounts.push((key, tree)),
                Err(e) => agent_log!("staging a {fstype} mount: {e}"),
            }
        }
        let _ = std::fs::remove_dir(scratch);
        // Once per template: what its first container will find made.
        agent_log!("warming up: {} mounts staged", staged.mounts.len());
        staged
    }

    /// Takes the staged mounts that a container's `mounts` can use, by
    /// the mount's index.
    pub fn take_for(&mut self, mounts: &[MountPlan], fit: &Fit) -> Vec<(usize, OwnedFd)> {
        let mut taken = Vec::new();
        if fit.user_ns || self.mounts.is_empty() {
            return taken;
        }
        for (index, m) in mounts.iter().enumerate() {
            let Some(key) = MountKey::of(m) else {
                continue;
            };
            let serves = match key.fstype.as_str() {
                "mqueue" => fit.spare_ipc,
                "sysfs" => !fit.own_netns,
                _ => true,
            };
            if !serves {
                continue;
            }
            if let Some(at) = self.mounts.iter().position(|(k, _)| *k == key) {
                taken.push((index, self.mounts.swap_remove(at).1));
            }
        }
        taken
    }
}

/// Mounts `key` on `scratch` as a container's init would, and returns a
/// detached clone of that mount (the scratch mount is dropped).
fn stage_one(scratch: &Path, key: &MountKey) -> io::Result<OwnedFd> {
    let data = (!key.data.is_empty()).then_some(key.data.as_str());
    nix::mount::mount(
        Some(key.source.as_str()),
        scratch,
        Some(key.fstype.as_str()),
        key.flags,
        data,
    )?;
    let path = CString::new(scratch.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let tree = clone_tree(libc::AT_FDCWD, &path, false);
    let _ = nix::mount::umount2(scratch, nix::mount::MntFlags::MNT_DETACH);
    tree
}

/// Runs `f` in the IPC namespace `ns`, then goes back to the agent's:
/// `f`'s result, or an error when the agent could not go there or back.
fn in_ipc_namespace<T>(ns: &OwnedFd, f: impl FnOnce() -> T) -> io::Result<T> {
    use std::os::fd::AsRawFd;
    let home = super::launch::open_ns(Path::new("/proc/self/ns/ipc"))?;
    // SAFETY: setns(2) of this (single-threaded) process's IPC namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWIPC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let result = f();
    // SAFETY: as above, back to where the agent was.
    if unsafe { libc::setns(home.as_raw_fd(), libc::CLONE_NEWIPC) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot go back to the agent's IPC namespace: {e}"),
        ));
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(fstype: &str, source: &str, options: &[&str]) -> MountPlan {
        let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
        MountPlan {
            destination: "/dev".into(),
            kind: MountKind::Fs {
                fstype: fstype.into(),
                source: source.into(),
            },
            options: mountopts::parse(&options).expect("options"),
        }
    }

    #[test]
    fn a_tmpfs_without_its_mode_is_not_staged() {
        assert!(MountKey::of(&plan("tmpfs", "tmpfs", &["nosuid", "size=1m"])).is_none());
        assert!(MountKey::of(&plan("tmpfs", "tmpfs", &["nosuid", "mode=755"])).is_some());
        assert!(MountKey::of(&plan("tmpfs", "tmpfs", &["mode=755", "tmpcopyup"])).is_none());
        assert!(MountKey::of(&plan("proc", "proc", &[])).is_none());
    }

    #[test]
    fn keys_differ_by_source_flags_and_options() {
        let dev = MountKey::of(&plan("tmpfs", "tmpfs", &["nosuid", "mode=755"]));
        let shm = MountKey::of(&plan("tmpfs", "shm", &["nosuid", "mode=755"]));
        let noexec = MountKey::of(&plan("tmpfs", "tmpfs", &["nosuid", "noexec", "mode=755"]));
        let other = MountKey::of(&plan("tmpfs", "tmpfs", &["nosuid", "mode=700"]));
        assert_ne!(dev, shm);
        assert_ne!(dev, noexec);
        assert_ne!(dev, other);
        assert_eq!(
            dev,
            MountKey::of(&plan("tmpfs", "tmpfs", &["nosuid", "mode=755"]))
        );
    }

    fn staged(plans: &[&MountPlan]) -> Staged {
        let mounts = plans
            .iter()
            .map(|p| {
                let fd = std::fs::File::open("/dev/null").expect("/dev/null");
                (MountKey::of(p).expect("stageable"), OwnedFd::from(fd))
            })
            .collect();
        Staged { mounts }
    }

    #[test]
    fn a_staged_mount_serves_one_container_and_only_where_it_fits() {
        let dev = plan("tmpfs", "tmpfs", &["nosuid", "mode=755"]);
        let shm = plan("tmpfs", "shm", &["nosuid", "mode=1777"]);
        let mqueue = plan("mqueue", "mqueue", &["nosuid"]);
        let sysfs = plan("sysfs", "sysfs", &["ro"]);
        let proc = plan("proc", "proc", &[]);
        let fits = Fit {
            spare_ipc: true,
            own_netns: false,
            user_ns: false,
        };
        let mounts = [proc.clone(), dev.clone(), mqueue.clone(), sysfs.clone()];
        let mut s = staged(&[&dev, &shm, &mqueue, &sysfs]);
        let taken: Vec<usize> = s.take_for(&mounts, &fits).iter().map(|(i, _)| *i).collect();
        assert_eq!(taken, [1, 2, 3]);
        // Taken once: the next container mounts its own; shm is left.
        assert!(s.take_for(&mounts, &fits).is_empty());
        assert_eq!(s.mounts.len(), 1);

        // mqueue only with the spare IPC namespace, sysfs only in the
        // agent's network namespace, nothing with a user namespace.
        let mut s = staged(&[&dev, &mqueue, &sysfs]);
        let elsewhere = Fit {
            spare_ipc: false,
            own_netns: true,
            user_ns: false,
        };
        let taken: Vec<usize> = s
            .take_for(&mounts, &elsewhere)
            .iter()
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(taken, [1]);
        let user = Fit {
            spare_ipc: true,
            own_netns: false,
            user_ns: true,
        };
        assert!(s.take_for(&mounts, &user).is_empty());
    }
}
