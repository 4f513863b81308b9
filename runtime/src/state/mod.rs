//! Containers' state under `--root`: one directory per container holding
//! `state.json` (what runvm knows of it) and, for a container that owns a
//! VM, the VM's state (see [`crate::sandbox::Home`]); a container in a
//! sandbox's VM names the sandbox in its record.
//! Calls on one id are serialised by an exclusive flock on the
//! container's directory; `create` claims an id by making the directory,
//! which only one caller can do.
//!
//! Whether a container still runs is not written anywhere: its monitor
//! (the host process whose pid is in `--pid-file`, see
//! [`crate::monitor`]) lives exactly as long as the container's init, so
//! the status is "stopped" once the monitor is gone, however it went
//! (even SIGKILLed). A pid is matched with its start time, so a reused
//! pid is not mistaken for the monitor.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use runvm_agent_api::validate_container_id;

/// Where runvm keeps state when `--root` is not given.
pub const DEFAULT_ROOT: &str = "/run/runvm";
const STATE_FILE: &str = "state.json";
/// How often a call waiting for a container's lock tries again.
const LOCK_POLL: Duration = Duration::from_millis(20);
/// How many fresh names a temporary file gets before writing gives up.
const TEMPORARY_ATTEMPTS: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container does not exist")]
    NotFound,
    #[error("container with id exists: {0}")]
    Exists(String),
    #[error("invalid container id format: {0}")]
    InvalidId(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("the state of container {id} is unreadable ({}): {source}", path.display())]
    Corrupt {
        id: String,
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("refusing the state directory (--root) {}: {problem}", path.display())]
    UnsafeRoot { path: PathBuf, problem: String },
    #[error("container {id} is busy: another runvm call has held it for {} s", waited.as_secs())]
    Busy { id: String, waited: Duration },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StateError {
    let path = path.to_owned();
    move |source| StateError::Io { what, path, source }
}

/// The lifecycle as the OCI runtime spec names it, plus runc's "paused".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host process, told apart from a later one with the same pid by its
/// start time (field 22 of /proc/<pid>/stat, in clock ticks since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostProcess {
    pub pid: i32,
    pub start_time: u64,
}

impl HostProcess {
    /// The process `pid` as it is now, if it exists.
    pub fn of(pid: i32) -> Option<HostProcess> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields are
        // counted after its closing parenthesis (field 2).
        let after_name = &stat[stat.rfind(')')? + 1..];
        let mut fields = after_name.split_whitespace();
        // Field 3 is the state; a zombie has ended already.
        if fields.next()? == "Z" {
            return None;
        }
        let start_time = fields.nth(18)?.parse().ok()?;
        Some(HostProcess { pid, start_time })
    }

    pub fn current() -> Option<HostProcess> {
        HostProcess::of(std::process::id() as i32)
    }

    /// Still the same process, not ended and not a reused pid.
    pub fn is_alive(&self) -> bool {
        HostProcess::of(self.pid).is_some_and(|now| now.start_time == self.start_time)
    }

    /// SIGKILLs those of `processes` that still run and waits up to
    /// `patience` for them to be gone; whether they are.
    pub fn kill_all(processes: &[HostProcess], patience: Duration) -> bool {
        let alive: Vec<HostProcess> = processes
            .iter()
            .copied()
            .filter(HostProcess::is_alive)
            .collect();
        for process in &alive {
            // SAFETY: kill(2) on a process matched with its start time.
            unsafe { libc::kill(process.pid, libc::SIGKILL) };
        }
        let deadline = Instant::now() + patience;
        while alive.iter().any(HostProcess::is_alive) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }
}

/// A hook from config.json, kept in the state so `delete` can run
/// poststop hooks after the bundle is gone.
pub type Hooks = oci_spec::runtime::Hooks;

/// `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    /// The rootfs on the host (config.json's root.path, made absolute).
    pub rootfs: PathBuf,
    /// RFC 3339 with nanoseconds, UTC, as runc writes it.
    pub created: String,
    pub owner: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The status last written; see [`Record::status`] for the live one.
    pub status: Status,
    /// The process in `--pid-file`, which lives as long as the container.
    pub monitor: Option<HostProcess>,
    /// The VMM and virtiofsd, for `delete --force` to stop them should the
    /// monitor be gone without having stopped them.
    #[serde(default)]
    pub helpers: Vec<HostProcess>,
    /// The container's cgroup on the host: where its monitors go, and the
    /// directories runvm made for it, which `delete` removes.
    #[serde(default)]
    pub cgroup: Option<crate::host_cgroup::HostCgroup>,
    /// The init's exit status once the monitor saw it end (128+signal when
    /// killed).
    pub exit_status: Option<i32>,
    #[serde(default)]
    pub hooks: Option<Hooks>,
    /// The sandbox whose VM this container runs in (see
    /// [`crate::sandbox`]); none: it owns its VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// The size of the VM it owns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<crate::sandbox::VmSize>,
    /// The caller's network namespace whose interfaces its VM carries
    /// (VM owners whose config.json names one): where `delete` removes
    /// the taps and filters runvm added (see [`crate::network`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
}

