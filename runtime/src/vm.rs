//! One microVM as a child process of the runtime: `runvm-vmm` with its
//! hybrid-vsock socket and console log in a private directory that lives
//! exactly as long as the VM, and optionally the VM's share (see
//! [`crate::share`]): `<dir>/share` served by a virtiofsd of its own.
//!
//! The VM's directory (mode 0700):
//! - `vsock.sock`, `console.log`: the agent's channel and the guest console;
//! - `share/`, `virtiofs.sock`, `virtiofsd.log`: with a share.
//!
//! Everything the VM started goes with it: when it is shut down or
//! stopped, when the `MicroVm` is dropped, and when the thread that booted
//! it dies (PR_SET_PDEATHSIG on the VMM and on virtiofsd). A virtiofsd
//! that fails while the VM runs ends the VM (runvm-vmm exits 6); that is
//! reported as [`VmError::ShareLost`] with the VMM's message and
//! virtiofsd's log.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use runvm_agent_api::{RequestBody, ResponseBody, READY_LINE, READY_PORT, SHARE_TAG};

use crate::agent_client::{AgentClient, ClientError};
use crate::share::{self, Share, ShareError};

/// How often the host checks, while it waits for the agent's readiness
/// connection, whether the VMM is still there (the guest is not asked).
const VMM_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long the VMM gets to exit after the guest was told to power off,
/// or after SIGTERM, before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How much of the console log an error quotes.
const CONSOLE_TAIL_BYTES: u64 = 2048;
/// How much of the VMM's stderr is kept for error messages.
const VMM_STDERR_TAIL_BYTES: usize = 4096;
/// runvm-vmm's exit status when a device backend (virtiofsd) failed.
pub const VMM_EXIT_BACKEND_FAILED: i32 = 6;

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

/// How the VMM hands the guest its image, told apart by content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// An ext4 filesystem: a read-only root disk, read on demand.
    RootDisk,
    /// A cpio archive (or a compressed one), unpacked by the guest kernel.
    Initramfs,
}

impl ImageKind {
    /// Looks at the first bytes of `path`.
    pub fn of(path: &Path) -> Result<ImageKind, VmError> {
        let error = |reason: String| VmError::Image {
            path: path.to_owned(),
            reason,
        };
        let mut head = Vec::with_capacity(EXT4_MAGIC_OFFSET + 2);
        fs::File::open(path)
            .and_then(|f| f.take(EXT4_MAGIC_OFFSET as u64 + 2).read_to_end(&mut head))
            .map_err(|e| error(e.to_string()))?;
        Self::from_head(&head)
            .ok_or_else(|| error("neither an ext4 filesystem nor a cpio initramfs".to_owned()))
    }

    fn from_head(head: &[u8]) -> Option<ImageKind> {
        const CPIO: [&[u8]; 3] = [b"070701", b"070702", b"070707"];
        // gzip, xz, zstd, lz4, bzip2: compressed initramfs archives.
        const COMPRESSED: [&[u8]; 5] = [
            &[0x1f, 0x8b],
            &[0xfd, b'7', b'z', b'X', b'Z'],
            &[0x28, 0xb5, 0x2f, 0xfd],
            &[0x02, 0x21, 0x4c, 0x18],
            b"BZh",
        ];
        if head.get(EXT4_MAGIC_OFFSET..EXT4_MAGIC_OFFSET + 2) == Some(&[0x53, 0xef][..]) {
            Some(ImageKind::RootDisk)
        } else if CPIO.iter().chain(&COMPRESSED).any(|m| head.starts_with(m)) {
            Some(ImageKind::Initramfs)
        } else {
            None
        }
    }

    /// The runvm-vmm option that takes such an image.
    pub fn vmm_flag(self) -> &'static str {
        match self {
            ImageKind::RootDisk => "--root-disk",
            ImageKind::Initramfs => "--initrd",
        }
    }
}

/// Where the ext2/3/4 superblock's magic number sits.
const EXT4_MAGIC_OFFSET: usize = 1024 + 0x38;

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
    #[error("cannot wait for the VMM: {0}")]
    Wait(std::io::Error),
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

