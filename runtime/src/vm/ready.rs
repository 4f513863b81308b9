//! Until the agent answers: waiting for its readiness connection, saving
//! a VM booted to become a template and restoring it, and making a
//! restored VM its own machine (see [`crate::template`]).

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use runvm_agent_api::network::CardMac;
use runvm_agent_api::{RequestBody, MIN_RESEED_BYTES, READY_LINE};

use super::launch::{self, Launch};
use super::{jail_link, read_ready_line, FromTemplate, MicroVm, VmError, VMM_POLL_INTERVAL};
use crate::agent_client::AgentClient;
use crate::template::{self, Maker};

/// How long the VMM gets to save the VM once asked.
const SAVE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a restored VM's vsock socket is looked for.
const SOCKET_POLL: Duration = Duration::from_millis(10);

impl MicroVm {
    /// Waits until the agent says it is ready (it connects to the host's
    /// readiness port once its own ports listen), for at most `timeout`,
    /// then opens the control connection; fails at once if the VM exits
    /// meanwhile. A VM booted to become a template is saved and restored
    /// on the way; a restored one is reseeded. A failed save or restore is
    /// logged and the VM boots cold.
    pub async fn connect_agent(&mut self, timeout: Duration) -> Result<AgentClient, VmError> {
        let agent = self.reach_agent(timeout).await?;
        // The VMM has its own copies of the taps; no launch needs ours now.
        self.taps.clear();
        Ok(agent)
    }

    async fn reach_agent(&mut self, timeout: Duration) -> Result<AgentClient, VmError> {
        let deadline = Instant::now() + timeout;
        match std::mem::replace(&mut self.template, FromTemplate::No) {
            // Connected before: a new control connection.
            FromTemplate::No if self.ready.is_none() => {
                return Ok(self.control_connection().await?);
            }
            FromTemplate::No => {}
            FromTemplate::Making(maker) => {
                self.wait_ready(deadline, timeout).await?;
                match self.save_as_template(maker, deadline).await {
                    Ok(dir) => return self.restored_or_cold(dir, false, deadline, timeout).await,
                    Err(reason) => {
                        self.note(&format!(
                            "the template was not saved ({reason}); booting cold"
                        ));
                        self.relaunch_cold()?;
                    }
                }
            }
            FromTemplate::Restored(dir) => {
                return self.restored_or_cold(dir, true, deadline, timeout).await;
            }
        }
        self.wait_ready(deadline, timeout).await?;
        self.attach_agent().await
    }

