//! What both ends check about containers.

/// Longest container id accepted.
pub const MAX_CONTAINER_ID_LEN: usize = 128;

/// A container id as runc accepts it, bounded: 1 to
/// [`MAX_CONTAINER_ID_LEN`] characters from `[A-Za-z0-9_.-]`, and not `.`
/// or `..`. The id names the container's cgroup directory in the guest, so
/// it must be a plain file name.
pub fn validate_container_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("the container id is empty".into());
    }
    if id.len() > MAX_CONTAINER_ID_LEN {
        return Err(format!(
            "the container id is {} characters long; at most {MAX_CONTAINER_ID_LEN} are allowed",
            id.len()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "the container id {id:?} contains {bad:?}; only A-Z, a-z, 0-9, '_', '.' and '-' are allowed"
        ));
    }
    if id == "." || id == ".." {
        return Err(format!("{id:?} is not a container id"));
    }
    Ok(())
}

/// The tag of the per-VM virtio-fs share the host runtime exports.
pub const SHARE_TAG: &str = "runvm";
/// Where the agent mounts the share (`MountShare`).
pub const GUEST_SHARE_DIR: &str = "/run/runvm/share";
/// Longest virtio-fs tag (the device's config space holds 36 bytes).
pub const MAX_SHARE_TAG_LEN: usize = 36;

/// The guest path of container `id`'s root filesystem in the share: the
/// host binds the bundle's rootfs at `<share>/<id>/rootfs`.
pub fn shared_rootfs(id: &str) -> String {
    format!("{GUEST_SHARE_DIR}/{id}/rootfs")
}

/// A virtio-fs tag: 1 to [`MAX_SHARE_TAG_LEN`] bytes, no NUL (the mount
/// source) and no comma (the VMM's `--fs` syntax).
pub fn validate_share_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() || tag.len() > MAX_SHARE_TAG_LEN {
        return Err(format!(
            "the share tag {tag:?} must be 1 to {MAX_SHARE_TAG_LEN} bytes long"
        ));
    }
    if tag.contains(['\0', ',']) {
        return Err(format!("the share tag {tag:?} contains NUL or ','"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_like_runc_accepts() {
        for good in ["a", "busybox-1", "my_ctr.2", "A-Z_0.9", &"x".repeat(128)] {
            assert_eq!(validate_container_id(good), Ok(()), "{good}");
        }
        let sha = "0123456789abcdef".repeat(4);
        assert!(validate_container_id(&sha).is_ok());
    }

    #[test]
    fn share_tags_and_paths() {
        assert_eq!(validate_share_tag(SHARE_TAG), Ok(()));
        assert!(validate_share_tag(&"t".repeat(36)).is_ok());
        for bad in ["", "a,b", "nul\0", &"t".repeat(37)] {
            assert!(validate_share_tag(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(shared_rootfs("c1"), "/run/runvm/share/c1/rootfs");
    }

    #[test]
    fn ids_that_could_escape_or_confuse_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../x",
            "a b",
            "tab\t",
            "new\nline",
            "é",
            "a+b",
            "nul\0",
            &"x".repeat(129),
        ] {
            assert!(validate_container_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
