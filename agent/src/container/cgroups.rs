//! Containers' cgroups in the guest (cgroup v2, mounted at /sys/fs/cgroup
//! by the agent): one directory per container under the root, limits from
//! `linux.resources`, usage for `ContainerStats`, killing what is left.
//!
//! Device rules (`linux.resources.devices`) are a BPF program attached to
//! the cgroup (see `devices`), not a file: `update` leaves them as they
//! are, as runc's does. Hugepage and block I/O limits are
//! written where the guest can enforce them and otherwise accepted when
//! they are trivially met (see `hugetlb_io`). RDMA and network limits are
//! refused by name; deprecated v1-only memory knobs (kernel, kernelTCP,
//! swappiness) are ignored, as runc does on v2.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runvm_agent_api::oci::{self, LinuxResources};
use runvm_agent_api::ContainerStats;

use super::hugetlb_io;

/// Controllers the agent enables for containers when the kernel has them.
pub const CONTROLLERS: &[&str] = &["cpu", "cpuset", "hugetlb", "io", "memory", "pids"];

/// Enabled for every container: what [`Cgroup::stats`] reads (cpu.stat's
/// usage is the core's, not the cpu controller's). The others are turned
/// on the first time a container's limits name one of their files: the
/// cpu controller gives each cgroup a scheduling entity of its own, whose
/// load tracking the guest pays at every tick and wake-up of a container
/// process (on an emulating host, `runvm run` of a trivial container took
/// ~16% longer with all six on).
pub const ALWAYS: &[&str] = &["memory", "pids"];

/// One file to write in the container's cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupWrite {
    pub file: String,
    pub value: String,
    /// What a missing file means.
    pub if_missing: IfMissing,
    /// Written only when this holds.
    pub only_if: Condition,
}

/// What it means when the file of a [`CgroupWrite`] does not exist: the
/// guest kernel lacks the controller or the resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMissing {
    /// The limit cannot be enforced: an error.
    Fail,
    /// The limit cannot be exceeded either (no swap to limit, no hugepages
    /// of that size, no block device under an io controller): nothing to do.
    Satisfied,
    /// An error with this explanation.
    FailWith(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    Always,
    /// The guest has this block device (major, minor).
    BlockDevice(u32, u32),
    /// The cgroup has no such file (an alternative took its place).
    NoFile(String),
}

/// A write whose file must exist.
pub fn write(file: &str, value: impl ToString) -> CgroupWrite {
    CgroupWrite {
        file: file.to_string(),
        value: value.to_string(),
        if_missing: IfMissing::Fail,
        only_if: Condition::Always,
    }
}

impl CgroupWrite {
    pub fn if_missing(mut self, what: IfMissing) -> CgroupWrite {
        self.if_missing = what;
        self
    }

    pub fn only_if(mut self, condition: Condition) -> CgroupWrite {
        self.only_if = condition;
        self
    }

    /// Whether it needs a cgroup at all: a write that a missing file
    /// satisfies is met without one too.
    pub fn needs_cgroup(&self) -> bool {
        self.if_missing != IfMissing::Satisfied
    }
}

pub use runvm_agent_api::oci::cpu_shares_to_weight as shares_to_weight;

/// OCI memory.swap is memory plus swap; v2 memory.swap.max is swap alone.
fn swap_max(limit: Option<i64>, swap: i64) -> Result<Option<String>, String> {
    match (swap, limit) {
        (0, _) => Ok(None),
        (s, _) if s < 0 => Ok(Some("max".into())),
        (_, None) | (_, Some(0)) => {
            Err("memory.swap needs memory.limit as well (it is memory plus swap)".into())
        }
        (_, Some(l)) if l < 0 => Ok(Some("max".into())),
        (s, Some(l)) if s < l => Err(format!(
            "memory.swap ({s}) is less than memory.limit ({l}); it counts memory plus swap"
        )),
        (s, Some(l)) => Ok(Some((s - l).to_string())),
    }
}