    /// Waits for the agent's readiness line on the readiness port.
    async fn wait_ready(&mut self, deadline: Instant, timeout: Duration) -> Result<(), VmError> {
        let listener = match self.ready.take() {
            Some(listener) => {
                tokio::net::UnixListener::from_std(listener).map_err(|e| VmError::Readiness {
                    path: self.ready_socket(),
                    source: e,
                })?
            }
            None => return Ok(()),
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
            self.check_running()?;
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
        Ok(())
    }

    /// An error if the VMM has exited.
    fn check_running(&mut self) -> Result<(), VmError> {
        if let Some(status) = self.try_wait()? {
            self.judge(status)?;
            return Err(VmError::ExitedEarly {
                status,
                vmm: self.vmm_stderr(),
                console: self.console_tail(),
            });
        }
        Ok(())
    }

    /// The control connection, once the agent is ready; jailed, through
    /// a link the jail cannot change.
    async fn attach_agent(&mut self) -> Result<AgentClient, VmError> {
        if self.jailed {
            jail_link::link_socket(&self.vmm_vsock_socket(), &self.vsock_socket()).map_err(
                |source| VmError::VsockLink {
                    path: self.vmm_vsock_socket(),
                    source,
                },
            )?;
        }
        // The readiness line named the agent's version, and it is ours
        // (READY_LINE): no Version round trip on top, each costs the guest
        // emulated vsock work.
        Ok(AgentClient::connect(&self.vsock_socket()).await?)
    }

    /// Has the VMM, at the agent's ready point, save the VM into the
    /// maker's directory (the VMM exits 0 once saved), then publishes it.
    async fn save_as_template(
        &mut self,
        maker: Maker,
        deadline: Instant,
    ) -> Result<PathBuf, String> {
        // Jailed, the VMM is the supervisor's child: it handles the
        // signal, the supervisor forwards only the stopping ones.
        let pid = self.vmm_pid().ok_or("the VMM is gone")?;
        // SAFETY: kill(2) of the VMM we started (or its jailed child).
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) } != 0 {
            return Err(format!(
                "cannot signal the VMM: {}",
                std::io::Error::last_os_error()
            ));
        }
        let patience = deadline
            .saturating_duration_since(Instant::now())
            .min(SAVE_TIMEOUT);
        let status = self
            .wait_or_kill(patience)
            .await
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!(
                "the VMM ended with {status}: {}",
                self.vmm_stderr()
            ));
        }
        maker.publish(&self.console_log())
    }

    /// Connects to the agent of a VM restored from a template (started
    /// here unless `launched`), and makes the VM its own machine: host
    /// entropy and time before anything else runs in it. A restore that
    /// fails is logged, the template removed, and the VM booted cold.
    async fn restored_or_cold(
        &mut self,
        dir: PathBuf,
        launched: bool,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<AgentClient, VmError> {
        let restored = async {
            if !launched {
                self.clear_sockets()?;
                let spec = self.spec.clone();
                let restore = Launch::Restore {
                    dir: dir.clone(),
                    cid: launch::fresh_cid().map_err(VmError::HostEntropy)?,
                };
                self.launch(&spec, &restore)?;
            }
            self.connect_restored(deadline, timeout).await
        };
        match restored.await {
            Ok(agent) => return Ok(agent),
            // The agent of a VM that still runs did not answer in time:
            // that is the VM's failure, not the template's.
            Err(e) if self.try_wait()?.is_none() => return Err(e),
            Err(e) => {
                self.note(&format!(
                    "the restore from the template {} failed ({e}); removing it and booting cold",
                    dir.display()
                ));
                template::discard(&dir);
                self.relaunch_cold()?;
            }
        }
        self.wait_ready(deadline, timeout).await?;
        self.attach_agent().await
    }

    async fn connect_restored(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<AgentClient, VmError> {
        let too_late = |vm: &MicroVm, what: &str| VmError::AgentTimeout {
            timeout,
            last_error: format!("the restored VM's {what}"),
            console: vm.console_tail(),
        };
        // The VMM binds its vsock socket once the VM is restored.
        loop {
            self.check_running()?;
            if self.restored_socket_ready()? {
                break;
            }
            if Instant::now() >= deadline {
                return Err(too_late(self, "vsock socket never appeared"));
            }
            tokio::time::sleep(SOCKET_POLL).await;
        }
        // The agent answers once the guest has taken the new CID (the VMM
        // holds connections until then).
        let remaining = deadline.saturating_duration_since(Instant::now());
        let agent = tokio::time::timeout(remaining, AgentClient::connect(&self.vsock_socket()))
            .await
            .map_err(|_| too_late(self, "agent did not answer"))??;
        let mut entropy = vec![0u8; 2 * MIN_RESEED_BYTES];
        crate::host_random::fill(&mut entropy).map_err(VmError::HostEntropy)?;
        let realtime_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // The template's cards had placeholder MACs: each gets its tap's.
        let cards = self
            .taps
            .iter()
            .enumerate()
            .map(|(index, tap)| CardMac {
                from: template::placeholder_mac(index),
                to: tap.mac,
            })
            .collect();
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(
            remaining,
            agent.call(RequestBody::Reseed {
                entropy,
                realtime_ns,
                cards,
            }),
        )
        .await
        .map_err(|_| too_late(self, "agent did not take the host's entropy and MACs"))??;
        // The restored agent announces nothing: the readiness port goes.
        self.ready = None;
        let _ = fs::remove_file(self.ready_socket());
        Ok(agent)
    }

    /// Whether the restored VMM's vsock socket is there for the host
    /// (jailed, once it is linked out of the jail) and listening: the
    /// file appears at bind(2), a moment before listen(2), and a connect
    /// in between is refused.
    fn restored_socket_ready(&self) -> Result<bool, VmError> {
        if !self.jailed {
            if !self.vsock_socket().exists() {
                return Ok(false);
            }
        } else {
            match jail_link::link_socket(&self.vmm_vsock_socket(), &self.vsock_socket()) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(source) => {
                    return Err(VmError::VsockLink {
                        path: self.vmm_vsock_socket(),
                        source,
                    })
                }
            }
        }
        // A probe the VMM drops unanswered: it never sends a CONNECT line.
        match crate::unix_socket::connect(&self.vsock_socket()) {
            Ok(_probe) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(false),
            Err(e) => Err(VmError::from(crate::agent_client::ClientError::Connect {
                path: self.vsock_socket(),
                port: runvm_agent_api::CONTROL_PORT,
                reason: e.to_string(),
            })),
        }
    }

    /// After a failed save or restore (the VMM has exited): a fresh share
    /// and a cold boot in the same directory.
    fn relaunch_cold(&mut self) -> Result<(), VmError> {
        if self.try_wait()?.is_none() {
            self.kill()?;
        }
        // virtiofsd serves one VMM connection: a new one for the new VMM.
        drop(self.share.take());
        let _ = fs::remove_dir(self.share_dir());
        let _ = fs::remove_file(self.virtiofs_socket());
        self.start_share()?;
        self.clear_sockets()?;
        let spec = self.spec.clone();
        self.launch(&spec, &Launch::Cold)
    }
}
