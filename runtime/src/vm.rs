//! One microVM as a child process of the runtime: `runvm-vmm` with its
//! hybrid-vsock socket and console log in a private directory that lives
//! exactly as long as the VM, and optionally the VM's share (see
//! [`crate::share`]): `<dir>/share` served by a virtiofsd of its own.
//!
//! The VM's directory (mode 0700):
//! - `vsock.sock`, `console.log`: the agent's channel and the guest console;
//! - `share/`, `virtiofsd.log`: with a share;
//! - `jail/`: run as root, the VMM is jailed (`runvm-vmm --jail`: new
//!   namespaces, this directory as its root, an unprivileged id of its own,
//!   no capabilities). It holds only the VMM's Unix sockets: `vsock.sock`,
//!   which the VMM binds, `vsock.sock_<port>` for guest connections to the
//!   host (the readiness port) and `virtiofs.sock`; the kernel, the image,
//!   the console log and /dev/kvm are opened before the VMM jails itself.
//!   The host reaches the VMM's socket through `<dir>/vsock.sock`, a hard
//!   link made once the agent is ready: a path the jail cannot change (a
//!   symlink planted in `jail/` is never followed by the runtime). Not
//!   run as root, the VMM is not jailed and its sockets are in `<dir>`.
//!
//! `<dir>` may be long (below containerd's root with a 64-hex id), so
//! its socket paths may not fit a socket address: the runtime reaches
//! them through [`crate::unix_socket`], and so does the VMM (its own
//! `devices::unix_socket`); jailed, the VMM names them below its root.
//!
//! Everything the VM started goes with it: when it is shut down or
//! stopped, when the `MicroVm` is dropped, and when the thread that booted
//! it dies (PR_SET_PDEATHSIG on the VMM and on virtiofsd). A virtiofsd
//! that fails while the VM runs ends the VM (runvm-vmm exits 6); that is
//! reported as [`VmError::ShareLost`] with the VMM's message and
//! virtiofsd's log.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use runvm_agent_api::{RequestBody, READY_LINE, READY_PORT, SHARE_TAG};

mod image;
mod jail_link;
mod launch;
mod ready;
mod shared;
mod stderr_tee;

pub use image::ImageKind;
use stderr_tee::StderrTee;

use crate::agent_client::{AgentClient, ClientError};
use crate::host_cgroup::Entry;
use crate::share::{self, Share, ShareError};
use crate::template::{self, Maker, Plan, TemplateInputs};
use launch::Launch;

/// How often the host checks, while it waits for the agent's readiness
/// connection, whether the VMM is still there (the guest is not asked).
const VMM_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long the VMM gets to exit after the guest was told to power off,
/// or after SIGTERM, before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How much of the console log an error quotes.
const CONSOLE_TAIL_BYTES: u64 = 2048;
/// runvm-vmm's exit status when a device backend (virtiofsd) failed.
pub const VMM_EXIT_BACKEND_FAILED: i32 = 6;
/// runvm-vmm's exit status when a thread made a call its seccomp filter
/// forbids; its stderr then has a line after [`VMM_SECCOMP_REPORT`].
pub const VMM_EXIT_SECCOMP: i32 = 7;
pub const VMM_SECCOMP_REPORT: &str = "runvm-vmm: killed by seccomp: ";

/// A tap for a virtio-net device: its descriptor (close-on-exec, as
/// everything runvm opens), and the VMM's `--net` value, which names it by
/// its number (`fd=N,mac=...`).
pub struct VmTap {
    pub fd: OwnedFd,
    pub option: String,
    /// The MAC in `option`: the guest's card gets it.
    pub mac: [u8; 6],
    /// The pod network it belongs to has IPv6 (addresses, routes or
    /// neighbours): see [`IPV6_OFF`].
    pub ipv6: bool,
}

