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

use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use runvm_agent_api::{validate_share_tag, AgentError, ErrorKind, ResponseBody, GUEST_SHARE_DIR};

use crate::exec::{invalid, system};

/// The tag MountShare mounted at [`GUEST_SHARE_DIR`]: nothing else mounts
/// there, so the agent's memory is the record (asking the kernel, by
/// reading mountinfo, costs ~0.1 s of formatting on an emulating host).
static MOUNTED_TAG: Mutex<Option<String>> = Mutex::new(None);

/// What a MountShare of `tag` must do when `mounted` is already there.
fn already(mounted: Option<&str>, tag: &str) -> Option<Result<ResponseBody, AgentError>> {
    match mounted {
        None => None,
        Some(t) if t == tag => Some(Ok(ResponseBody::Done)),
        Some(t) => Some(Err(AgentError {
            kind: ErrorKind::Conflict,
            message: format!("{GUEST_SHARE_DIR} holds virtiofs {t:?} already"),
        })),
    }
}

/// `MountShare`: the virtio-fs device `tag` at [`GUEST_SHARE_DIR`]. A
/// second request for the same tag is answered `Done` at once.
pub fn mount_share(tag: &str) -> Result<ResponseBody, AgentError> {
    validate_share_tag(tag).map_err(invalid)?;
    let mut mounted = MOUNTED_TAG.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(answer) = already(mounted.as_deref(), tag) {
        return answer;
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
            *mounted = Some(tag.to_owned());
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

    #[test]
    fn a_second_mount_of_the_share_is_done_or_a_conflict() {
        assert!(already(None, "runvm").is_none());
        assert!(matches!(
            already(Some("runvm"), "runvm"),
            Some(Ok(ResponseBody::Done))
        ));
        let e = already(Some("other"), "runvm").unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Conflict);
        assert!(e.message.contains("\"other\""), "{}", e.message);
    }

    #[test]
    fn bad_tags_are_refused_before_any_mount() {
        for tag in ["", "a,b", &"x".repeat(37)] {
            let e = mount_share(tag).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidRequest, "{tag:?}");
        }
    }
}
