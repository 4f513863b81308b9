//! HOME for a container's process, found on the host. A process without
//! HOME gets its uid's home directory from the container's /etc/passwd, as
//! with runc. The agent can look it up in the guest, but there every step
//! of the path and the read is a round trip through virtio-fs (six of them,
//! ~0.15 s on an emulating host); here the same file is a few native
//! syscalls away. It is read here only when the host's copy is what the
//! container will see: no mount of the spec covers it and no symlink leads
//! to it; otherwise HOME is left to the agent.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path};

use runvm_agent_api::oci::Spec;
use runvm_agent_api::passwd::{home_of, DEFAULT_HOME};

use crate::share::sys;

/// Larger passwd files are left to the agent.
const MAX_PASSWD_BYTES: u64 = 1 << 20;

/// Adds HOME to the process of `spec` when it has none and the passwd file
/// of `rootfs` (the host path of its root) can be read as the container
/// will see it.
pub fn fill_in(spec: &mut Spec, rootfs: &Path) {
    let Some(process) = spec.process.as_mut() else {
        return;
    };
    if process.env.iter().flatten().any(|e| e.starts_with("HOME=")) {
        return;
    }
    let covered = spec
        .mounts
        .iter()
        .flatten()
        .any(|m| covers_passwd(&m.destination));
    if covered {
        return;
    }
    let home = match read_passwd(rootfs) {
        Ok(Some(text)) => home_of(&text, process.user.uid)
            .unwrap_or(DEFAULT_HOME)
            .to_string(),
        // No /etc/passwd at all: the agent would find none either.
        Err(e) if e.kind() == io::ErrorKind::NotFound => DEFAULT_HOME.to_string(),
        Ok(None) | Err(_) => return,
    };
    process
        .env
        .get_or_insert_with(Vec::new)
        .push(format!("HOME={home}"));
}

/// Whether a mount at `destination` (in the container) hides or replaces
/// /etc/passwd: `/`, `/etc` or `/etc/passwd` itself. A destination with
/// `..` is taken to cover it.
fn covers_passwd(destination: &Path) -> bool {
    let mut parts = Vec::new();
    for component in destination.components() {
        match component {
            Component::Normal(name) => parts.push(name.to_os_string()),
            Component::ParentDir => return true,
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let passwd = ["etc", "passwd"];
    parts.len() <= passwd.len() && parts.iter().zip(passwd).all(|(part, name)| part == name)
}

/// The text of `rootfs`/etc/passwd: `None` when it is not a regular file
/// of a sane size. No symlink is followed and the walk stays on the
/// rootfs's own filesystem; the open does not block (a FIFO planted there).
fn read_passwd(rootfs: &Path) -> io::Result<Option<String>> {
    let root = sys::open_path(rootfs)?;
    let resolve = libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_BENEATH | libc::RESOLVE_NO_XDEV;
    let fd = sys::openat2(
        &root,
        Path::new("etc/passwd"),
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        resolve,
    )?;
    let mut file = File::from(fd);
    let metadata = file.metadata()?;
    if !metadata.is_file() || metadata.len() > MAX_PASSWD_BYTES {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    file.by_ref()
        .take(MAX_PASSWD_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_PASSWD_BYTES {
        return Ok(None);
    }
    Ok(String::from_utf8(bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use runvm_agent_api::oci::{Mount, Process};

    fn spec(env: &[&str], uid: u32, mounts: &[&str]) -> Spec {
        let mut process = Process {
            env: Some(env.iter().map(|e| e.to_string()).collect()),
            ..Process::default()
        };
        process.user.uid = uid;
        Spec {
            process: Some(process),
            mounts: Some(
                mounts
                    .iter()
                    .map(|d| Mount {
                        destination: d.into(),
                        ..Mount::default()
                    })
                    .collect(),
            ),
            ..Spec::default()
        }
    }

    fn home(spec: &Spec) -> Option<String> {
        let env = spec.process.as_ref()?.env.as_ref()?;
        env.iter()
            .find_map(|e| e.strip_prefix("HOME=").map(str::to_string))
    }

    fn rootfs(name: &str, passwd: Option<&str>) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("runvm-home-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        if let Some(text) = passwd {
            std::fs::write(dir.join("etc/passwd"), text).unwrap();
        }
        dir
    }

    #[test]
    fn home_comes_from_the_rootfs_passwd() {
        let dir = rootfs(
            "found",
            Some("root:x:0:0::/root:/bin/sh\nu:x:7:7::/home/u:/bin/sh\n"),
        );
        let mut s = spec(&["PATH=/bin"], 7, &["/proc", "/dev"]);
        fill_in(&mut s, &dir);
        assert_eq!(home(&s).as_deref(), Some("/home/u"));
        // A uid it does not list: `/`, as runc gives it.
        let mut s = spec(&[], 9, &[]);
        fill_in(&mut s, &dir);
        assert_eq!(home(&s).as_deref(), Some("/"));
        // A HOME given is kept.
        let mut s = spec(&["HOME=/x"], 7, &[]);
        fill_in(&mut s, &dir);
        assert_eq!(home(&s).as_deref(), Some("/x"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_mount_or_a_symlink_leaves_home_to_the_agent() {
        let dir = rootfs("covered", Some("root:x:0:0::/root:/bin/sh\n"));
        for destination in ["/etc", "/etc/passwd", "/", "etc/", "/x/../etc"] {
            let mut s = spec(&[], 0, &[destination]);
            fill_in(&mut s, &dir);
            assert_eq!(home(&s), None, "a mount on {destination}");
        }
        let mut s = spec(&[], 0, &["/etc/passwd.d", "/etcetera"]);
        fill_in(&mut s, &dir);
        assert_eq!(home(&s).as_deref(), Some("/root"));

        std::fs::remove_file(dir.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.join("etc/passwd")).unwrap();
        let mut s = spec(&[], 0, &[]);
        fill_in(&mut s, &dir);
        assert_eq!(home(&s), None, "a symlink is not followed");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn no_passwd_file_means_the_default_home() {
        let dir = rootfs("none", None);
        let mut s = spec(&[], 0, &[]);
        fill_in(&mut s, &dir);
        assert_eq!(home(&s).as_deref(), Some("/"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