/// The guest kernel's parameter that leaves its built-in IPv6
/// uninitialised: given unless a tap's network has IPv6, since bringing
/// IPv6 up costs about 4% of the boot on an emulating host (measured in
/// guest-kernel/README.md) and a guest without it behaves as one whose
/// kernel lacks it (AF_INET6 sockets fail with EAFNOSUPPORT).
pub const IPV6_OFF: &str = "ipv6.disable=1";

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    /// The guest image with the agent as `/init`: an ext4 root disk or a
    /// cpio initramfs (see [`ImageKind`]).
    pub image: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// Give the VM a share (`<dir>/share`, virtio-fs tag
    /// [`SHARE_TAG`]) served by this virtiofsd; see
    /// [`crate::share::find_virtiofsd`].
    pub virtiofsd: Option<PathBuf>,
}

impl VmSpec {
    /// A VM of `size` from the located `assets`, with a share.
    pub fn with_share(assets: crate::assets::Assets, size: crate::sandbox::VmSize) -> VmSpec {
        VmSpec {
            vmm: assets.vmm,
            kernel: assets.kernel,
            image: assets.image,
            memory_mib: size.memory_mib,
            vcpus: size.vcpus,
            virtiofsd: Some(assets.virtiofsd),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot use {} as the guest image: {reason}", path.display())]
    Image { path: PathBuf, reason: String },
    #[error("cannot create the VM directory {}: {source}", path.display())]
    Directory {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the VMM {}: {source}", path.display())]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the VM exited ({status}) before its agent answered{}{}", vmm_suffix(.vmm), console_suffix(.console))]
    ExitedEarly {
        status: ExitStatus,
        /// What the VMM said last on stderr.
        vmm: String,
        console: String,
    },
    /// The VM ended because its share's virtiofsd went away or failed.
    #[error("the VM's share failed: runvm-vmm exited ({status}){}; {virtiofsd}", vmm_suffix(.vmm))]
    ShareLost {
        status: ExitStatus,
        vmm: String,
        /// virtiofsd's status and the end of its log.
        virtiofsd: String,
    },
    /// A VMM thread made a system call its seccomp filter forbids.
    #[error("VMM killed by seccomp: {report} ({status})")]
    Seccomp { status: ExitStatus, report: String },
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error("the VM has no share (it was booted without virtiofsd)")]
    NoShare,
    #[error("the agent did not answer within {timeout:?} ({last_error}){}", console_suffix(.console))]
    AgentTimeout {
        timeout: Duration,
        last_error: String,
        console: String,
    },
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error("cannot wait for the agent's readiness connection on {}: {source}", path.display())]
    Readiness {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the host's random generator: {0}")]
    HostEntropy(std::io::Error),
    #[error("cannot wait for the VMM: {0}")]
    Wait(std::io::Error),
    #[error("cannot link the jailed VMM's vsock socket {}: {source}", path.display())]
    VsockLink {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The first line a readiness connection carries (bounded), if any.
async fn read_ready_line(mut stream: tokio::net::UnixStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut line = Vec::with_capacity(READY_LINE.len());
    let mut byte = [0u8; 1];
    let read = async {
        while line.len() < READY_LINE.len() + 16 {
            match stream.read(&mut byte).await {
                Ok(1) => {
                    line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break;
                    }
                }
                _ => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()?;
    String::from_utf8(line).ok()
}

fn vmm_suffix(vmm: &str) -> String {
    if vmm.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", vmm.trim_end())
    }
}

fn console_suffix(console: &str) -> String {
    if console.trim().is_empty() {
        String::new()
    } else {
        format!("; the guest console ended with:\n{}", console.trim_end())
    }
}

/// A running microVM. Dropping it kills the VMM and virtiofsd, undoes the
/// share's mounts and removes its directory.
pub struct MicroVm {
    child: Option<Child>,
    /// Set once the VMM has been reaped.
    exited: Option<ExitStatus>,
    dir: PathBuf,
    stderr: Option<StderrTee>,
    share: Option<Share>,
    /// The agent has mounted the share.
    share_mounted: bool,
    /// Where the agent announces readiness (hybrid vsock's socket for
    /// host port [`READY_PORT`]), until it has.
    ready: Option<std::os::unix::net::UnixListener>,
    /// The VMM runs jailed in [`Self::jail_dir`].
    jailed: bool,
    spec: VmSpec,
    vmm_log: Option<PathBuf>,
    /// Whether the VM is being saved as a template or was restored from
    /// one, until the agent has answered.
    template: FromTemplate,
    /// The VM's taps, kept until the agent has answered: a VM saved as a
    /// template gets them when restored, a failed restore when booted
    /// cold.
    taps: Vec<VmTap>,
    /// The host cgroup the VMM and virtiofsd are spawned into, when
    /// the caller is not in it itself (see [`crate::host_cgroup::entry`]).
    cgroup: Option<Entry>,
}

/// A VM's relation to its template until its agent answers.
enum FromTemplate {
    No,
    /// Booting cold, to be saved at the ready point.
    Making(Maker),
    /// Restored from this template.
    Restored(PathBuf),
}

impl MicroVm {
    /// Starts `runvm-vmm` for `spec`. `dir` must not exist yet; it is
    /// created (mode 0700) and removed with the VM.
    pub fn boot(spec: &VmSpec, dir: &Path) -> Result<MicroVm, VmError> {
        MicroVm::boot_logged(spec, dir, None)
    }

    /// [`Self::boot`], with the VMM's messages appended to `vmm_log`
    /// instead of our stderr (which may be a container's).
    pub fn boot_logged(
        spec: &VmSpec,
        dir: &Path,
        vmm_log: Option<&Path>,
    ) -> Result<MicroVm, VmError> {
        MicroVm::boot_with_taps(spec, dir, vmm_log, Vec::new(), None)
    }

    /// [`Self::boot_logged`] with a virtio-net device per tap: the VMM
    /// inherits those descriptors and no others (everything else runvm
    /// holds is close-on-exec). With `cgroup`, the VMM and virtiofsd
    /// (every one started for the VM) are spawned into that host cgroup.
    pub fn boot_with_taps(
        spec: &VmSpec,
        dir: &Path,
        vmm_log: Option<&Path>,
        taps: Vec<VmTap>,
        cgroup: Option<Entry>,
    ) -> Result<MicroVm, VmError> {
        // A bad image is refused before anything is started for the VM.
        ImageKind::of(&spec.image)?;
        // A jail is named by an absolute path.
        let dir = &std::path::absolute(dir).map_err(|source| VmError::Directory {
            path: dir.to_owned(),
            source,
        })?;
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(|source| VmError::Directory {
                path: dir.to_owned(),
                source,
            })?;
        // From here on Drop cleans up.
        let mut vm = MicroVm {
            child: None,
            exited: None,
            dir: dir.to_owned(),
            stderr: None,
            share: None,
            share_mounted: false,
            ready: None,
            // Only root can jail it.
            // SAFETY: geteuid has no preconditions.
            jailed: unsafe { libc::geteuid() } == 0,
            spec: spec.clone(),
            vmm_log: vmm_log.map(Path::to_owned),
            template: FromTemplate::No,
            taps,
            cgroup,
        };
        if vm.jailed {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(vm.jail_dir())
                .map_err(|source| VmError::Directory {
                    path: vm.jail_dir(),
                    source,
                })?;
        }
        vm.listen_for_readiness()?;
        // virtiofsd first: the VMM connects to it as it starts.
        vm.start_share()?;
        let launch = vm.plan_launch();
        vm.launch(spec, &launch)?;
        Ok(vm)
    }

    /// Starts the share's virtiofsd, if the VM has a share.
    fn start_share(&mut self) -> Result<(), VmError> {
        if let Some(virtiofsd) = &self.spec.virtiofsd {
            self.share = Some(Share::start(
                virtiofsd,
                &self.share_dir(),
                &self.virtiofs_socket(),
                &self.virtiofsd_log(),
                self.cgroup.as_ref(),
            )?);
        }
        Ok(())
    }

    /// Cold, from a template, or cold to make one: see [`crate::template`].
    fn plan_launch(&mut self) -> Launch {
        let cmdline = launch::cmdline(&self.taps);
        let inputs = TemplateInputs {
            vmm: &self.spec.vmm,
            kernel: &self.spec.kernel,
            image: &self.spec.image,
            memory_mib: self.spec.memory_mib,
            vcpus: self.spec.vcpus,
            cmdline: &cmdline,
            share_tag: self.spec.virtiofsd.as_ref().map(|_| SHARE_TAG),
            net_cards: self.taps.len(),
        };
        match template::plan(&inputs) {
            Plan::Restore(dir) => match launch::fresh_cid() {
                Ok(cid) => {
                    launch::seed_console(&dir, &self.console_log());
                    self.template = FromTemplate::Restored(dir.clone());
                    Launch::Restore { dir, cid }
                }
                Err(e) => {
                    self.note(&format!(
                        "booting cold: no random CID for a restored VM \
                         (cannot read the host's random generator: {e})"
                    ));
                    Launch::Cold
                }
            },
            Plan::Make(maker) => {
                let launch = Launch::SaveTo(maker.snapshot_dir().to_owned());
                self.template = FromTemplate::Making(maker);
                launch
            }
            Plan::Cold(reason) => {
                if !reason.is_empty() {
                    self.note(&format!("booting cold: {reason}"));
                }
                Launch::Cold
            }
        }
    }

    /// A line for the VM's log (the VMM's log file, else our stderr).
    fn note(&self, message: &str) {
        let line = format!("runvm: {message}\n");
        let written = self.vmm_log.as_ref().is_some_and(|path| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()))
                .is_ok()
        });
        if !written {
            eprint!("{line}");
        }
    }

    /// The host directory shared with the guest (with a share).
    pub fn share_dir(&self) -> PathBuf {
        self.dir.join("share")
    }

    pub fn virtiofs_socket(&self) -> PathBuf {
        self.socket_dir().join("virtiofs.sock")
    }

    /// The root of the VMM's jail (when it is jailed).
    pub fn jail_dir(&self) -> PathBuf {
        self.dir.join("jail")
    }

    /// Where the VMM's sockets are: its jail, if it has one.
    fn socket_dir(&self) -> PathBuf {
        if self.jailed {
            self.jail_dir()
        } else {
            self.dir.clone()
        }
    }

    pub fn virtiofsd_log(&self) -> PathBuf {
        self.dir.join("virtiofsd.log")
    }

    /// The agent's channel (once [`Self::connect_agent`] has succeeded).
    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }

    /// The vsock socket as the VMM binds it.
    fn vmm_vsock_socket(&self) -> PathBuf {
        self.socket_dir().join("vsock.sock")
    }

    /// The Unix socket behind host vsock port [`READY_PORT`].
    fn ready_socket(&self) -> PathBuf {
        self.socket_dir().join(format!("vsock.sock_{READY_PORT}"))
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The VMM's pid, until it has been reaped: the process started, which
    /// is signalled and waited for (jailed, the jail's supervisor; see
    /// [`Self::vmm_pid`]).
    pub fn pid(&self) -> Option<u32> {
        match self.exited {
            Some(_) => None,
            None => self.child.as_ref().map(Child::id),
        }
    }

    /// The process that runs the VM: the jailed VMM, the only child of the
    /// VMM's supervisor (see `runvm_vmm::jail`); unjailed, [`Self::pid`].
    pub fn vmm_pid(&self) -> Option<u32> {
        let pid = self.pid()?;
        if !self.jailed {
            return Some(pid);
        }
        let children = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
        children.split_whitespace().next()?.parse().ok()
    }

    /// The last lines the guest printed on its console.
    pub fn console_tail(&self) -> String {
        share::tail(&self.console_log(), CONSOLE_TAIL_BYTES)
    }

    /// What the VMM wrote last on stderr.
    pub fn vmm_stderr(&mut self) -> String {
        let exited = self.exited.is_some();
        self.stderr
            .as_mut()
            .map(|tee| tee.text(exited))
            .unwrap_or_default()
    }

    /// The VMM's exit status once it has exited, or the error that ended
    /// the VM: [`VmError::ShareLost`] when its share's virtiofsd failed.
    pub fn poll_exit(&mut self) -> Result<Option<ExitStatus>, VmError> {
        match self.try_wait()? {
            Some(status) => self.judge(status).map(Some),
            None => Ok(None),
        }
    }

    /// The VMM's status as the VM's outcome: exit 6 (a backend failed)
    /// becomes the share's error, exit 7 or SIGSYS the seccomp violation.
    fn judge(&mut self, status: ExitStatus) -> Result<ExitStatus, VmError> {
        use std::os::unix::process::ExitStatusExt;
        if status.code() == Some(VMM_EXIT_SECCOMP) || status.signal() == Some(libc::SIGSYS) {
            let report = stderr_tee::seccomp_report(&self.vmm_stderr());
            return Err(VmError::Seccomp { status, report });
        }
        if status.code() != Some(VMM_EXIT_BACKEND_FAILED) {
            return Ok(status);
        }
        let vmm = self.vmm_stderr();
        let virtiofsd = match self.share.as_mut() {
            Some(share) => {
                // It is leaving, or gone: let its status be part of the
                // report.
                let _ = share.wait_exit(Duration::from_secs(1));
                share.report()
            }
            None => "the VM had no share".to_owned(),
        };
        Err(VmError::ShareLost {
            status,
            vmm,
            virtiofsd,
        })
    }

    pub(super) async fn control_connection(&self) -> Result<AgentClient, ClientError> {
        let client = AgentClient::connect(&self.vsock_socket()).await?;
        client.call(RequestBody::Version).await?;
        Ok(client)
    }

    /// Asks the agent to power the guest off and waits for the VMM to exit;
    /// kills it if it does not within a few seconds. Then ends virtiofsd
    /// and undoes the share.
    pub async fn shutdown(mut self, agent: &AgentClient) -> Result<ExitStatus, VmError> {
        // The connection may close before the answer arrives: the guest is
        // going away, which is what was asked. (If it closed because the
        // VM had ended already, the VMM's status tells why.)
        match agent.call(RequestBody::Shutdown).await {
            Ok(_) | Err(ClientError::Closed) | Err(ClientError::Frame(_)) => {}
            Err(_) if self.try_wait()?.is_some() => {}
            Err(e) => return Err(e.into()),
        }
        let status = self.wait_or_kill(EXIT_GRACE).await?;
        self.finish(status)
    }

    /// Stops the VM without the agent's help: SIGTERM (the VMM stops its
    /// vCPUs and exits), then SIGKILL after a grace period. Then ends
    /// virtiofsd and undoes the share.
    pub async fn stop(mut self) -> Result<ExitStatus, VmError> {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        let status = self.wait_or_kill(EXIT_GRACE).await?;
        self.finish(status)
    }

    /// After the VMM has exited: the share's error if it failed, else
    /// the share is taken down (errors doing so are reported), else the
    /// VMM's status.
    fn finish(&mut self, status: ExitStatus) -> Result<ExitStatus, VmError> {
        let status = self.judge(status)?;
        if let Some(mut share) = self.share.take() {
            share.stop(share::VIRTIOFSD_EXIT_GRACE)?;
        }
        Ok(status)
    }

    async fn wait_or_kill(&mut self, grace: Duration) -> Result<ExitStatus, VmError> {
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.kill()
    }

    /// SIGKILL and reap.
    fn kill(&mut self) -> Result<ExitStatus, VmError> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        let Some(child) = self.child.as_mut() else {
            return Err(VmError::Wait(std::io::Error::other(
                "the VMM never started",
            )));
        };
        let _ = child.kill();
        let status = child.wait().map_err(VmError::Wait)?;
        self.exited = Some(status);
        Ok(status)
    }

    /// The VMM's exit status once it has exited (reaping it).
    fn try_wait(&mut self) -> Result<Option<ExitStatus>, VmError> {
        if self.exited.is_some() {
            return Ok(self.exited);
        }
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        self.exited = child.try_wait().map_err(VmError::Wait)?;
        Ok(self.exited)
    }
}

impl Drop for MicroVm {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.kill();
        }
        // virtiofsd leaves once the VMM is gone; then the binds go.
        drop(self.share.take());
        // Never recurse into a mount that could not be undone: it may be a
        // bundle's rootfs.
        let left = share::mounts_below(&self.dir);
        if left.is_empty() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "runvm: {} is left behind: {left:?} could not be unmounted",
                self.dir.display()
            );
        }
    }
}
