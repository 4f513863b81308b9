//! A container's place in its pod: the VM's containers, a sandbox (the
//! container that owns the VM) and its members.
//!
//! **Shared namespaces.** The host names them by container ("join
//! namespace TYPE of container ID", [`SharedNamespace`]), never by guest
//! pid: a pid may have been reused by the time a request arrives. The
//! agent resolves the name to that container's init through a pidfd it
//! opened when it created the init (while the init was its unreaped
//! child, so the pid was that process): the namespace is opened through
//! `/proc/<pid>/ns`, then the pidfd confirms that the process is still
//! alive, so a pid reused meanwhile cannot lend its namespace. A container
//! that does not exist, or whose init has ended, is refused. Only network,
//! IPC, UTS and PID namespaces are shared (the host asks for PID only when
//! the member's config.json names the sandbox's); mount and cgroup
//! namespaces are always the container's own, user namespaces as its spec
//! says.
//!
//! **The pod's cgroup.** Containers of a pod with limits of its own get
//! `<root>/<pod>/<id>`: the pod's directory holds no process itself, only
//! its containers' directories (cgroup v2 allows no process in a cgroup
//! that hands controllers down), with the controllers enabled for them and
//! the pod's own limits on it, so the containers together stay within the
//! pod's limits and each within its own. The first container of the pod
//! brings the limits and makes it; it is removed when the last one is
//! deleted. A pod without limits has no directory: its containers get
//! `<root>/<id>`, one level fewer to create and to charge (the VM, sized
//! and limited on the host, bounds the pod anyway). Pure parts are tested
//! on the host.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use runvm_agent_api::oci::{LinuxNamespaceType, Spec};
use runvm_agent_api::{validate_container_id, SharedNamespace};

use super::cgroups::{self, CgroupWrite};
use super::spec::{namespace_flag, ContainerPlan, Namespace};

/// Marks the namespaces of `plan` that container `id` takes from other
/// containers of its pod (`shared`). Each must be a network, IPC, UTS or
/// PID namespace that the spec lists without a path, named once.
pub fn share_namespaces(
    plan: &mut ContainerPlan,
    spec: &Spec,
    id: &str,
    shared: &[SharedNamespace],
) -> Result<(), String> {
    let listed = spec
        .linux
        .as_ref()
        .and_then(|linux| linux.namespaces.as_ref());
    for share in shared {
        let (flag, name) = namespace_flag(share.typ)?;
        if !matches!(
            share.typ,
            LinuxNamespaceType::Network
                | LinuxNamespaceType::Ipc
                | LinuxNamespaceType::Uts
                | LinuxNamespaceType::Pid
        ) {
            return Err(format!(
                "the {name} namespace cannot be shared in a pod: each container has its own"
            ));
        }
        validate_container_id(&share.container)?;
        if share.container == id {
            return Err(format!(
                "container {id:?} cannot share its own {name} namespace"
            ));
        }
        let entry = listed
            .into_iter()
            .flatten()
            .find(|ns| ns.typ == share.typ)
            .ok_or_else(|| {
                format!("the {name} namespace is shared, but linux.namespaces has no {name} entry")
            })?;
        if entry.path.is_some() {
            return Err(format!(
                "the {name} namespace is both shared and joined by path"
            ));
        }
        match plan.namespaces.iter_mut().find(|ns| ns.flag == flag) {
            Some(ns) if ns.shared_with.is_some() => {
                return Err(format!("the {name} namespace is shared twice"));
            }
            Some(ns) => ns.shared_with = Some(share.container.clone()),
            // A new network namespace is left out of the plan (the guest's
            // is the pod's): a shared one is joined all the same.
            None => plan.namespaces.push(Namespace {
                flag,
                name,
                path: None,
                shared_with: Some(share.container.clone()),
            }),
        }
    }
    Ok(())
}

/// A pidfd for `pid` (pidfd_open(2)).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
}

/// Whether the process of `pidfd` has not been reaped.
fn still_there(pidfd: &OwnedFd) -> io::Result<()> {
    // SAFETY: pidfd_send_signal(2) with signal 0 only checks.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Namespace `name` (as under /proc/<pid>/ns) of process `pid`, known by
/// `pidfd`: opened, then checked to be that process's.
pub fn namespace_of(pid: i32, pidfd: &OwnedFd, name: &str) -> io::Result<OwnedFd> {
    let path = CString::new(format!("/proc/{pid}/ns/{name}"))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open(2) with a C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    still_there(pidfd)?;
    Ok(fd)
}

/// The pod's cgroup directory under `root`.
pub fn cgroup_dir(root: &Path, pod: &str) -> Result<PathBuf, String> {
    validate_container_id(pod).map_err(|e| format!("the pod id: {e}"))?;
    Ok(root.join(pod))
}

/// Makes the pod's cgroup at `dir` if it is not there, with the container
/// controllers handed down to its containers; writes `limits` on it.
pub fn make_cgroup(dir: &Path, limits: &[CgroupWrite], wanted: &[&str]) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create the pod cgroup {}: {e}", dir.display()),
            ))
        }
    }
    cgroups::enable_controllers(dir, wanted)?;
    cgroups::Cgroup {
        path: dir.to_owned(),
    }
    .apply(limits)
}

