//! The VMM's jail (`runvm-vmm --jail DIR`), entered before the VM is built,
//! so no guest-driven code ever runs with the host's privileges or view.
//! Firecracker's jailer is the model; here the VMM jails itself.
//!
//! Two processes:
//! - the **supervisor**, the process the caller started (its pid is the one
//!   the caller knows, signals and waits for): it unshares a PID namespace,
//!   forks, and from then on only forwards SIGTERM, SIGINT and SIGHUP to the
//!   child, reaps it and ends the way the child ended (the same exit code,
//!   or the same signal), so the exit-status contract of `runvm-vmm` holds
//!   through it. It stays root, in the host's namespaces: it runs nothing
//!   the guest can reach, and must be able to signal the child while that
//!   is still root. Killed, it takes the child along (PR_SET_PDEATHSIG
//!   SIGKILL on the child).
//! - the **jailed VMM**, the supervisor's only child and PID 1 of the new
//!   PID namespace: it runs the vCPUs and every device. Before the VM is
//!   built it opens what it needs by host path ([`crate::host`]), enters
//!   new mount, network, IPC and UTS namespaces, pivots into `DIR` (the old
//!   root detached), and becomes the unprivileged [`Jail::id`] with no
//!   capability in any set, `no_new_privs`, not dumpable, and resource
//!   limits sized for the VM ([`privileges`]). Tests find it as the only
//!   entry of `/proc/<supervisor>/task/<supervisor>/children`.
//!
//! The jail's root, `DIR`, holds the VM's Unix sockets and nothing else:
//! the vsock socket the VMM binds (`--vsock-socket`), the sockets the host
//! listens on for guest connections (`<vsock-socket>_<port>`) and the
//! virtio-fs backends' sockets (`--fs socket=`), all of which must be
//! given as paths below `DIR`; they are reached as the same names below
//! `/` inside the jail. The kernel, the image, the console log and
//! /dev/kvm are opened before the pivot and need not be inside. The
//! sockets present when the VMM starts, and `DIR` itself, are handed to
//! the jail's id (mode 0600 and 0700); anything else in `DIR` is left as
//! it is. The new network namespace has no host interface: taps will be
//! handed in as descriptors, opened with the other host resources.
//!
//! The id is [`ID_BASE`] plus the supervisor's pid (user and group alike):
//! unique among the VMMs alive at one time, so two VMMs cannot signal,
//! trace or share per-user limits with each other, and never a host
//! account's (the range is one systemd leaves unassigned).

mod mounts;
mod privileges;
mod supervisor;

use std::path::{Path, PathBuf};

pub use privileges::Limits;

use crate::config::{FsBackend, VmConfig};
use crate::error::Error;
use crate::host::HostResources;
use crate::machine::{run_vm_with, VmExit};

/// The first jail id: 0x70000000, above the ranges systemd gives users,
/// dynamic users and containers' user namespaces (which end at
/// 0x6fffffff), and below 2^31, where tools treating ids as signed break.
pub const ID_BASE: u32 = 0x7000_0000;
/// Linux's largest pid_max (2^22): every jail id is below
/// `ID_BASE + MAX_PID`.
pub const MAX_PID: u32 = 1 << 22;

/// Where and as whom the VMM is jailed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jail {
    /// The jail's root: an absolute path without `..`.
    dir: PathBuf,
    /// The jail's uid and gid.
    id: u32,
}

