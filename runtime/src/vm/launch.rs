//! Starting the VMM process of a [`MicroVm`]: booted cold, booted to be
//! saved as a template, or restored from one (see [`crate::template`]).

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use runvm_agent_api::SHARE_TAG;

use super::stderr_tee::StderrTee;
use super::{ImageKind, MicroVm, VmError, VmSpec, VmTap, IPV6_OFF};

/// How the VMM starts the guest.
pub(super) enum Launch {
    /// Boot the kernel.
    Cold,
    /// Boot the kernel with the share's device and the network cards
    /// pending (no backend, no taps), to be saved to this directory at the
    /// ready point.
    SaveTo(PathBuf),
    /// Resume the template in this directory, with a new CID.
    Restore { dir: PathBuf, cid: u32 },
}

/// The kernel command line words a VM with these taps gets.
pub(super) fn cmdline(taps: &[VmTap]) -> Vec<String> {
    if taps.iter().any(|tap| tap.ipv6) {
        Vec::new()
    } else {
        vec![IPV6_OFF.to_owned()]
    }
}

impl MicroVm {
    /// Starts the VMM for `spec` as `launch` says; the VM's directory,
    /// readiness socket and share exist already. The VMM inherits the
    /// taps' descriptors (unless it makes a template); ours stay open
    /// until the agent has answered.
    pub(super) fn launch(&mut self, spec: &VmSpec, launch: &Launch) -> Result<(), VmError> {
        let taps: &[VmTap] = match launch {
            Launch::SaveTo(_) => &[],
            Launch::Cold | Launch::Restore { .. } => &self.taps,
        };
        let image_kind = ImageKind::of(&spec.image)?;
        let mut command = Command::new(&spec.vmm);
        match launch {
            Launch::Cold | Launch::SaveTo(_) => {
                command
                    .arg("--kernel")
                    .arg(&spec.kernel)
                    .arg(image_kind.vmm_flag())
                    .arg(&spec.image)
                    .arg("--memory")
                    .arg(spec.memory_mib.to_string())
                    .arg("--vcpus")
                    .arg(spec.vcpus.to_string());
                for word in cmdline(&self.taps) {
                    command.arg("--cmdline").arg(word);
                }
            }
            Launch::Restore { dir, cid } => {
                command.arg("--restore").arg(dir);
                // An initramfs is in the saved memory already.
                if image_kind == ImageKind::RootDisk {
                    command.arg("--root-disk").arg(&spec.image);
                }
                command.arg(format!("--vsock-cid={cid}"));
            }
        }
        command
            .arg("--vsock-socket")
            .arg(self.vmm_vsock_socket())
            .arg(format!("--serial=file:{}", self.console_log().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if self.jailed {
            command.arg("--jail").arg(self.jail_dir());
        }
        if self.share.is_some() {
            let device = match launch {
                Launch::SaveTo(_) => format!("tag={SHARE_TAG},pending"),
                _ => format!(
                    "tag={SHARE_TAG},socket={}",
                    self.virtiofs_socket().display()
                ),
            };
            command.arg("--fs").arg(device);
        }
        if let Launch::SaveTo(dir) = launch {
            command.arg("--snapshot-to").arg(dir);
            // The agent warms up before its ready line, where the VM is
            // saved: every restore starts past that work.
            command.arg("--init-arg=--template");
            for index in 0..self.taps.len() {
                let mac = crate::network::mac_text(&crate::template::placeholder_mac(index));
                command.arg("--net").arg(format!("pending,mac={mac}"));
            }
        }
        for tap in taps {
            command.arg("--net").arg(&tap.option);
        }
        let inherited: Vec<i32> = taps.iter().map(|t| t.fd.as_raw_fd()).collect();
        let cgroup = self.cgroup.clone();
        // SAFETY: prctl, fcntl and Entry::join_self are async-signal-safe;
        // nothing else runs in between.
        unsafe {
            command.pre_exec(move || {
                // Born in the VM's host cgroup, with all it forks.
                if let Some(cgroup) = &cgroup {
                    cgroup.join_self()?;
                }
                // The VM must not outlive whoever started it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The child's copies of the taps, and only those, survive
                // the exec.
                for &fd in &inherited {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let sink = match &self.vmm_log {
            Some(path) => Some(
                fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| VmError::Directory {
                        path: path.to_owned(),
                        source,
                    })?,
            ),
            None => None,
        };
        let mut child = command.spawn().map_err(|source| VmError::Spawn {
            path: spec.vmm.clone(),
            source,
        })?;
        let stderr = child
            .stderr
            .take()
            .map(|pipe| StderrTee::start(pipe, sink))
            .transpose();
        self.child = Some(child);
        self.exited = None;
        self.stderr = stderr.map_err(|source| VmError::Spawn {
            path: spec.vmm.clone(),
            source,
        })?;
        Ok(())
    }

    /// Before another VMM takes over the VM's directory: the sockets the
    /// last one bound (and the host's link to its vsock socket) go, and
    /// the readiness port listens again.
    pub(super) fn clear_sockets(&mut self) -> Result<(), VmError> {
        for dir in [self.socket_dir(), self.dir.clone()] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name.to_string_lossy().starts_with("vsock.sock") {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        self.listen_for_readiness()
    }

    /// Binds the readiness port's socket, before the guest can connect.
    pub(super) fn listen_for_readiness(&mut self) -> Result<(), VmError> {
        let ready = crate::unix_socket::bind(&self.ready_socket())
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| VmError::Readiness {
                path: self.ready_socket(),
                source,
            })?;
        self.ready = Some(ready);
        Ok(())
    }
}

/// A CID for a restored VM: random, in the range a guest may have (3 up
/// to 2^32 - 2), so two VMs of one template differ.
pub(super) fn fresh_cid() -> std::io::Result<u32> {
    let mut bytes = [0u8; 4];
    crate::host_random::fill(&mut bytes)?;
    Ok(3 + u32::from_ne_bytes(bytes) % (u32::MAX - 4))
}

/// Keeps the console a template recorded up to its ready point as the
/// start of a restored VM's console log (the VMM appends to it).
pub(super) fn seed_console(template: &Path, console: &Path) {
    let _ = fs::copy(template.join(crate::template::CONSOLE_FILE), console);
}
