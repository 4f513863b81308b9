//! What `linux.cgroupsPath` names, read as runc 1.1 reads it:
//! - cgroupfs (the default): a path cleaned of `.` and `..` (never above
//!   the root). An absolute one (`/a/b`) is below each hierarchy's root;
//!   a relative one (`a/b`) is below the cgroup runvm itself is in (on
//!   cgroup v2: below its parent, which holds no processes). Without a
//!   cgroupsPath the container's id is used as a relative path, as runc
//!   does (`runc run x` puts `x` below its own cgroup).
//! - `--systemd-cgroup`: `slice:prefix:name`. runvm does not talk to
//!   systemd; it makes the directories systemd would make for that scope,
//!   `<slice expanded>/<prefix>-<name>.scope`, with slices expanded the
//!   way systemd does (`a-b.slice` is `a.slice/a-b.slice`). An empty
//!   slice is `system.slice`, and no cgroupsPath at all is
//!   `system.slice:runc:<id>`, runc's defaults.

use std::path::{Path, PathBuf};

use super::CgroupError;

/// A cgroup path relative to some root, cleaned: components only, none
/// of them `.`, `..` or empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inner {
    /// Below each hierarchy's root (true) or below runvm's own cgroup.
    pub absolute: bool,
    pub components: Vec<String>,
}

impl Inner {
    /// The components as a relative path (empty for the root itself).
    pub fn relative_path(&self) -> PathBuf {
        self.components.iter().collect()
    }
}

/// Resolves `cgroups_path` (config.json's `linux.cgroupsPath`) for the
/// container `id`.
pub fn resolve(cgroups_path: Option<&Path>, id: &str, systemd: bool) -> Result<Inner, CgroupError> {
    let text = cgroups_path
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| !p.is_empty());
    if systemd {
        let text = text.unwrap_or_else(|| format!(":runc:{id}"));
        return systemd_path(&text);
    }
    let inner = match text {
        Some(text) => clean(&text),
        None => clean(id),
    };
    if inner.components.is_empty() {
        // runc would put the container in the root cgroup; runvm refuses
        // to: it could never remove it, and limits there mean nothing.
        return Err(CgroupError::Path(format!(
            "cgroupsPath {:?} names the root cgroup",
            cgroups_path.map(Path::to_string_lossy).unwrap_or_default()
        )));
    }
    Ok(inner)
}

/// Whether `cgroups_path` is in systemd's form, for a caller that is not
/// told which driver is in use (a containerd shim gets no `--systemd-cgroup`;
/// containerd and kubelet write `slice:prefix:name` under the systemd
/// driver): three fields split by `:`, the first a slice or empty, and
/// not a path. Kata Containers tells them apart the same way.
pub fn is_systemd_form(cgroups_path: &str) -> bool {
    let parts: Vec<&str> = cgroups_path.split(':').collect();
    match parts[..] {
        [slice, _, _] => {
            !cgroups_path.starts_with('/') && (slice.is_empty() || slice.ends_with(".slice"))
        }
        _ => false,
    }
}

/// A path cleaned lexically: `..` never goes above the start.
fn clean(text: &str) -> Inner {
    let mut components: Vec<String> = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                components.pop();
            }
            part => components.push(part.to_owned()),
        }
    }
    Inner {
        absolute: text.starts_with('/'),
        components,
    }
}