/// The VMM's stderr, passed on to ours as it comes, its tail kept for
/// error messages.
struct StderrTee {
    tail: Arc<Mutex<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StderrTee {
    /// Passes the output on to `sink`, or to our stderr.
    fn start(mut pipe: ChildStderr, mut sink: Option<fs::File>) -> std::io::Result<StderrTee> {
        let tail = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&tail);
        let thread = std::thread::Builder::new()
            .name("vmm-stderr".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = match pipe.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    let _ = match sink.as_mut() {
                        Some(file) => file.write_all(&buf[..n]),
                        None => std::io::stderr().write_all(&buf[..n]),
                    };
                    let mut tail = kept.lock().unwrap_or_else(|e| e.into_inner());
                    tail.extend_from_slice(&buf[..n]);
                    let excess = tail.len().saturating_sub(VMM_STDERR_TAIL_BYTES);
                    tail.drain(..excess);
                }
            })?;
        Ok(StderrTee {
            tail,
            thread: Some(thread),
        })
    }

    /// What the VMM wrote last. Once it has exited, waits briefly for the
    /// rest of its output to arrive.
    fn text(&mut self, exited: bool) -> String {
        if exited {
            let deadline = Instant::now() + Duration::from_millis(500);
            while self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
                if Instant::now() >= deadline {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                let _ = self.thread.take().map(|t| t.join());
            }
        }
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&tail).into_owned()
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
        // A bad image is refused before anything is started for the VM.
        let image_flag = ImageKind::of(&spec.image)?.vmm_flag();
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
        };
        // Before the guest can connect to it.
        let ready = std::os::unix::net::UnixListener::bind(vm.ready_socket())
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| VmError::Readiness {
                path: vm.ready_socket(),
                source,
            })?;
        vm.ready = Some(ready);
        // virtiofsd first: the VMM connects to it as it starts.
        if let Some(virtiofsd) = &spec.virtiofsd {
            vm.share = Some(Share::start(
                virtiofsd,
                &vm.share_dir(),
                &vm.virtiofs_socket(),
                &vm.virtiofsd_log(),
            )?);
        }
        let mut command = Command::new(&spec.vmm);
        command
            .arg("--kernel")
            .arg(&spec.kernel)
            .arg(image_flag)
            .arg(&spec.image)
            .arg("--memory")
            .arg(spec.memory_mib.to_string())
            .arg("--vcpus")
            .arg(spec.vcpus.to_string())
            .arg("--vsock-socket")
            .arg(vm.vsock_socket())
            .arg(format!("--serial=file:{}", vm.console_log().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if vm.share.is_some() {
            command.arg("--fs").arg(format!(
                "tag={SHARE_TAG},socket={}",
                vm.virtiofs_socket().display()
            ));
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs in between.
        unsafe {
            command.pre_exec(|| {
                // The VM must not outlive whoever started it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let sink = match vmm_log {
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
        vm.child = Some(child);
        vm.stderr = stderr.map_err(|source| VmError::Spawn {
            path: spec.vmm.clone(),
            source,
        })?;
        Ok(vm)
    }

    /// The host directory shared with the guest (with a share).
    pub fn share_dir(&self) -> PathBuf {
        self.dir.join("share")
    }

    pub fn virtiofs_socket(&self) -> PathBuf {
        self.dir.join("virtiofs.sock")
    }

    pub fn virtiofsd_log(&self) -> PathBuf {
        self.dir.join("virtiofsd.log")
    }

    /// The share's mounts: /proc/self/mountinfo in the share's own mount
    /// namespace (the host's mount table never shows them).
    pub fn share_mountinfo(&self) -> Result<String, VmError> {
        let share = self.share.as_ref().ok_or(VmError::NoShare)?;
        Ok(share.mountinfo().map_err(ShareError::Namespace)?)
    }

    /// virtiofsd's pid and its sandboxed child's, while they run.
    pub fn virtiofsd_pids(&self) -> Vec<u32> {
        self.share
            .as_ref()
            .map(Share::virtiofsd_pids)
            .unwrap_or_default()
    }

    /// Binds the bundle's root filesystem `rootfs` (a host directory) into
    /// the share for container `id`, read-only if `readonly` (the spec's
    /// `root.readonly`), and has the agent mount the share first if it has
    /// not yet. Returns the guest path to give `CreateContainer`.
    pub async fn share_rootfs(
        &mut self,
        agent: &AgentClient,
        id: &str,
        rootfs: &Path,
        readonly: bool,
    ) -> Result<String, VmError> {
        if self.share.is_none() {
            return Err(VmError::NoShare);
        }
        runvm_agent_api::validate_container_id(id)
            .map_err(|e| VmError::Share(ShareError::InvalidId(e)))?;
        if !self.share_mounted {
            let tag = SHARE_TAG.to_owned();
            match agent.call(RequestBody::MountShare { tag }).await? {
                ResponseBody::Done => self.share_mounted = true,
                other => return Err(ClientError::Unexpected(other).into()),
            }
        }
        let share = self.share.as_mut().ok_or(VmError::NoShare)?;
        Ok(share.add_rootfs(id, rootfs, readonly)?)
    }

    /// Binds a host file or directory that container `id` mounts into the
    /// share (after its rootfs); returns the guest path to mount from.
    pub fn share_bind(
        &mut self,
        id: &str,
        source: &crate::share::MountSource,
        flags: crate::share::BindFlags,
    ) -> Result<String, VmError> {
        let share = self.share.as_mut().ok_or(VmError::NoShare)?;
        Ok(share.add_bind(id, source, flags)?)
    }

    /// Unbinds container `id`'s rootfs from the share (after the container
    /// was deleted in the guest).
    pub fn unshare_rootfs(&mut self, id: &str) -> Result<(), VmError> {
        let share = self.share.as_mut().ok_or(VmError::NoShare)?;
        Ok(share.remove_rootfs(id)?)
    }

    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join("vsock.sock")
    }

    /// The Unix socket behind host vsock port [`READY_PORT`].
    fn ready_socket(&self) -> PathBuf {
        self.dir.join(format!("vsock.sock_{READY_PORT}"))
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    /// The VMM's pid, until it has been reaped.
    pub fn pid(&self) -> Option<u32> {
        match self.exited {
            Some(_) => None,
            None => self.child.as_ref().map(Child::id),
        }
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
    /// becomes the share's error.
    fn judge(&mut self, status: ExitStatus) -> Result<ExitStatus, VmError> {
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

    /// Waits until the agent says it is ready (it connects to the host's
    /// readiness port once its own ports listen), for at most `timeout`,
    /// then opens the control connection; fails at once if the VM exits
    /// meanwhile.
    pub async fn connect_agent(&mut self, timeout: Duration) -> Result<AgentClient, VmError> {
        let deadline = Instant::now() + timeout;
        let listener = match self.ready.take() {
            Some(listener) => {
                tokio::net::UnixListener::from_std(listener).map_err(|e| VmError::Readiness {
                    path: self.ready_socket(),
                    source: e,
                })?
            }
            None => return Ok(self.control_connection().await?),
        };
        loop {
            match tokio::time::timeout(VMM_POLL_INTERVAL, listener.accept()).await {
                Ok(Ok((stream, _))) => {
                    let said = read_ready_line(stream).await;
                    if said.as_deref() == Some(READY_LINE) {
                        break;
                    }
                    // Not the agent's words: keep waiting for them.
                }
                Ok(Err(source)) => {
                    return Err(VmError::Readiness {
                        path: self.ready_socket(),
                        source,
                    })
                }
                Err(_elapsed) => {}
            }
            if let Some(status) = self.try_wait()? {
                self.judge(status)?;
                return Err(VmError::ExitedEarly {
                    status,
                    vmm: self.vmm_stderr(),
                    console: self.console_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(VmError::AgentTimeout {
                    timeout,
                    last_error: "no readiness connection from the agent".to_owned(),
                    console: self.console_tail(),
                });
            }
        }
        // Later connections to the port get a reset from the VMM.
        drop(listener);
        let _ = fs::remove_file(self.ready_socket());
        Ok(self.control_connection().await?)
    }

    async fn control_connection(&self) -> Result<AgentClient, ClientError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_told_apart_by_content() {
        let mut ext4 = vec![0u8; 2048];
        ext4[EXT4_MAGIC_OFFSET] = 0x53;
        ext4[EXT4_MAGIC_OFFSET + 1] = 0xef;
        assert_eq!(ImageKind::from_head(&ext4), Some(ImageKind::RootDisk));
        assert_eq!(
            ImageKind::from_head(b"070701000000"),
            Some(ImageKind::Initramfs)
        );
        assert_eq!(
            ImageKind::from_head(&[0x1f, 0x8b, 8]),
            Some(ImageKind::Initramfs)
        );
        assert_eq!(ImageKind::from_head(b"\x7fELF"), None);
        assert_eq!(ImageKind::from_head(b""), None);
    }

    #[test]
    fn a_missing_image_is_named() {
        let err = ImageKind::of(Path::new("/nonexistent/rootfs.ext4")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/rootfs.ext4"),
            "{err}"
        );
    }
}
