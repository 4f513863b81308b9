//! The virtiofsd that serves a share: where it is found, how it is
//! started (in the share's mount namespace, sandboxed, with only its
//! listening socket), and what is known of it while it runs.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::ShareError;
use crate::host_cgroup::Entry;

/// The virtiofsd to use: `RUNVM_VIRTIOFSD`, else the first of `PATH`,
/// cargo's bin directory (where `scripts/setup.sh` installs it) and
/// Debian's `/usr/libexec/virtiofsd`.
pub fn find_virtiofsd() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RUNVM_VIRTIOFSD") {
        return Some(PathBuf::from(path));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("virtiofsd"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(cargo) = std::env::var_os("CARGO_HOME") {
        candidates.push(Path::new(&cargo).join("bin/virtiofsd"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/virtiofsd"));
    }
    candidates.push("/usr/libexec/virtiofsd".into());
    candidates.into_iter().find(|path| path.is_file())
}

/// Starts `virtiofsd` for the share `dir`, in the mount namespace `ns`,
/// serving on `listener`, logging to `log_file`; spawned into `cgroup`
/// if given.
pub(super) fn spawn(
    virtiofsd: &Path,
    dir: &Path,
    listener: &UnixListener,
    log_file: File,
    ns: libc::c_int,
    cgroup: Option<&Entry>,
) -> Result<Child, ShareError> {
    let cgroup = cgroup.cloned();
    let fd = listener.as_raw_fd();
    let mut command = Command::new(virtiofsd);
    command
        .arg(format!("--fd={fd}"))
        .arg("--shared-dir")
        .arg(dir)
        // Its own mount, pid and network namespaces with the share as
        // its root, plus its seccomp filter (kill on anything else).
        .arg("--sandbox=namespace")
        .arg("--seccomp=kill")
        // The guest caches data and attributes but revalidates on open
        // (close-to-open, like NFS): files the runtime changes on the
        // host (a container's /etc/hosts, say) are seen in the guest,
        // while a program that is run again is read from the guest's
        // page cache. `always` would serve stale files after host
        // changes; `never` rereads every exec over an expensive
        // channel (each request costs milliseconds of emulated guest
        // kernel on hosts without VT-x).
        .arg("--cache=auto")
        // Each rootfs bind is its own file system on the host: the
        // guest sees it as a submount, so inode numbers from two
        // file systems never meet in one guest mount.
        .arg("--announce-submounts")
        // Its default (1 000 000) is above the hard limit of many
        // hosts and only earns a warning there.
        .arg(format!("--rlimit-nofile={}", nofile_limit()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file));
    // SAFETY: setns, close_range, fcntl, prctl and Entry::join_self are
    // async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // Born in the VM's host cgroup, with its sandboxed child.
            if let Some(cgroup) = &cgroup {
                cgroup.join_self()?;
            }
            // Into the share's namespace (the forked child has an
            // fs_struct of its own, as setns needs).
            if libc::setns(ns, libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Nothing of the runtime's but the listening socket, which
            // is handed over at the same number (descriptors runvm
            // inherited from its caller included).
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // virtiofsd must not outlive whoever started it (its own
            // sandbox child follows it the same way).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn().map_err(|source| ShareError::Spawn {
        path: virtiofsd.to_owned(),
        source,
    })
}

/// The hard limit on open files, capped at virtiofsd's own default.
fn nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0; // virtiofsd leaves the limit alone
    }
    limit.rlim_max.min(1_000_000)
}

/// The children of `pid` (from /proc/<pid>/task/<pid>/children).
pub(super) fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The last `bytes` of a file, lossily as text.
pub(crate) fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut tail = Vec::new();
    let _ = file.read_to_end(&mut tail);
    String::from_utf8_lossy(&tail).into_owned()
}