impl Record {
    /// The status as of now: whatever was written, unless the monitor is
    /// gone, in which case the container has stopped.
    pub fn status(&self) -> Status {
        match self.status {
            Status::Stopped => Status::Stopped,
            written => match &self.monitor {
                Some(monitor) if monitor.is_alive() => written,
                // Creating: the monitor is started right after the record is
                // first written; until then the creator holds the lock.
                None if written == Status::Creating => Status::Creating,
                _ => Status::Stopped,
            },
        }
    }

    /// The monitor's pid while the container has one that runs, else 0
    /// (what runc reports for a stopped container).
    pub fn live_pid(&self) -> i32 {
        match (&self.monitor, self.status()) {
            (Some(monitor), status) if status != Status::Stopped => monitor.pid,
            _ => 0,
        }
    }

    /// runc's `state` JSON for this container.
    pub fn oci_state(&self) -> serde_json::Value {
        let mut state = serde_json::json!({
            "ociVersion": oci_spec::runtime::VERSION,
            "id": self.id,
            "pid": self.live_pid(),
            "status": self.status().as_str(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "owner": self.owner,
        });
        if !self.annotations.is_empty() {
            state["annotations"] = serde_json::json!(self.annotations);
        }
        state
    }
}

/// The `--root` directory.
#[derive(Clone, Debug)]
pub struct StateRoot {
    dir: PathBuf,
}

impl StateRoot {
    /// `dir`, made (mode 0700) if it does not exist yet. One that exists
    /// must be a directory of ours that nobody else can write to: the
    /// state in it decides which processes runvm kills and which paths it
    /// mounts, writes and removes as root.
    pub fn open(dir: &Path) -> Result<StateRoot, StateError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error("cannot create the state directory", dir))?;
        let meta = fs::metadata(dir).map_err(io_error("cannot inspect", dir))?;
        // SAFETY: geteuid(2) cannot fail.
        let euid = unsafe { libc::geteuid() };
        unsafe_root_problem(&meta, euid).map_or(Ok(()), |problem| {
            Err(StateError::UnsafeRoot {
                path: dir.to_owned(),
                problem,
            })
        })?;
        Ok(StateRoot {
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ids of every container under the root, sorted.
    pub fn ids(&self) -> Result<Vec<String>, StateError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("cannot list", &self.dir)(e)),
        };
        let mut ids: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().join(STATE_FILE).is_file())
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|id| validate_container_id(id).is_ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    fn container_dir(&self, id: &str) -> Result<PathBuf, StateError> {
        validate_container_id(id).map_err(|_| StateError::InvalidId(id.to_owned()))?;
        Ok(self.dir.join(id))
    }

    /// Claims `id` for a new container: its directory is made and locked.
    pub fn create(&self, id: &str) -> Result<Container, StateError> {
        let dir = self.container_dir(id)?;
        match fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.to_owned()))
            }
            Err(e) => return Err(io_error("cannot create", &dir)(e)),
        }
        Container::lock(id, dir)
    }

    /// The container `id`, locked against other runvm calls on it.
    pub fn open_container(&self, id: &str) -> Result<Container, StateError> {
        let dir = self.container_dir(id)?;
        let container = Container::lock(id, dir)?;
        // It may have been deleted while this call waited for the lock.
        if !container.state_file().is_file() {
            return Err(StateError::NotFound);
        }
        Ok(container)
    }
}

/// What makes an existing `--root` unsafe for a runvm running as `euid`.
fn unsafe_root_problem(meta: &fs::Metadata, euid: u32) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if !meta.is_dir() {
        return Some("it is not a directory".into());
    }
    if meta.uid() != euid {
        let whom = if euid == 0 {
            "root".to_owned()
        } else {
            format!("uid {euid}")
        };
        return Some(format!("it is owned by uid {}, not by {whom}", meta.uid()));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "it is writable by group or others (mode {mode:04o})"
        ));
    }
    None
}