/// The files to write for `resources`, in order.
pub fn render(resources: &LinuxResources) -> Result<Vec<CgroupWrite>, String> {
    let mut out = Vec::new();
    if let Some(memory) = &resources.memory {
        if let Some(limit) = memory.limit {
            out.push(write("memory.max", limit_value(limit)));
        }
        if let Some(low) = memory.reservation {
            out.push(write("memory.low", limit_value(low)));
        }
        if let Some(swap) = memory.swap {
            if let Some(value) = swap_max(memory.limit, swap)? {
                // Missing when the guest has no swap: nothing to limit.
                out.push(write("memory.swap.max", value).if_missing(IfMissing::Satisfied));
            }
        }
        if memory.disable_oom_killer == Some(true) {
            return Err("disabling the OOM killer is not possible with cgroup v2".into());
        }
    }
    if let Some(cpu) = &resources.cpu {
        if let Some(shares) = cpu.shares.filter(|s| *s > 0) {
            out.push(write("cpu.weight", shares_to_weight(shares)));
        }
        if cpu.quota.is_some() || cpu.period.is_some() {
            let period = cpu.period.filter(|p| *p > 0).unwrap_or(100_000);
            let quota = match cpu.quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            out.push(write("cpu.max", format!("{quota} {period}")));
        }
        if let Some(burst) = cpu.burst {
            out.push(write("cpu.max.burst", burst));
        }
        if let Some(idle) = cpu.idle {
            out.push(write("cpu.idle", idle));
        }
        if cpu.realtime_runtime.is_some() || cpu.realtime_period.is_some() {
            return Err("realtime CPU limits are not supported with cgroup v2".into());
        }
        if let Some(cpus) = cpu.cpus.as_deref().filter(|c| !c.is_empty()) {
            out.push(write("cpuset.cpus", cpus));
        }
        if let Some(mems) = cpu.mems.as_deref().filter(|m| !m.is_empty()) {
            out.push(write("cpuset.mems", mems));
        }
    }
    if let Some(pids) = &resources.pids {
        let limit = pids.limit;
        out.push(write(
            "pids.max",
            if limit > 0 {
                limit.to_string()
            } else {
                "max".into()
            },
        ));
    }
    if let Some(limits) = &resources.hugepage_limits {
        out.extend(hugetlb_io::hugepage_writes(limits)?);
    }
    if let Some(block_io) = &resources.block_io {
        out.extend(hugetlb_io::block_io_writes(block_io)?);
    }
    if oci::is_set(&resources.rdma) {
        return Err("RDMA limits are not supported by runvm".into());
    }
    if resources.network.is_some() {
        return Err("network class/priority limits need cgroup v1; not supported".into());
    }
    if let Some(unified) = &resources.unified {
        let mut keys: Vec<&String> = unified.keys().collect();
        keys.sort();
        for key in keys {
            let valid = key.contains('.')
                && !key.contains('/')
                && !key.starts_with('.')
                && !key.starts_with("cgroup.");
            if !valid {
                return Err(format!(
                    "linux.resources.unified key {key:?} is not a controller file name"
                ));
            }
            out.push(write(key, &unified[key]));
        }
    }
    Ok(out)
}

fn limit_value(value: i64) -> String {
    if value < 0 {
        "max".into()
    } else {
        value.to_string()
    }
}

/// `max` or a number.
pub fn parse_limit(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A flat-keyed file (`key value` lines: memory.events, cpu.stat).
pub fn parse_keyed(text: &str) -> HashMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key, value.trim().parse().ok()?))
        })
        .collect()
}

/// The controller whose file `file` is (`cpu.max`: cpu), when the agent
/// manages it.
pub fn controller_of(file: &str) -> Option<&'static str> {
    let prefix = file.split('.').next()?;
    CONTROLLERS.iter().copied().find(|c| *c == prefix)
}

/// The controllers a cgroup with these limits needs: [`ALWAYS`] and those
/// whose files the limits write.
pub fn controllers_for<'a>(writes: impl IntoIterator<Item = &'a CgroupWrite>) -> Vec<&'static str> {
    let mut wanted: Vec<&'static str> = ALWAYS.to_vec();
    for c in writes.into_iter().filter_map(|w| controller_of(&w.file)) {
        if !wanted.contains(&c) {
            wanted.push(c);
        }
    }
    wanted
}

