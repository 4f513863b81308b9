//! Before the rootfs is bound onto itself for pivot_root: the mount that
//! holds it must not be shared. With `rootfsPropagation: rshared`
//! (containerd's choice when a mount is Bidirectional) the init makes the
//! whole tree shared, so the rootfs's bind would join the holder's peer
//! group and pivot_root refuses a shared new root (EINVAL). runc makes
//! that holder private first (`rootfsParentMountPrivate`); so does this.

use nix::mount::MsFlags;

use super::rootfs::mount;

/// The mount point holding `path` (the deepest one that is `path` or one
/// of its parents; the topmost mount there) in a /proc/self/mountinfo
/// text, and whether that mount is shared. `path` must be absolute and
/// need no escaping (no spaces, tabs, newlines or backslashes).
pub fn holder<'a>(mountinfo: &'a str, path: &str) -> Option<(&'a str, bool)> {
    let under = |point: &str| {
        point == "/"
            || path == point
            || path
                .strip_prefix(point)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let point = line.split(' ').nth(4)?;
            let (head, _) = line.split_once(" - ")?;
            let shared = head
                .split(' ')
                .skip(6)
                .any(|field| field.starts_with("shared:"));
            under(point).then_some((point, shared))
        })
        // The deepest point; among mounts stacked on it, the last (top).
        .fold(None, |best: Option<(&str, bool)>, found| match best {
            Some(b) if b.0.len() > found.0.len() => Some(b),
            _ => Some(found),
        })
}

/// Makes the mount holding `rootfs` private if it is shared (only that
/// mount: the rest of the tree keeps the spec's propagation).
pub fn unshare_holder(rootfs: &str) -> Result<(), String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read mountinfo: {e}"))?;
    match holder(&mountinfo, rootfs) {
        Some((point, true)) => mount(None, point, None, MsFlags::MS_PRIVATE, None)
            .map_err(|e| format!("cannot make {point} (which holds the rootfs) private: {e}")),
        Some((_, false)) => Ok(()),
        None => Err(format!("no mount holds the rootfs {rootfs}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:5 / /run rw,nosuid shared:2 - tmpfs tmpfs rw
24 23 0:30 / /run/runvm/share rw,nosuid,nodev shared:7 - virtiofs runvm rw
25 24 0:31 / /run/runvm/share/c1/rootfs rw,nosuid,nodev master:3 - virtiofs runvm rw
26 23 0:32 / /run/runvm/sharex rw - tmpfs tmpfs rw
27 24 0:33 / /run/runvm/share rw,nosuid,nodev - virtiofs runvm rw
";

    #[test]
    fn the_holder_is_the_deepest_mount_point_above_the_path() {
        let first = &MOUNTINFO[..MOUNTINFO.find("27 24").unwrap()];
        assert_eq!(
            holder(first, "/run/runvm/share/c2/rootfs"),
            Some(("/run/runvm/share", true))
        );
        // A mount point that only shares a prefix of the name does not hold it.
        assert_eq!(holder(first, "/run/runvm/shar"), Some(("/run", true)));
        // The path itself is a mount point, a slave (not shared).
        assert_eq!(
            holder(first, "/run/runvm/share/c1/rootfs"),
            Some(("/run/runvm/share/c1/rootfs", false))
        );
        assert_eq!(holder(first, "/etc"), Some(("/", true)));
    }

    #[test]
    fn of_stacked_mounts_the_top_one_counts() {
        assert_eq!(
            holder(MOUNTINFO, "/run/runvm/share/c2/rootfs"),
            Some(("/run/runvm/share", false))
        );
    }
}
