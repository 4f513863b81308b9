//! One microVM as a child process of the runtime: `runvm-vmm` with its
//! hybrid-vsock socket and console log in a private directory that lives
//! exactly as long as the VM.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use runvm_agent_api::RequestBody;

use crate::agent_client::{AgentClient, ClientError};

/// How often a booting guest is asked whether its agent listens yet.
const AGENT_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long the VMM gets to exit after the guest was told to power off,
/// or after SIGTERM, before it is killed.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How much of the console log an error quotes.
const CONSOLE_TAIL_BYTES: u64 = 2048;

/// What to boot.
#[derive(Clone, Debug)]
pub struct VmSpec {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mib: u32,
    pub vcpus: u8,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
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
    #[error("the VM exited ({status}) before its agent answered{}", console_suffix(.console))]
    ExitedEarly { status: ExitStatus, console: String },
    #[error("the agent did not answer within {timeout:?} ({last_error}){}", console_suffix(.console))]
    AgentTimeout {
        timeout: Duration,
        last_error: String,
        console: String,
    },
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error("cannot wait for the VMM: {0}")]
    Wait(std::io::Error),
}

fn console_suffix(console: &str) -> String {
    if console.trim().is_empty() {
        String::new()
    } else {
        format!("; the guest console ended with:\n{}", console.trim_end())
    }
}

/// A running microVM. Dropping it kills the VMM and removes its directory.
pub struct MicroVm {
    child: Option<Child>,
    /// Set once the VMM has been reaped.
    exited: Option<ExitStatus>,
    dir: PathBuf,
}

impl MicroVm {
    /// Starts `runvm-vmm` for `spec`. `dir` must not exist yet; it is
    /// created (mode 0700) and removed with the VM.
    pub fn boot(spec: &VmSpec, dir: &Path) -> Result<MicroVm, VmError> {
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
        };
        let mut command = Command::new(&spec.vmm);
        command
            .arg("--kernel")
            .arg(&spec.kernel)
            .arg("--initrd")
            .arg(&spec.initrd)
            .arg("--memory")
            .arg(spec.memory_mib.to_string())
            .arg("--vcpus")
            .arg(spec.vcpus.to_string())
            .arg("--vsock-socket")
            .arg(vm.vsock_socket())
            .arg(format!("--serial=file:{}", vm.console_log().display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
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
        let child = command.spawn().map_err(|source| VmError::Spawn {
            path: spec.vmm.clone(),
            source,
        })?;
        vm.child = Some(child);
        Ok(vm)
    }

    pub fn vsock_socket(&self) -> PathBuf {
        self.dir.join("vsock.sock")
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
        let Ok(mut file) = fs::File::open(self.console_log()) else {
            return String::new();
        };
        let len = file.metadata().map_or(0, |m| m.len());
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL_BYTES)));
        let mut tail = Vec::new();
        let _ = file.read_to_end(&mut tail);
        String::from_utf8_lossy(&tail).into_owned()
    }

    /// Waits until the agent answers on its control port, for at most
    /// `timeout`; fails at once if the VM exits meanwhile.
    pub async fn connect_agent(&mut self, timeout: Duration) -> Result<AgentClient, VmError> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = match AgentClient::connect(&self.vsock_socket()).await {
                Ok(client) => match client.call(RequestBody::Version).await {
                    Ok(_) => return Ok(client),
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if let Some(status) = self.try_wait()? {
                return Err(VmError::ExitedEarly {
                    status,
                    console: self.console_tail(),
                });
            }
            if Instant::now() >= deadline {
                return Err(VmError::AgentTimeout {
                    timeout,
                    last_error: attempt.to_string(),
                    console: self.console_tail(),
                });
            }
            tokio::time::sleep(AGENT_POLL_INTERVAL).await;
        }
    }

    /// Asks the agent to power the guest off and waits for the VMM to exit;
    /// kills it if it does not within a few seconds.
    pub async fn shutdown(mut self, agent: &AgentClient) -> Result<ExitStatus, VmError> {
        // The connection may close before the answer arrives: the guest is
        // going away, which is what was asked.
        match agent.call(RequestBody::Shutdown).await {
            Ok(_) | Err(ClientError::Closed) | Err(ClientError::Frame(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.wait_or_kill(EXIT_GRACE).await
    }

    /// Stops the VM without the agent's help: SIGTERM (the VMM stops its
    /// vCPUs and exits), then SIGKILL after a grace period.
    pub async fn stop(mut self) -> Result<ExitStatus, VmError> {
        if let Some(pid) = self.pid() {
            // SAFETY: plain kill(2) on our own, not yet reaped, child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        }
        self.wait_or_kill(EXIT_GRACE).await
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
        let _ = fs::remove_dir_all(&self.dir);
    }
}
