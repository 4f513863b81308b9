//! The host's per-VM share: a virtio-fs device (tag `runvm`, served by a
//! virtiofsd the host runtime starts for this VM) that holds the
//! containers' root filesystems at `<share>/<id>/rootfs`.
//!
//! It is mounted on request (`MountShare`), not at boot: a mount costs a
//! FUSE_INIT round trip and a few emulated syscalls, and a VM that never
//! runs a container from a host bundle should not pay for them.
//!
//! The host binds each container's rootfs at its own directory, which
//! virtiofsd announces as a submount: the guest kernel mounts it on first
//! use (`/run/runvm/share/<id>/rootfs`), and `DeleteContainer` unmounts it
//! again ([`release_rootfs`]) so that the guest lets go of its inodes
//! before the host unbinds the rootfs.

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use runvm_agent_api::{validate_share_tag, AgentError, ErrorKind, ResponseBody, GUEST_SHARE_DIR};

use crate::exec::{invalid, system};

/// What is mounted at `dir` (the topmost mount there), as
/// (filesystem type, source), from a /proc/self/mountinfo text. `dir` must
/// need no escaping (no spaces, tabs, newlines or backslashes).
pub fn mounted_at(mountinfo: &str, dir: &str) -> Option<(String, String)> {
    mountinfo
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some(dir))
        .filter_map(|line| {
            let (_, tail) = line.split_once(" - ")?;
            let mut fields = tail.split(' ');
            Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
        })
        .next_back()
}

/// `MountShare`: the virtio-fs device `tag` at [`GUEST_SHARE_DIR`]. A
/// second request for the same tag is answered `Done` at once.
pub fn mount_share(tag: &str) -> Result<ResponseBody, AgentError> {
    validate_share_tag(tag).map_err(invalid)?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| system(format!("cannot read mountinfo: {e}")))?;
    match mounted_at(&mountinfo, GUEST_SHARE_DIR) {
        Some((fstype, source)) if fstype == "virtiofs" && source == tag => {
            return Ok(ResponseBody::Done)
        }
        Some((fstype, source)) => {
            return Err(AgentError {
                kind: ErrorKind::Conflict,
                message: format!("{GUEST_SHARE_DIR} holds {fstype} {source:?} already"),
            })
        }
        None => {}
    }
    // Only the agent (root) needs to reach it: containers see their own
    // root, never this directory.
    std::fs::DirBuilder::new()
        .recursive(true)
        .create(GUEST_SHARE_DIR)
        .map_err(|e| system(format!("cannot create {GUEST_SHARE_DIR}: {e}")))?;
    let _ = std::fs::set_permissions(
        GUEST_SHARE_DIR,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    );
    // nosuid, nodev: the files come from the host, where whoever made the
    // bundle may have planted a setuid binary or a device node for the
    // guest to honour. The rootfs submounts and the containers' binds
    // inherit both; a container's device nodes are the spec's, made on its
    // own /dev (a tmpfs), not taken from the share.
    match mount(
        Some(tag),
        GUEST_SHARE_DIR,
        Some("virtiofs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        None::<&str>,
    ) {
        Ok(()) => {
            widen_read_ahead(GUEST_SHARE_DIR);
            Ok(ResponseBody::Done)
        }
        Err(Errno::ENOENT) | Err(Errno::ENODEV) => Err(AgentError {
            kind: ErrorKind::NotFound,
            message: format!("no virtio-fs device with the tag {tag:?}"),
        }),
        Err(e) => Err(system(format!(
            "cannot mount virtio-fs {tag:?} on {GUEST_SHARE_DIR}: {e}"
        ))),
    }
}

/// How far the guest reads ahead in the share's files, in KiB (the
/// kernel's default is 128). Every FUSE request is a round trip through
/// virtiofsd and an interrupt that the guest kernel handles in emulated
/// instructions on an emulating host: the first exec of a 2 MB static
/// busybox took 19 reads at 128 KiB, each page fault reading around
/// itself. Read-around of 1 MiB fetches such a binary in a few requests;
/// the pages it reads without need are the file's own, and reclaimable.
const SHARE_READ_AHEAD_KIB: u32 = 1024;

/// Sets the read-ahead of the filesystem mounted at `dir` (its backing
/// device info, which the rootfs submounts share) to
/// [`SHARE_READ_AHEAD_KIB`]. Best effort: a kernel without the knob reads
/// ahead as it would anyway.
fn widen_read_ahead(dir: &str) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    let _ = std::fs::write(knob, SHARE_READ_AHEAD_KIB.to_string());
}

/// After a container is deleted: unmount the submount the guest kernel
/// made for its rootfs when that lies in the share, so that its inodes are
/// forgotten (virtiofsd closes its descriptors) before the host unbinds
/// the rootfs. Anything else is left alone; errors do not matter (the
/// submount may never have been mounted, or be gone already).
pub fn release_rootfs(rootfs: &str) {
    let Some(rest) = rootfs.strip_prefix(GUEST_SHARE_DIR) else {
        return;
    };
    if !rest.starts_with('/') || rest.split('/').any(|c| c == "..") {
        return;
    }
    let _ = umount2(rootfs, MntFlags::MNT_DETACH);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:5 / / rw - rootfs rootfs rw
23 22 0:20 / /run rw,nosuid,nodev - tmpfs tmpfs rw,mode=755
30 23 0:30 / /run/runvm/share rw - virtiofs runvm rw
31 30 0:31 / /run/runvm/share/c1/rootfs rw - virtiofs runvm rw
";

    #[test]
    fn what_is_mounted_where() {
        assert_eq!(
            mounted_at(MOUNTINFO, "/run/runvm/share"),
            Some(("virtiofs".into(), "runvm".into()))
        );
        assert_eq!(
            mounted_at(MOUNTINFO, "/run"),
            Some(("tmpfs".into(), "tmpfs".into()))
        );
        assert_eq!(mounted_at(MOUNTINFO, "/run/runvm"), None);
        // The topmost of stacked mounts counts.
        let stacked = format!("{MOUNTINFO}40 30 0:40 / /run/runvm/share rw - tmpfs none rw\n");
        assert_eq!(
            mounted_at(&stacked, "/run/runvm/share"),
            Some(("tmpfs".into(), "none".into()))
        );
    }

    #[test]
    fn bad_tags_are_refused_before_any_mount() {
        for tag in ["", "a,b", &"x".repeat(37)] {
            let e = mount_share(tag).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidRequest, "{tag:?}");
        }
    }
}