/// A container's directory, locked while this value lives.
pub struct Container {
    id: String,
    dir: PathBuf,
    _lock: File,
}

impl Container {
    fn lock(id: &str, dir: PathBuf) -> Result<Container, StateError> {
        Container::lock_within(id, dir, crate::deadlines::LOCK)
    }

    /// Takes the lock, waiting at most `patience` for another holder.
    fn lock_within(id: &str, dir: PathBuf, patience: Duration) -> Result<Container, StateError> {
        let handle = match File::open(&dir) {
            Ok(handle) => handle,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StateError::NotFound),
            Err(e) => return Err(io_error("cannot open", &dir)(e)),
        };
        // Every holder is bounded (agent calls by their deadlines, create
        // by its monitor's report): waiting longer than any of them means
        // something is wrong, and a call must not hang on it for ever.
        let started = Instant::now();
        loop {
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => {}
                _ => return Err(io_error("cannot lock", &dir)(e)),
            }
            let waited = started.elapsed();
            if waited >= patience {
                return Err(StateError::Busy {
                    id: id.to_owned(),
                    waited,
                });
            }
            std::thread::sleep(LOCK_POLL);
        }
        Ok(Container {
            id: id.to_owned(),
            dir,
            _lock: handle,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the VM that `record`'s container runs in keeps its state.
    pub fn home(&self, record: &Record) -> crate::sandbox::Home {
        crate::sandbox::Home::of(self.dir.parent().unwrap_or(&self.dir), record)
    }

    fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn load(&self) -> Result<Record, StateError> {
        load_record(&self.id, &self.state_file())
    }

    /// Replaces state.json in one step (written aside, then renamed).
    pub fn save(&self, record: &Record) -> Result<(), StateError> {
        let path = self.state_file();
        let text = serde_json::to_vec_pretty(record).map_err(|source| StateError::Corrupt {
            id: self.id.clone(),
            path: path.clone(),
            source,
        })?;
        write_atomically(&path, &text)
    }

    /// Removes the container's directory and everything in it.
    pub fn remove(self) -> Result<(), StateError> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("cannot remove", &self.dir)(e)),
        }
    }
}

/// Reads a container's record without taking its lock (for `state` and
/// `list`, which must answer while a long call holds it).
pub fn peek(root: &StateRoot, id: &str) -> Result<Record, StateError> {
    let dir = root.container_dir(id)?;
    load_record(id, &dir.join(STATE_FILE))
}

fn load_record(id: &str, path: &Path) -> Result<Record, StateError> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StateError::NotFound),
        Err(e) => return Err(io_error("cannot read", path)(e)),
    };
    serde_json::from_slice(&text).map_err(|source| StateError::Corrupt {
        id: id.to_owned(),
        path: path.to_owned(),
        source,
    })
}

/// Writes `path` so that readers see the old or the new content, never a
/// part: a temporary file beside it, then rename (as runc writes its pid
/// files). Nothing planted is followed: the temporary file is created new
/// (O_EXCL, O_NOFOLLOW: an existing file or symlink there is an error,
/// and another name is tried), and the rename replaces whatever is at
/// `path`, a symlink included, instead of writing through it.
pub fn write_atomically(path: &Path, content: &[u8]) -> Result<(), StateError> {
    let (temporary, mut file) =
        create_temporary(path).map_err(io_error("cannot create a file beside", path))?;
    let result = file
        .write_all(content)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&temporary, path));
    if let Err(e) = result {
        let _ = fs::remove_file(&temporary);
        return Err(io_error("cannot write", path)(e));
    }
    Ok(())
}

/// A new file beside `path`, named `.<name>.<pid>.<n>`.
fn create_temporary(path: &Path) -> io::Result<(PathBuf, File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let salt = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for attempt in 0..TEMPORARY_ATTEMPTS {
        let temporary = dir.join(format!(
            ".{name}.{}.{}",
            std::process::id(),
            salt.wrapping_add(attempt)
        ));
        let opened = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temporary);
        match opened {
            Ok(file) => return Ok((temporary, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Now as RFC 3339 with nanoseconds in UTC (`2026-11-23T18:06:07.123456789Z`),
/// the form of runc's `created`.
pub fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_nanos())
}

fn rfc3339(seconds: u64, nanos: u32) -> String {
    let days = (seconds / 86_400) as i64;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's well-known algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests;
