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