/// The controllers to enable below a cgroup: those wanted that it offers
/// and has not enabled yet, as one write to cgroup.subtree_control.
pub fn controllers_to_enable(available: &str, enabled: &str, wanted: &[&str]) -> Option<String> {
    let on: Vec<&str> = enabled.split_whitespace().collect();
    let enable: Vec<String> = available
        .split_whitespace()
        .filter(|c| wanted.contains(c) && !on.contains(c))
        .map(|c| format!("+{c}"))
        .collect();
    (!enable.is_empty()).then(|| enable.join(" "))
}

/// One container's cgroup directory.
#[derive(Debug)]
pub struct Cgroup {
    pub path: PathBuf,
}

fn with_path(e: io::Error, what: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn read(path: &Path) -> io::Result<String> {
    fs::read_to_string(path).map_err(|e| with_path(e, "cannot read", path))
}

fn write_file(path: &Path, value: &str) -> io::Result<()> {
    fs::write(path, value).map_err(|e| with_path(e, &format!("cannot write {value:?} to"), path))
}

/// Turns on the `wanted` controllers below `dir` that the kernel offers
/// there. Allowed while cgroups below hold processes: those move to the
/// new controllers' groups.
pub fn enable_controllers(dir: &Path, wanted: &[&str]) -> io::Result<()> {
    let available = read(&dir.join("cgroup.controllers"))?;
    let enabled = read(&dir.join("cgroup.subtree_control"))?;
    if let Some(line) = controllers_to_enable(&available, &enabled, wanted) {
        write_file(&dir.join("cgroup.subtree_control"), &line)?;
    }
    Ok(())
}

impl Cgroup {
    /// Creates `root/<name>`; it must not exist yet.
    pub fn create(root: &Path, name: &str) -> io::Result<Cgroup> {
        let path = root.join(name);
        fs::create_dir(&path).map_err(|e| with_path(e, "cannot create the cgroup", &path))?;
        Ok(Cgroup { path })
    }

    /// Writes the limits, each as its [`IfMissing`] and [`Condition`] say.
    pub fn apply(&self, writes: &[CgroupWrite]) -> io::Result<()> {
        self.apply_with(writes, Path::new("/sys/dev/block"))
    }

    /// [`Cgroup::apply`] with the guest's block devices listed in
    /// `dev_block` (`MAJOR:MINOR` entries, as /sys/dev/block has them).
    pub fn apply_with(&self, writes: &[CgroupWrite], dev_block: &Path) -> io::Result<()> {
        for w in writes {
            let wanted = match &w.only_if {
                Condition::Always => true,
                Condition::BlockDevice(major, minor) => {
                    dev_block.join(format!("{major}:{minor}")).exists()
                }
                Condition::NoFile(file) => !self.path.join(file).exists(),
            };
            if !wanted {
                continue;
            }
            // Without O_CREAT: a file the kernel does not offer is then
            // ENOENT (cgroupfs refuses to create one with EACCES).
            let written = fs::OpenOptions::new()
                .write(true)
                .open(self.path.join(&w.file))
                .and_then(|mut f| io::Write::write_all(&mut f, w.value.as_bytes()));
            let e = match written {
                Ok(()) => continue,
                Err(e) => e,
            };
            let message = match (&w.if_missing, e.kind()) {
                (IfMissing::Satisfied, io::ErrorKind::NotFound) => continue,
                (IfMissing::FailWith(why), io::ErrorKind::NotFound) => why.clone(),
                _ => format!("cannot set {} to {:?}: {e}", w.file, w.value),
            };
            return Err(io::Error::new(e.kind(), message));
        }
        Ok(())
    }

    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    pub fn events_file(&self) -> PathBuf {
        self.path.join("memory.events")
    }

    /// The pids in the cgroup.
    pub fn pids(&self) -> io::Result<Vec<i32>> {
        Ok(read(&self.procs_file())?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Whether any process is left in it (or below it).
    pub fn populated(&self) -> io::Result<bool> {
        let events = read(&self.path.join("cgroup.events"))?;
        Ok(parse_keyed(&events).get("populated").copied().unwrap_or(0) != 0)
    }

    /// Sends `signal` to every process in it; SIGKILL goes through
    /// cgroup.kill, which also reaches processes forked meanwhile.
    pub fn signal_all(&self, signal: i32) -> io::Result<()> {
        if signal == libc::SIGKILL && fs::write(self.path.join("cgroup.kill"), "1").is_ok() {
            return Ok(());
        }
        for pid in self.pids()? {
            // SAFETY: kill(2). A pid that has gone meanwhile is ESRCH.
            unsafe { libc::kill(pid, signal) };
        }
        Ok(())
    }

    /// Freezes or thaws the cgroup and waits (up to `patience`) until
    /// cgroup.events says it is so.
    pub async fn freeze(&self, frozen: bool, patience: Duration) -> io::Result<()> {
        write_file(
            &self.path.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )?;
        let want = u64::from(frozen);
        let deadline = Instant::now() + patience;
        loop {
            let events = read(&self.path.join("cgroup.events"))?;
            if parse_keyed(&events).get("frozen").copied().unwrap_or(0) == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the cgroup {} did not become frozen={want}",
                        self.path.display()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn oom_kills(&self) -> io::Result<u64> {
        let events = read(&self.events_file())?;
        Ok(parse_keyed(&events).get("oom_kill").copied().unwrap_or(0))
    }

    pub fn stats(&self) -> io::Result<ContainerStats> {
        let get = |file: &str| read(&self.path.join(file));
        let number = |file: &str| get(file).ok().and_then(|t| parse_limit(&t)).unwrap_or(0);
        let cpu = get("cpu.stat").unwrap_or_default();
        let cpu = parse_keyed(&cpu);
        Ok(ContainerStats {
            memory_usage: number("memory.current"),
            memory_limit: get("memory.max").ok().and_then(|t| parse_limit(&t)),
            oom_kills: self.oom_kills().unwrap_or(0),
            cpu_usage_usec: cpu.get("usage_usec").copied().unwrap_or(0),
            cpu_user_usec: cpu.get("user_usec").copied().unwrap_or(0),
            cpu_system_usec: cpu.get("system_usec").copied().unwrap_or(0),
            pids_current: number("pids.current"),
            pids_limit: get("pids.max").ok().and_then(|t| parse_limit(&t)),
        })
    }

    /// Kills what is left and removes the directory (and any the container
    /// made below it), waiting up to `patience` for the processes to go.
    pub async fn destroy(&self, patience: Duration) -> io::Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            if !self.populated().unwrap_or(false) {
                match remove_tree(&self.path) {
                    Ok(()) => return Ok(()),
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                    Err(e) => return Err(e),
                }
            } else {
                let _ = self.signal_all(libc::SIGKILL);
            }
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the cgroup {} did not empty", self.path.display()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// rmdir of a cgroup and its sub-cgroups, deepest first.
fn remove_tree(path: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(with_path(e, "cannot list", path)),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(json: &str) -> LinuxResources {
        serde_json::from_str(json).unwrap()
    }

    fn files(json: &str) -> Vec<(String, String)> {
        render(&resources(json))
            .unwrap()
            .into_iter()
            .map(|w| (w.file, w.value))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn memory_cpu_and_pids_limits_render_as_v2_files() {
        assert_eq!(
            files(
                r#"{"memory":{"limit":67108864,"reservation":-1,"swap":134217728},
                    "cpu":{"shares":1024,"quota":50000,"period":100000,"cpus":"0"},
                    "pids":{"limit":32}}"#
            ),
            pairs(&[
                ("memory.max", "67108864"),
                ("memory.low", "max"),
                ("memory.swap.max", "67108864"),
                ("cpu.weight", "39"),
                ("cpu.max", "50000 100000"),
                ("cpuset.cpus", "0"),
                ("pids.max", "32"),
            ])
        );
    }

    #[test]
    fn unlimited_values_are_max() {
        assert_eq!(
            files(r#"{"memory":{"limit":-1,"swap":-1},"cpu":{"quota":-1},"pids":{"limit":0}}"#),
            pairs(&[
                ("memory.max", "max"),
                ("memory.swap.max", "max"),
                ("cpu.max", "max 100000"),
                ("pids.max", "max"),
            ])
        );
        assert!(files("{}").is_empty());
    }

    #[test]
    fn shares_convert_like_runc() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(1), 1);
        assert_eq!(shares_to_weight(1 << 30), 10_000);
    }

    #[test]
    fn unified_keys_come_last_and_must_be_file_names() {
        assert_eq!(
            files(r#"{"pids":{"limit":5},"unified":{"memory.high":"1000000","cpu.weight":"50"}}"#),
            pairs(&[
                ("pids.max", "5"),
                ("cpu.weight", "50"),
                ("memory.high", "1000000"),
            ])
        );
        for bad in ["../x.max", "cgroup.procs", "nodot", "a/b.c"] {
            let json = format!(r#"{{"unified":{{"{bad}":"1"}}}}"#);
            assert!(render(&resources(&json)).is_err(), "{bad}");
        }
    }

    #[test]
    fn what_v2_cannot_do_is_refused() {
        for json in [
            r#"{"memory":{"swap":100}}"#,
            r#"{"memory":{"limit":200,"swap":100}}"#,
            r#"{"memory":{"disableOOMKiller":true}}"#,
            r#"{"cpu":{"realtimeRuntime":1000}}"#,
            r#"{"rdma":{"mlx5_1":{"hcaHandles":3}}}"#,
        ] {
            assert!(render(&resources(json)).is_err(), "{json}");
        }
        // Kernel memory and device rules are ignored, as runc does on v2.
        assert!(render(&resources(
            r#"{"memory":{"kernel":100},"devices":[{"allow":false,"access":"rwm"}]}"#
        ))
        .unwrap()
        .is_empty());
    }

    #[test]
    fn a_missing_file_fails_unless_the_limit_is_met_without_it() {
        let dir = std::env::temp_dir().join(format!("runvm-cg-missing-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cgroup = Cgroup { path: dir.clone() };
        // No swap in the guest: memory.swap.max is missing, nothing to limit.
        let swap = render(&resources(r#"{"memory":{"limit":100,"swap":200}}"#)).unwrap();
        assert_eq!(swap[1].file, "memory.swap.max");
        assert!(cgroup.apply(&swap[1..]).is_ok());
        let err = cgroup.apply(&swap[..1]).unwrap_err().to_string();
        assert!(err.contains("memory.max"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keyed_files_and_limits_parse() {
        let events = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\noom_group_kill 0\n";
        let parsed = parse_keyed(events);
        assert_eq!(parsed["oom_kill"], 1);
        assert_eq!(parsed["max"], 12);
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("4096\n"), Some(4096));
    }

    #[test]
    fn only_missing_wanted_controllers_are_enabled() {
        let available = "cpuset cpu io memory hugetlb pids rdma";
        assert_eq!(
            controllers_to_enable(available, "memory", CONTROLLERS),
            Some("+cpuset +cpu +io +hugetlb +pids".into())
        );
        assert_eq!(
            controllers_to_enable(available, "", ALWAYS),
            Some("+memory +pids".into())
        );
        // Wanted but not offered by the kernel: nothing to write.
        assert_eq!(
            controllers_to_enable("memory", "memory", &["cpu", "memory"]),
            None
        );
        assert_eq!(
            controllers_to_enable("memory pids", "memory pids", CONTROLLERS),
            None
        );
        assert_eq!(controllers_to_enable("", "", CONTROLLERS), None);
    }

    #[test]
    fn limits_name_the_controllers_they_need() {
        let none: Vec<CgroupWrite> = Vec::new();
        assert_eq!(controllers_for(&none), vec!["memory", "pids"]);
        let writes = [
            write("cpu.max", "50000 100000"),
            write("memory.max", 1 << 26),
            write("cpu.weight", 10),
            write("io.weight", "default 100"),
            write("hugetlb.2MB.max", 0),
            write("cpuset.cpus", "0"),
            // Not a controller the agent manages: no controller for it.
            write("misc.max", "x 1"),
        ];
        assert_eq!(
            controllers_for(&writes),
            vec!["memory", "pids", "cpu", "io", "hugetlb", "cpuset"]
        );
        assert_eq!(controller_of("cpu.max.burst"), Some("cpu"));
        assert_eq!(controller_of("cpuset.cpus"), Some("cpuset"));
        assert_eq!(controller_of("cgroup.freeze"), None);
    }
}
