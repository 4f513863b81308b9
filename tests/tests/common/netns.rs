//! A network namespace a test makes (`ip netns add`) to run daemons in,
//! so that what they set up (bridges, veths, listening ports) never
//! touches the host's interfaces. Needs `crate::harness`.

#![allow(dead_code)] // each test binary uses a different subset

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{self, run};

/// A network namespace of the test's (`ip netns add`), deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    pub fn new(name: &str) -> NetNs {
        harness::require_programs(&[("ip", "iproute2")]);
        let name = format!("{name}-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name])).ok();
        let ns = NetNs { name };
        run(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"])).ok();
        ns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Makes `command` start in this namespace (its network only: the
    /// mounts stay the host's, so the test sees what containerd mounts).
    pub fn enter(&self, command: &mut Command) {
        enter(&self.path(), command);
    }
}

/// Makes `command` start in the network namespace at `path`.
pub fn enter(path: &Path, command: &mut Command) {
    let ns = std::fs::File::open(path).expect("open the network namespace");
    // SAFETY: between fork and exec only setns(2) on a descriptor that
    // `ns`, moved into the closure, keeps open.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