/// `slice:prefix:name` as the directories systemd would make.
fn systemd_path(text: &str) -> Result<Inner, CgroupError> {
    let parts: Vec<&str> = text.split(':').collect();
    let [slice, prefix, name] = parts[..] else {
        return Err(CgroupError::Path(format!(
            "expected cgroupsPath to be of format \"slice:prefix:name\" for systemd cgroups, got {text:?} instead"
        )));
    };
    let slice = if slice.is_empty() {
        "system.slice"
    } else {
        slice
    };
    let mut components = expand_slice(slice)?;
    if name.is_empty() || !unit_text(name) || !unit_text(prefix) {
        return Err(CgroupError::Path(format!(
            "invalid unit name {prefix:?}-{name:?} in cgroupsPath {text:?}"
        )));
    }
    let unit = if name.ends_with(".slice") {
        // A slice of its own, below the parent slice.
        name.to_owned()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    components.push(unit);
    Ok(Inner {
        absolute: true,
        components,
    })
}

/// Only what systemd allows in a unit name (letters, digits, `:_.-@\\`),
/// and not `.` or `..`: the name becomes one directory, and nothing in it
/// may lead elsewhere.
fn unit_text(text: &str) -> bool {
    text != "."
        && text != ".."
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.-@\\".contains(c))
}

/// systemd's expansion of a slice name into its cgroup directories:
/// `a-b-c.slice` is `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the
/// root.
fn expand_slice(slice: &str) -> Result<Vec<String>, CgroupError> {
    let invalid = || CgroupError::Path(format!("invalid slice name {slice:?}"));
    let base = slice.strip_suffix(".slice").ok_or_else(invalid)?;
    if !unit_text(slice) {
        return Err(invalid());
    }
    if base == "-" {
        return Ok(Vec::new());
    }
    if base.is_empty() || base.starts_with('-') || base.ends_with('-') || base.contains("--") {
        return Err(invalid());
    }
    let mut components = Vec::new();
    for (at, _) in base.match_indices('-') {
        components.push(format!("{}.slice", &base[..at]));
    }
    components.push(slice.to_owned());
    Ok(components)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner(absolute: bool, components: &[&str]) -> Inner {
        Inner {
            absolute,
            components: components.iter().map(|c| c.to_string()).collect(),
        }
    }

    fn cgroupfs(path: Option<&str>) -> Result<Inner, CgroupError> {
        resolve(path.map(Path::new), "c1", false)
    }

    #[test]
    fn absolute_and_relative_paths_are_cleaned() {
        assert_eq!(cgroupfs(Some("/a/b")).ok(), Some(inner(true, &["a", "b"])));
        assert_eq!(
            cgroupfs(Some("//a/./b/")).ok(),
            Some(inner(true, &["a", "b"]))
        );
        assert_eq!(cgroupfs(Some("a/b")).ok(), Some(inner(false, &["a", "b"])));
        // `..` never leaves the root it is relative to.
        assert_eq!(
            cgroupfs(Some("/../../etc/x")).ok(),
            Some(inner(true, &["etc", "x"]))
        );
        assert_eq!(cgroupfs(Some("a/../../b")).ok(), Some(inner(false, &["b"])));
        assert!(cgroupfs(Some("/")).is_err());
        assert!(cgroupfs(Some("a/..")).is_err());
        // A colon means nothing without --systemd-cgroup.
        assert_eq!(
            cgroupfs(Some("system.slice:docker:x")).ok(),
            Some(inner(false, &["system.slice:docker:x"]))
        );
    }

    #[test]
    fn no_path_is_the_id_below_our_own_cgroup() {
        assert_eq!(cgroupfs(None).ok(), Some(inner(false, &["c1"])));
        assert_eq!(cgroupfs(Some("")).ok(), Some(inner(false, &["c1"])));
    }

    #[test]
    fn the_systemd_form_is_told_from_a_path() {
        for systemd in [
            "kubepods-besteffort-pod12.slice:cri-containerd:abc",
            "system.slice:docker:abc",
            ":runc:abc",
        ] {
            assert!(is_systemd_form(systemd), "{systemd}");
        }
        for cgroupfs in [
            "/kubepods/besteffort/pod12/abc",
            "default/abc",
            "",
            "a:b",
            "/x.slice:p:n",
            "notaslice:p:n",
            "a.slice:p:n:extra",
        ] {
            assert!(!is_systemd_form(cgroupfs), "{cgroupfs}");
        }
    }

    #[test]
    fn systemd_paths_become_scopes_in_expanded_slices() {
        let systemd = |path: Option<&str>| resolve(path.map(Path::new), "c1", true);
        assert_eq!(
            systemd(Some("machine.slice:libpod:abc")).ok(),
            Some(inner(true, &["machine.slice", "libpod-abc.scope"]))
        );
        assert_eq!(
            systemd(Some("kubepods-besteffort-pod12.slice:cri-containerd:abc")).ok(),
            Some(inner(
                true,
                &[
                    "kubepods.slice",
                    "kubepods-besteffort.slice",
                    "kubepods-besteffort-pod12.slice",
                    "cri-containerd-abc.scope"
                ]
            ))
        );
        assert_eq!(
            systemd(Some(":docker:abc")).ok(),
            Some(inner(true, &["system.slice", "docker-abc.scope"]))
        );
        assert_eq!(
            systemd(Some("-.slice::abc")).ok(),
            Some(inner(true, &["abc.scope"]))
        );
        assert_eq!(
            systemd(Some("user.slice:x:sub-a.slice")).ok(),
            Some(inner(true, &["user.slice", "sub-a.slice"]))
        );
        assert_eq!(
            systemd(None).ok(),
            Some(inner(true, &["system.slice", "runc-c1.scope"]))
        );
        for bad in [
            "/a/b",
            "a:b",
            "a:b:c:d",
            "noslice:p:n",
            "a--b.slice:p:n",
            "-a.slice:p:n",
            "a.slice:p:",
            "a.slice:p:x/y",
            // Nothing may climb out of the hierarchy or restart the path.
            "system.slice:../../../../../tmp/x:y",
            "system.slice:/tmp/evil:y",
            "system.slice:p:..",
            "system.slice:..:y",
            "system.slice:p:a b",
        ] {
            assert!(systemd(Some(bad)).is_err(), "{bad} should be refused");
        }
    }
}
