//! Spawning a process into a cgroup: the child writes itself into the
//! cgroup between fork and exec, so that it runs nothing outside it, and
//! whatever it forks later (the jailed VMM below its supervisor,
//! virtiofsd's sandboxed child) is born inside too. Moving a process
//! after it started would leave behind the children it forked meanwhile,
//! and on cgroup v1 the memory it touched is charged where it was.
//!
//! For a parent that does not join the cgroup itself (the containerd
//! shim, which serves the pod from outside its cgroup, as containerd's
//! runc shim does); the runc path's monitor joins its container's cgroup
//! and its children inherit it.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;

use super::HostCgroup;

/// The `cgroup.procs` files of a cgroup's directories, prepared before
/// the fork: nothing may be allocated in a forked child.
#[derive(Clone, Debug)]
pub struct Entry {
    procs: Vec<CString>,
}

impl HostCgroup {
    /// How a child joins this cgroup (see [`Entry::join_self`]).
    pub fn entry(&self) -> Entry {
        let procs = self
            .dirs
            .iter()
            .filter_map(|dir| {
                CString::new(dir.path.join("cgroup.procs").as_os_str().as_bytes()).ok()
            })
            .collect();
        Entry { procs }
    }
}

impl Entry {
    /// Moves the calling process into every directory of the cgroup (`0`
    /// names the writer, on cgroup v1 and v2 alike). Only open, write and
    /// close: async-signal-safe, for `CommandExt::pre_exec`.
    pub fn join_self(&self) -> io::Result<()> {
        for procs in &self.procs {
            // SAFETY: a NUL-terminated path prepared before the fork.
            let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: writes one byte from a static buffer to the open fd.
            let written = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
            let error = io::Error::last_os_error();
            // SAFETY: closes the descriptor opened above.
            unsafe { libc::close(fd) };
            if written != 1 {
                return Err(error);
            }
        }
        Ok(())
    }
}
