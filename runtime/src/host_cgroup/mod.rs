//! The container's cgroup on the host: what `linux.cgroupsPath` names,
//! made the way runc makes it, so that the host processes that carry the
//! container (its monitors, the VMM with all its threads, virtiofsd) are
//! where containerd's shim, podman and kubelet look for the container's
//! usage (`ctr task metrics`, `podman stats`).
//!
//! - `runvm create` resolves the path ([`path`]), makes a directory in
//!   every hierarchy ([`layout`]), records in the container's state which
//!   directories it made, and sets the memory limit ([`limits`]);
//! - each monitor (the init's and every exec's) moves itself in before it
//!   starts anything, so the VMM and virtiofsd are born inside;
//! - once the VM is up, `create` sets the CPU limits (a quota does not
//!   slow the boot down: on an emulating host that is seconds of kernel
//!   work that belong to no container);
//! - `delete` removes the directories runvm made, and only those.
//!
//! The guest goes on enforcing the container's own limits inside; these
//! host limits bound the VM as a whole.

pub mod entry;
pub mod layout;
pub mod limits;
pub mod path;

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

pub use entry::Entry;
pub use layout::Layout;
pub use limits::Limits;

/// How long `remove` waits for the processes in a cgroup to leave (exec
/// monitors notice their VM is gone and exit by themselves).
const REMOVE_PATIENCE: Duration = Duration::from_secs(5);
/// After this, what is still in a cgroup runvm made is killed.
const KILL_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{0}")]
    Path(String),
    #[error("{0}")]
    Layout(String),
    #[error("cannot create cgroup {}: {}", path.display(), reason(source))]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot write {value:?} to {}: {}", path.display(), reason(source))]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
    },
    #[error("cannot move process {pid} into cgroup {}: {}", path.display(), reason(source))]
    Join {
        pid: u32,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot set {what}: {}", path.display())]
    NoController { what: &'static str, path: PathBuf },
    #[error("cannot remove cgroup {}: {}", path.display(), reason(source))]
    Remove { path: PathBuf, source: io::Error },
}

/// An OS error as `strerror` says it ("Permission denied"), without
/// Rust's "(os error 13)".
fn reason(error: &io::Error) -> String {
    let text = error.to_string();
    match text.find(" (os error ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// The container's directory in one hierarchy, as the state records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CgroupDir {
    pub path: PathBuf,
    /// A cgroup2 directory.
    pub unified: bool,
    /// The controllers that act on it: a v1 hierarchy's (`memory`,
    /// `name=systemd`), or the directory's `cgroup.controllers` on cgroup2.
    pub controllers: Vec<String>,
    /// The directories runvm made for it, outermost first; the last is
    /// `path` itself unless that existed before. `delete` removes these
    /// (the parents only if nothing else is below them) and nothing else.
    pub made: Vec<PathBuf>,
}

impl CgroupDir {
    /// runvm made the directory itself (not only its parents).
    pub fn made_here(&self) -> bool {
        self.made.last() == Some(&self.path)
    }

    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// The container's cgroup: one directory per hierarchy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCgroup {
    pub dirs: Vec<CgroupDir>,
}

impl HostCgroup {
    /// The cgroup container `id`'s config.json names (`linux.cgroupsPath`,
    /// see [`path::resolve`]; `systemd`: in systemd's form), made on this
    /// host with the memory limit `memory` (bytes). On error nothing made
    /// is left.
    pub fn for_container(
        spec: &Spec,
        id: &str,
        systemd: bool,
        memory: Option<u64>,
    ) -> Result<HostCgroup, CgroupError> {
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|linux| linux.cgroups_path().as_deref());
        let inner = path::resolve(cgroups_path, id, systemd)?;
        let cgroup = HostCgroup::create(&Layout::current()?, &inner)?;
        if let Err(e) = cgroup.set_memory(memory) {
            let _ = cgroup.remove();
            return Err(e);
        }
        Ok(cgroup)
    }

    /// Makes the directories of `inner` in every hierarchy of `layout`
    /// (those that exist are joined, as runc does). On error nothing made
    /// is left.
    pub fn create(layout: &Layout, inner: &path::Inner) -> Result<HostCgroup, CgroupError> {
        let mut cgroup = HostCgroup::default();
        for placement in layout.placements(inner) {
            match create_dir(layout.unified_mode, &placement) {
                Ok(dir) => cgroup.dirs.push(dir),
                Err(e) => {
                    let _ = cgroup.remove();
                    return Err(e);
                }
            }
        }
        Ok(cgroup)
    }

    /// Moves process `pid` (all its threads) into every directory.
    pub fn join(&self, pid: u32) -> Result<(), CgroupError> {
        for dir in &self.dirs {
            let procs = dir.path.join("cgroup.procs");
            std::fs::write(&procs, pid.to_string()).map_err(|source| CgroupError::Join {
                pid,
                path: dir.path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// The directory whose `cgroup.procs` lists the container's host
    /// processes for `controller` (v1), or the cgroup2 one.
    pub fn dir_for(&self, controller: &str) -> Option<&CgroupDir> {
        self.dirs.iter().find(|d| d.has(controller))
    }

    /// Removes what runvm made: the container's directories (waiting for
    /// the processes still in them to leave, then killing them: whatever
    /// is in a cgroup runvm made for the container is the container's),
    /// then the parents it made, if they are empty.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + REMOVE_PATIENCE;
        let mut first_error = None;
        for dir in &self.dirs {
            for made in dir.made.iter().rev() {
                let result = if *made == dir.path {
                    remove_tree(made, deadline)
                } else {
                    // Another container may be below it, or be about to be.
                    remove_if_empty(made);
                    Ok(())
                };
                if let Err(e) = result {
                    first_error.get_or_insert(e);
                    break;
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Makes the container's directory in one hierarchy, and its parents.
fn create_dir(unified_mode: bool, placement: &layout::Placement) -> Result<CgroupDir, CgroupError> {
    let hierarchy = &placement.hierarchy;
    let cpuset = hierarchy.controllers.iter().any(|c| c == "cpuset");
    // A parent removed by another container's delete between our mkdirs
    // (it was empty then) is made again.
    let mut attempts = 0;
    let made = loop {
        attempts += 1;
        let mut made = Vec::new();
        match make_path(unified_mode, cpuset, placement, &mut made) {
            Ok(()) => break made,
            Err(CgroupError::Create { source, .. })
                if source.kind() == io::ErrorKind::NotFound && attempts < 3 =>
            {
                undo(&made);
            }
            Err(e) => {
                undo(&made);
                return Err(e);
            }
        }
    };
    let path = placement.dir();
    let controllers = if hierarchy.unified {
        std::fs::read_to_string(path.join("cgroup.controllers"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    } else {
        hierarchy.controllers.clone()
    };
    Ok(CgroupDir {
        path,
        unified: hierarchy.unified,
        controllers,
        made,
    })
}

fn undo(made: &[PathBuf]) {
    for dir in made.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// mkdir of each component below the mountpoint, noting what it made. On
/// cgroup2 (unified mode) each parent first enables its controllers for
/// its children; in a v1 cpuset hierarchy each level gets its parent's
/// cpus and mems (a cpuset without them takes no process).
fn make_path(
    unified_mode: bool,
    cpuset: bool,
    placement: &layout::Placement,
    made: &mut Vec<PathBuf>,
) -> Result<(), CgroupError> {
    let mut current = placement.hierarchy.mountpoint.clone();
    for component in placement.relative.components() {
        // The path was cleaned and checked; this is the last guard against
        // a component that would leave the hierarchy.
        if !matches!(component, std::path::Component::Normal(_)) {
            return Err(CgroupError::Create {
                path: placement.relative.clone(),
                source: io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a plain path below the hierarchy",
                ),
            });
        }
        if unified_mode {
            enable_controllers(&current);
        }
        let parent = current.clone();
        current.push(component);
        match std::fs::create_dir(&current) {
            Ok(()) => made.push(current.clone()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => {
                return Err(CgroupError::Create {
                    path: current,
                    source,
                })
            }
        }
        if cpuset {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                inherit(&parent, &current, file)?;
            }
        }
    }
    Ok(())
}

/// Copies `file` from `parent` into `dir` if `dir`'s is empty.
fn inherit(parent: &Path, dir: &Path, file: &str) -> Result<(), CgroupError> {
    let own = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
    if !own.trim().is_empty() {
        return Ok(());
    }
    let value = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
    write(&dir.join(file), value.trim())
}

/// Enables for the children of `dir` every controller it has (runc does
/// the same). Failures are left for the limits to report: a controller
/// that cannot be enabled is only an error if a limit needs it.
fn enable_controllers(dir: &Path) {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    for controller in available.split_whitespace() {
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{controller}"));
    }
}

/// Writes a cgroup file, which must exist (cgroupfs makes them; nothing
/// is created anywhere else).
fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, value.as_bytes()))
        .map_err(|source| CgroupError::Write {
            path: path.to_owned(),
            value: value.to_owned(),
            source,
        })
}

/// Removes `dir` and the cgroups below it, deepest first. Only what is
/// left in `dir` itself is killed (runvm's own processes of this
/// container): a cgroup below it may belong to someone else.
fn remove_tree(dir: &Path, deadline: Instant) -> Result<(), CgroupError> {
    remove_below(dir, deadline, true)
}

fn remove_below(dir: &Path, deadline: Instant, kill: bool) -> Result<(), CgroupError> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_below(&entry.path(), deadline, false)?;
            }
        }
    }
    let started = Instant::now();
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                if kill && started.elapsed() >= KILL_AFTER {
                    kill_all(dir);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(CgroupError::Remove {
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

fn remove_if_empty(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}

/// SIGKILL to every process in the cgroup `dir`.
fn kill_all(dir: &Path) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2); the process is in a cgroup runvm made for this
        // container, which is being deleted.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests;
