use super::*;
use runvm_agent_api::oci::{Linux, Mount, Process};
use std::os::unix::fs::{symlink, PermissionsExt};

fn spec(args0: &str, env: &[&str], mounts: &[&str], masked: &[&str]) -> Spec {
    Spec {
        process: Some(Process {
            args: Some(vec![args0.to_string(), "-c".into(), "true".into()]),
            env: Some(env.iter().map(|e| e.to_string()).collect()),
            ..Process::default()
        }),
        mounts: Some(
            mounts
                .iter()
                .map(|d| Mount {
                    destination: d.into(),
                    ..Mount::default()
                })
                .collect(),
        ),
        linux: Some(Linux {
            masked_paths: Some(masked.iter().map(|m| m.to_string()).collect()),
            ..Linux::default()
        }),
        ..Spec::default()
    }
}

/// A rootfs with /bin/busybox (0755), /bin/sh -> busybox, /sbin/sh (no x
/// bit), /usr/bin/cat (0750), /opt/bin/dir/ and /abs -> /bin/busybox.
fn rootfs(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("runvm-path-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for d in ["bin", "sbin", "usr/bin", "opt/bin/dir", "closed"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let file = |path: &str, mode: u32| {
        std::fs::write(dir.join(path), b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.join(path), std::fs::Permissions::from_mode(mode)).unwrap();
    };
    file("bin/busybox", 0o755);
    file("sbin/sh", 0o644);
    file("usr/bin/cat", 0o750);
    file("closed/tool", 0o755);
    std::fs::set_permissions(dir.join("closed"), std::fs::Permissions::from_mode(0o750)).unwrap();
    symlink("busybox", dir.join("bin/sh")).unwrap();
    symlink("/bin/busybox", dir.join("usr/bin/abs")).unwrap();
    symlink("../bin/busybox", dir.join("usr/bin/dotted")).unwrap();
    symlink("/nowhere", dir.join("usr/bin/dangling")).unwrap();
    dir
}

#[test]
fn the_first_runnable_file_in_path_is_named() {
    let dir = rootfs("found");
    let default =
        |name: &str| resolve(&spec(name, &[], &["/proc", "/dev"], &["/proc/kcore"]), &dir);
    // /sbin/sh has no x bit: skipped, as the agent's access(X_OK) does.
    assert_eq!(default("sh").as_deref(), Some("/bin/sh"));
    assert_eq!(default("busybox").as_deref(), Some("/bin/busybox"));
    // An absolute link to a plain path is followed once.
    assert_eq!(default("abs").as_deref(), Some("/usr/bin/abs"));
    // A dangling link: execve fails there and the search goes on.
    assert_eq!(default("dangling"), None);
    let own = |name: &str, path: &str| resolve(&spec(name, &[path], &[], &[]), &dir);
    assert_eq!(own("sh", "PATH=/opt/bin:/bin").as_deref(), Some("/bin/sh"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn what_the_host_cannot_judge_is_left_to_the_agent() {
    let dir = rootfs("unsure");
    let with = |name: &str, env: &[&str], mounts: &[&str], masked: &[&str]| {
        resolve(&spec(name, env, mounts, masked), &dir)
    };
    // Not everyone may run it (the user and capabilities decide).
    assert_eq!(with("cat", &[], &[], &[]), None);
    // A directory only some may search.
    assert_eq!(with("tool", &["PATH=/closed"], &[], &[]), None);
    // A link with `..`, a relative PATH entry, a name with a slash.
    assert_eq!(with("dotted", &[], &[], &[]), None);
    assert_eq!(with("sh", &["PATH=bin:/bin"], &[], &[]), None);
    assert_eq!(with("bin/sh", &[], &[], &[]), None);
    // Mounts or masked paths on a place the search looks at, before or at
    // the program, or on the file a link leads to.
    for mount in [
        "/usr/local/bin",
        "/usr",
        "/bin",
        "/bin/sh",
        "/",
        "/x/../bin",
    ] {
        assert_eq!(with("sh", &[], &[mount], &[]), None, "a mount on {mount}");
    }
    assert_eq!(with("sh", &[], &[], &["/sbin"]), None);
    assert_eq!(with("abs", &[], &["/bin/busybox"], &[]), None);
    // Mounts elsewhere, or past the program in PATH, change nothing.
    for mount in ["/bin2", "/etc", "/usr/binx"] {
        assert_eq!(with("sh", &[], &[mount], &[]).as_deref(), Some("/bin/sh"));
    }
    assert_eq!(
        with("sh", &["PATH=/bin:/usr/bin"], &["/usr/bin"], &[]).as_deref(),
        Some("/bin/sh")
    );
    // Nowhere in PATH: the agent reports it.
    assert_eq!(with("no-such-program", &[], &[], &[]), None);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_link_in_a_directory_on_the_way_is_not_followed() {
    let dir = rootfs("merged");
    std::fs::create_dir_all(dir.join("usr/sbin")).unwrap();
    std::fs::rename(dir.join("sbin"), dir.join("usr/sbin/real")).unwrap();
    symlink("usr/sbin/real", dir.join("sbin")).unwrap();
    let s = spec("sh", &["PATH=/sbin:/bin"], &[], &[]);
    assert_eq!(resolve(&s, &dir), None);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_file_some_class_may_not_run_is_the_agents() {
    let dir = rootfs("classes");
    // x for others but not for the owner: the owner is refused.
    std::fs::set_permissions(
        dir.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o645),
    )
    .unwrap();
    assert_eq!(resolve(&spec("busybox", &[], &[], &[]), &dir), None);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn mounts_through_links_or_inside_binds_leave_it_to_the_agent() {
    let dir = rootfs("placed");
    std::fs::create_dir_all(dir.join("run")).unwrap();
    std::fs::create_dir_all(dir.join("var")).unwrap();
    symlink("../run", dir.join("var/run")).unwrap();
    // The agent would mount at /run/x: a plain comparison cannot tell.
    assert_eq!(resolve(&spec("sh", &[], &["/var/run/x"], &[]), &dir), None);
    assert_eq!(resolve(&spec("sh", &[], &[], &["/var/run/y"]), &dir), None);
    let typed = |mounts: &[(&str, &str)]| {
        let mut s = spec("sh", &[], &[], &[]);
        s.mounts = Some(
            mounts
                .iter()
                .map(|(d, t)| Mount {
                    destination: d.into(),
                    typ: Some(t.to_string()),
                    options: Some(vec!["rbind".into()]).filter(|_| *t == "bind"),
                    ..Mount::default()
                })
                .collect(),
        );
        resolve(&s, &dir)
    };
    // A bind's contents (a volume) may hold links the host does not see.
    assert_eq!(typed(&[("/mnt", "bind"), ("/mnt/x/y", "tmpfs")]), None);
    // runc's own nesting, in file systems the agent makes, is fine.
    assert_eq!(
        typed(&[
            ("/dev", "tmpfs"),
            ("/dev/pts", "devpts"),
            ("/sys", "sysfs"),
            ("/sys/fs/cgroup", "cgroup")
        ])
        .as_deref(),
        Some("/bin/sh")
    );
    std::fs::remove_dir_all(dir).unwrap();
}
