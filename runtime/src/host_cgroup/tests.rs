//! Tests on this host's real cgroups, in a scratch cgroup below the test
//! process's own (relative paths), removed at the end. They need root and
//! say so when skipped.

use std::path::Path;
use std::process::Command;

use oci_spec::runtime::Spec;

use super::limits::CpuLimits;
use super::*;

fn layout_if_root() -> Option<Layout> {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to make cgroups");
        return None;
    }
    match Layout::current() {
        Ok(layout) => Some(layout),
        Err(e) => {
            eprintln!("skipped: {e}");
            None
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

#[test]
fn errors_name_the_directory_and_the_reason() {
    let error = CgroupError::Create {
        path: "/sys/fs/cgroup/memory/foo".into(),
        source: io::Error::from_raw_os_error(libc::EACCES),
    };
    assert_eq!(
        error.to_string(),
        "cannot create cgroup /sys/fs/cgroup/memory/foo: Permission denied"
    );
}

#[test]
fn a_scratch_cgroup_is_made_limited_joined_and_removed() {
    let Some(layout) = layout_if_root() else {
        return;
    };
    let scratch = format!("runvm-unit-{}", std::process::id());
    let inner = path::resolve(Some(Path::new(&format!("{scratch}/c1"))), "c1", false)
        .expect("a relative path");
    let cgroup = HostCgroup::create(&layout, &inner).expect("made");
    assert_eq!(cgroup.dirs.len(), layout.hierarchies.len());
    for dir in &cgroup.dirs {
        assert!(dir.path.is_dir(), "{} was not made", dir.path.display());
        assert!(dir.path.ends_with(format!("{scratch}/c1")));
        assert_eq!(dir.made.len(), 2, "the scratch parent and the leaf");
        assert_eq!(dir.made.last(), Some(&dir.path));
    }
    if let Some(cpuset) = cgroup.dir_for("cpuset") {
        assert!(!read(&cpuset.path.join("cpuset.cpus")).is_empty());
        assert!(!read(&cpuset.path.join("cpuset.mems")).is_empty());
    }

    cgroup.set_memory(Some(256 << 20)).expect("memory limit");
    if let Some(memory) = cgroup.dir_for("memory") {
        let file = if memory.unified {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        assert_eq!(read(&memory.path.join(file)), (256u64 << 20).to_string());
    }
    let cpu = CpuLimits {
        shares: Some(512),
        quota: Some(50_000),
        period: Some(100_000),
    };
    cgroup.set_cpu(&cpu).expect("cpu limits");
    if let Some(dir) = cgroup.dir_for("cpu").filter(|d| !d.unified) {
        assert_eq!(read(&dir.path.join("cpu.cfs_quota_us")), "50000");
        assert_eq!(read(&dir.path.join("cpu.shares")), "512");
    }

    // A process joins every directory.
    let mut child = Command::new("sleep").arg("60").spawn().expect("sleep");
    cgroup.join(child.id()).expect("joined");
    for dir in &cgroup.dirs {
        let procs = read(&dir.path.join("cgroup.procs"));
        assert!(
            procs.lines().any(|p| p == child.id().to_string()),
            "{} lists {procs:?}",
            dir.path.display()
        );
    }

    // Made again, the existing directories are joined, not claimed: their
    // removal leaves them.
    let again = HostCgroup::create(&layout, &inner).expect("joined");
    assert!(again.dirs.iter().all(|d| d.made.is_empty()), "{again:?}");
    again.remove().expect("nothing to remove");
    assert!(cgroup.dirs.iter().all(|d| d.path.is_dir()));

    // Removal kills what is left inside and takes the parent it made.
    cgroup.remove().expect("removed");
    let _ = child.wait();
    for dir in &cgroup.dirs {
        assert!(!dir.path.exists(), "{} is left", dir.path.display());
        let parent = dir.path.parent().expect("a parent");
        assert!(!parent.exists(), "{} is left", parent.display());
    }
}

#[test]
fn removing_what_is_gone_is_no_error() {
    let gone = HostCgroup {
        dirs: vec![CgroupDir {
            path: "/sys/fs/cgroup/runvm-no-such-cgroup".into(),
            unified: false,
            controllers: vec!["memory".into()],
            made: vec!["/sys/fs/cgroup/runvm-no-such-cgroup".into()],
        }],
    };
    gone.remove().expect("nothing to do");
}

/// The pids in `dir`'s cgroup.procs.
fn members(dir: &Path) -> Vec<u32> {
    read(&dir.join("cgroup.procs"))
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

#[test]
fn a_child_is_spawned_into_the_cgroup_a_config_names_with_what_it_forks() {
    use std::os::unix::process::CommandExt;
    let Some(_) = layout_if_root() else {
        return;
    };
    let scratch = format!("runvm-unit-entry-{}", std::process::id());
    let spec: Spec = serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "linux": {"cgroupsPath": format!("{scratch}/pod")}
    }))
    .expect("spec");
    let cgroup = HostCgroup::for_container(&spec, "pod", false, Some(128 << 20)).expect("made");
    if let Some(memory) = cgroup.dir_for("memory").filter(|d| !d.unified) {
        assert!(memory.path.ends_with(format!("{scratch}/pod")));
        assert_eq!(
            read(&memory.path.join("memory.limit_in_bytes")),
            (128u64 << 20).to_string()
        );
    }
    let entry = cgroup.entry();
    let mut command = Command::new("sh");
    command.args(["-c", "sleep 60 & wait"]);
    // SAFETY: join_self only opens, writes and closes.
    unsafe { command.pre_exec(move || entry.join_self()) };
    let mut child = command.spawn().expect("sh");
    // The shell and the sleep it forked, and not this process.
    for dir in &cgroup.dirs {
        let mut inside = Vec::new();
        for _ in 0..250 {
            inside = members(&dir.path);
            if inside.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            inside.contains(&child.id()),
            "{}: {inside:?}",
            dir.path.display()
        );
        assert_eq!(inside.len(), 2, "{}: {inside:?}", dir.path.display());
        assert!(!inside.contains(&std::process::id()));
    }
    cgroup.remove().expect("removed, its processes killed");
    let _ = child.wait();
    for dir in &cgroup.dirs {
        let parent = dir.path.parent().expect("a parent");
        assert!(!parent.exists(), "{} is left", parent.display());
    }
}

#[test]
fn a_cgroup_that_cannot_be_entered_fails_the_spawn() {
    use std::os::unix::process::CommandExt;
    let gone = HostCgroup {
        dirs: vec![CgroupDir {
            path: "/sys/fs/cgroup/runvm-no-such-cgroup".into(),
            unified: false,
            controllers: vec!["memory".into()],
            made: Vec::new(),
        }],
    };
    let entry = gone.entry();
    let mut command = Command::new("true");
    // SAFETY: join_self only opens, writes and closes.
    unsafe { command.pre_exec(move || entry.join_self()) };
    let error = command.spawn().expect_err("no such cgroup");
    assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");
}