/// Removes the pod's cgroup at `dir` once no container is left in it.
pub fn remove_cgroup_if_empty(dir: &Path) {
    let has_children = std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
    });
    if !has_children {
        let _ = std::fs::remove_dir(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::spec::container_plan;

    fn spec(namespaces: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
            "linux": {"namespaces": namespaces}
        }))
        .unwrap()
    }

    fn share(typ: LinuxNamespaceType, container: &str) -> SharedNamespace {
        SharedNamespace {
            typ,
            container: container.into(),
        }
    }

    fn shared_plan(
        namespaces: serde_json::Value,
        shared: &[SharedNamespace],
    ) -> Result<ContainerPlan, String> {
        let spec = spec(namespaces);
        let mut plan = container_plan(&spec, Path::new("/r"), &[])?;
        share_namespaces(&mut plan, &spec, "member", shared)?;
        Ok(plan)
    }

    #[test]
    fn shared_namespaces_are_joined_not_created() {
        let plan = shared_plan(
            serde_json::json!([{"type": "mount"}, {"type": "network"}, {"type": "ipc"},
                               {"type": "uts"}, {"type": "pid"}]),
            &[
                share(LinuxNamespaceType::Network, "sandbox"),
                share(LinuxNamespaceType::Ipc, "sandbox"),
                share(LinuxNamespaceType::Uts, "sandbox"),
            ],
        )
        .unwrap();
        // Mount and PID new; the three others the sandbox's (the network
        // namespace, left out of a plain plan, is back to be joined).
        assert_eq!(plan.clone_flags(), libc::CLONE_NEWNS | libc::CLONE_NEWPID);
        let shared: Vec<_> = plan
            .namespaces
            .iter()
            .filter_map(|n| Some((n.name, n.shared_with.as_deref()?)))
            .collect();
        assert_eq!(
            shared,
            [("ipc", "sandbox"), ("uts", "sandbox"), ("net", "sandbox")]
        );
        let pid = shared_plan(
            serde_json::json!([{"type": "mount"}, {"type": "pid"}]),
            &[share(LinuxNamespaceType::Pid, "other-member")],
        )
        .unwrap();
        assert_eq!(pid.clone_flags(), libc::CLONE_NEWNS);
    }

    #[test]
    fn what_cannot_be_shared_is_refused() {
        let all = serde_json::json!([{"type": "mount"}, {"type": "ipc"}, {"type": "cgroup"},
                                     {"type": "uts"}]);
        for (shared, expected) in [
            (vec![share(LinuxNamespaceType::Mount, "s")], "own"),
            (vec![share(LinuxNamespaceType::Cgroup, "s")], "own"),
            (vec![share(LinuxNamespaceType::User, "s")], "own"),
            (vec![share(LinuxNamespaceType::Pid, "s")], "no pid entry"),
            (vec![share(LinuxNamespaceType::Ipc, "../x")], "\"../x\""),
            (vec![share(LinuxNamespaceType::Ipc, "member")], "its own"),
            (
                vec![
                    share(LinuxNamespaceType::Uts, "s"),
                    share(LinuxNamespaceType::Uts, "t"),
                ],
                "twice",
            ),
        ] {
            let err = shared_plan(all.clone(), &shared).unwrap_err();
            assert!(err.contains(expected), "{shared:?}: {err}");
        }
        let by_path = shared_plan(
            serde_json::json!([{"type": "mount"}, {"type": "ipc", "path": "/proc/1/ns/ipc"}]),
            &[share(LinuxNamespaceType::Ipc, "s")],
        )
        .unwrap_err();
        assert!(by_path.contains("by path"), "{by_path}");
    }

    #[test]
    fn a_namespace_is_taken_only_from_the_live_process() {
        let me = std::process::id() as i32;
        let pidfd = pidfd_open(me).unwrap();
        let own = std::fs::read_link("/proc/self/ns/uts").unwrap();
        let fd = namespace_of(me, &pidfd, "uts").unwrap();
        let seen = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
        assert_eq!(seen, own);
        assert!(namespace_of(me, &pidfd, "no-such").is_err());

        // A child that has ended and been reaped: its pidfd says so even
        // if the pid were someone else's by now.
        // The server tests reap with waitpid(-1): not while our child runs.
        let _serial = crate::server::tests::one_at_a_time();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let child_fd = pidfd_open(pid).unwrap();
        child.wait().unwrap();
        let err = namespace_of(me, &child_fd, "uts").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH), "{err}");
    }

    #[test]
    fn the_pod_cgroup_is_a_plain_name_and_goes_when_empty() {
        assert_eq!(
            cgroup_dir(Path::new("/sys/fs/cgroup"), "pod-1").unwrap(),
            Path::new("/sys/fs/cgroup/pod-1")
        );
        assert!(cgroup_dir(Path::new("/sys/fs/cgroup"), "..").is_err());
        assert!(cgroup_dir(Path::new("/sys/fs/cgroup"), "a/b").is_err());
        let dir = std::env::temp_dir().join(format!("runvm-pod-cg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("c1")).unwrap();
        remove_cgroup_if_empty(&dir);
        assert!(dir.exists(), "a container is left in it");
        std::fs::remove_dir(dir.join("c1")).unwrap();
        remove_cgroup_if_empty(&dir);
        assert!(!dir.exists());
    }
}