impl Jail {
    /// The jail for the VMM whose supervisor has pid `pid`.
    pub fn new(dir: &Path, pid: u32) -> Result<Jail, Error> {
        let invalid = |reason: &str| Error::Jail {
            step: "check the jail directory",
            reason: format!("{}: {reason}", dir.display()),
        };
        if !dir.is_absolute() {
            return Err(invalid("it must be an absolute path"));
        }
        if dir
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(invalid("it must not contain `..`"));
        }
        if pid == 0 || pid >= MAX_PID {
            return Err(invalid(&format!("pid {pid} is out of range")));
        }
        Ok(Jail {
            dir: dir.components().collect(),
            id: ID_BASE + pid,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The uid and gid of the jailed VMM.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Where the jailed VMM finds `host_path`: the same path relative to
    /// the jail's root. Paths outside the jail cannot be reached.
    pub fn inside(&self, host_path: &Path) -> Result<PathBuf, Error> {
        let normal: PathBuf = host_path.components().collect();
        let outside = |reason: &str| Error::Jail {
            step: "place the VM's sockets",
            reason: format!(
                "{} {reason} the jail {}",
                host_path.display(),
                self.dir.display()
            ),
        };
        if normal
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(outside("contains `..`; sockets must be named below"));
        }
        let relative = normal
            .strip_prefix(&self.dir)
            .map_err(|_| outside("is not below"))?;
        if relative.as_os_str().is_empty() {
            return Err(outside("is the root of"));
        }
        Ok(Path::new("/").join(relative))
    }

    /// `config` as the jailed VMM sees it: its sockets' paths inside the
    /// jail. The other paths are opened before the jail is entered.
    pub fn config_inside(&self, config: &VmConfig) -> Result<VmConfig, Error> {
        let mut inside = config.clone();
        if let Some(vsock) = inside.vsock.as_mut() {
            vsock.socket = self.inside(&vsock.socket)?;
        }
        for fs in &mut inside.fs {
            if let FsBackend::Socket(socket) = &mut fs.backend {
                *socket = self.inside(socket)?;
            }
        }
        Ok(inside)
    }
}

/// Runs the VM of `config` jailed in `dir` (see the module's comment).
/// Only the jailed VMM returns; the supervisor exits as the VMM did.
pub fn run_jailed(dir: &Path, config: &VmConfig) -> Result<VmExit, Error> {
    config.validate()?;
    let jail = Jail::new(dir, std::process::id())?;
    let inside = jail.config_inside(config)?;
    let limits = Limits::for_vm(config);
    let supervisor = supervisor::fork()?;
    let host = HostResources::open(config)?;
    mounts::hand_over(&jail)?;
    mounts::enter(&jail)?;
    privileges::drop_to(jail.id, &limits)?;
    // Changing ids cleared the parent-death signal: set it again.
    supervisor.die_with_it()?;
    drop(supervisor);
    run_vm_with(&inside, host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FsConfig, VsockConfig};

    fn jail() -> Jail {
        Jail::new(Path::new("/run/runvm/c1/vm/jail/"), 4242).unwrap()
    }

    #[test]
    fn the_id_is_the_base_plus_the_supervisor_pid() {
        assert_eq!(jail().id(), 0x7000_0000 + 4242);
        assert_eq!(jail().dir(), Path::new("/run/runvm/c1/vm/jail"));
        let last = Jail::new(Path::new("/j"), MAX_PID - 1).unwrap();
        assert!(i32::try_from(last.id()).is_ok(), "{}", last.id());
        assert!(Jail::new(Path::new("/j"), MAX_PID).is_err());
        assert!(Jail::new(Path::new("/j"), 0).is_err());
    }

    #[test]
    fn the_jail_directory_must_be_absolute_and_plain() {
        for dir in ["jail", "/run/../jail", "./jail"] {
            let message = Jail::new(Path::new(dir), 1).unwrap_err().to_string();
            assert!(message.contains(dir), "{message}");
        }
    }

    #[test]
    fn paths_below_the_jail_are_seen_from_its_root() {
        let jail = jail();
        assert_eq!(
            jail.inside(Path::new("/run/runvm/c1/vm/jail/vsock.sock"))
                .unwrap(),
            PathBuf::from("/vsock.sock")
        );
        assert_eq!(
            jail.inside(Path::new("/run/runvm/c1/vm/jail/./a//b.sock"))
                .unwrap(),
            PathBuf::from("/a/b.sock")
        );
    }

    #[test]
    fn paths_outside_the_jail_are_refused() {
        let jail = jail();
        for path in [
            "/run/runvm/c1/vm/virtiofs.sock",
            "/run/runvm/c1/vm/jail",
            "/run/runvm/c1/vm/jailbreak/v.sock",
            "/run/runvm/c1/vm/jail/../v.sock",
            "vsock.sock",
        ] {
            let message = jail.inside(Path::new(path)).unwrap_err().to_string();
            assert!(message.contains(path), "{message}");
        }
    }

    #[test]
    fn the_config_inside_names_only_the_sockets_anew() {
        let mut config = VmConfig::new("/boot/vmlinux");
        config.root_disk = Some("/images/rootfs.ext4".into());
        config.vsock = Some(VsockConfig {
            guest_cid: 3,
            socket: "/run/runvm/c1/vm/jail/vsock.sock".into(),
        });
        config.fs = vec![FsConfig::new("share", "/run/runvm/c1/vm/jail/fs.sock")];
        let inside = jail().config_inside(&config).unwrap();
        assert_eq!(inside.vsock.unwrap().socket, PathBuf::from("/vsock.sock"));
        assert_eq!(inside.fs[0].socket(), Some(Path::new("/fs.sock")));
        assert_eq!(inside.kernel, config.kernel);
        assert_eq!(inside.root_disk, config.root_disk);

        // A template's pending device has no socket to move.
        config.fs.push(FsConfig::pending("later"));
        let inside = jail().config_inside(&config).unwrap();
        assert_eq!(inside.fs[1], FsConfig::pending("later"));

        config.fs[0].backend = FsBackend::Socket("/run/virtiofsd.sock".into());
        assert!(jail().config_inside(&config).is_err());
    }
}
