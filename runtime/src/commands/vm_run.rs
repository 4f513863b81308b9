//! `runvm vm-run`: boot a microVM, run one command in it with the caller's
//! stdio, power the VM off, exit with the command's status. A way to try
//! the VMM, the agent and the host/agent channel by hand.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use runvm_agent_api::RequestBody;
use tokio::signal::unix::{signal, SignalKind};

use crate::agent_client::{AgentClient, ClientError};
use crate::guest_process::{self, HostStdio, ProcessSpec, Relay};
use crate::terminal::{self, RawMode};
use crate::vm::{MicroVm, VmError, VmSpec};

/// Exit status when runvm itself fails (as `podman run` and `docker run`
/// use it), so it cannot be mistaken for the command's own status.
const RUNVM_FAILED: u8 = 125;
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(clap::Args, Debug)]
pub struct VmRunArgs {
    /// The guest kernel, an uncompressed vmlinux.
    #[arg(long, env = "RUNVM_KERNEL")]
    kernel: PathBuf,
    /// The guest image: the agent binary itself (runvm-agent, which the
    /// VMM maps as the guest's init), or an image holding it as /init: an
    /// ext4 root disk (rootfs.ext4) or a cpio initramfs.
    #[arg(long, visible_alias = "initrd", env = "RUNVM_IMAGE")]
    image: PathBuf,
    /// The VMM; by default runvm-vmm next to this program.
    #[arg(long, env = "RUNVM_VMM")]
    vmm: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u32,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Pass this program's stdin to the command (otherwise it gets /dev/null).
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a terminal; this program's stdin must be one.
    #[arg(short, long)]
    tty: bool,
    /// Add NAME=value to the command's environment (PATH is set by default).
    #[arg(short, long = "env", value_name = "NAME=value")]
    env: Vec<String>,
    /// Working directory in the guest.
    #[arg(long)]
    cwd: Option<String>,
    /// UID[:GID] to run as in the guest.
    #[arg(short, long)]
    user: Option<String>,
    /// Seconds the guest may take to boot before runvm gives up.
    #[arg(long, default_value_t = 120)]
    boot_timeout: u64,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Agent(#[from] ClientError),
    #[error("cannot set up the terminal: {0}")]
    Terminal(std::io::Error),
}

pub fn main(args: VmRunArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("runvm: cannot start the async runtime: {e}");
            return ExitCode::from(RUNVM_FAILED);
        }
    };
    let result = runtime.block_on(run(args));
    // A blocking read of stdin may still be pending: do not wait for it.
    runtime.shutdown_background();
    match result {
        // A shell's view of the status: 0..=255, or 128+signal.
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(RUNVM_FAILED)),
        Err(e) => {
            eprintln!("runvm: {e}");
            ExitCode::from(RUNVM_FAILED)
        }
    }
}

async fn run(args: VmRunArgs) -> Result<i32, RunError> {
    let spec = process_spec(&args)?;
    let vm_spec = VmSpec {
        vmm: match &args.vmm {
            Some(vmm) => vmm.clone(),
            None => sibling_vmm(),
        },
        kernel: args.kernel.clone(),
        image: args.image.clone(),
        memory_mib: args.memory,
        vcpus: args.vcpus,
        virtiofsd: None,
    };
    if args.tty && !terminal::is_terminal(std::io::stdin().as_fd()) {
        return Err(RunError::Usage(
            "--tty needs a terminal on stdin; run without -t or from a terminal".into(),
        ));
    }
    let mut vm = MicroVm::boot(&vm_spec, &vm_dir())?;
    let agent = vm
        .connect_agent(Duration::from_secs(args.boot_timeout))
        .await?;

    let status = if args.tty {
        let stdin = std::io::stdin();
        let size = terminal::window_size(stdin.as_fd());
        let _raw = RawMode::enter(stdin.as_fd()).map_err(RunError::Terminal)?;
        let relay = guest_process::spawn_on_terminal(
            &agent,
            &spec,
            Box::new(tokio::io::stdin()),
            Box::new(tokio::io::stdout()),
            size,
        )
        .await?;
        finish_forwarding_signals(&agent, relay, true).await?
    } else {
        let stdio = HostStdio {
            stdin: args
                .interactive
                .then(|| Box::new(tokio::io::stdin()) as guest_process::HostReader),
            stdout: Some(Box::new(tokio::io::stdout())),
            stderr: Some(Box::new(tokio::io::stderr())),
        };
        let relay = guest_process::spawn(&agent, &spec, stdio).await?;
        finish_forwarding_signals(&agent, relay, false).await?
    };
    let vmm_status = vm.shutdown(&agent).await?;
    if !vmm_status.success() {
        eprintln!("runvm: warning: the VMM exited with {vmm_status} after powering off");
    }
    Ok(status.shell_code())
}

/// Waits for the process while passing on the signals a user sends to
/// runvm (as `docker run` does), and window size changes on a terminal.
async fn finish_forwarding_signals(
    agent: &AgentClient,
    relay: Relay,
    terminal: bool,
) -> Result<runvm_agent_api::ExitStatus, RunError> {
    let process = relay.started.process;
    let listen = |kind| signal(kind).map_err(RunError::Terminal);
    let mut interrupt = listen(SignalKind::interrupt())?;
    let mut terminate = listen(SignalKind::terminate())?;
    let mut hangup = listen(SignalKind::hangup())?;
    let mut window_change = listen(SignalKind::window_change())?;
    // The process may end just as a signal arrives; its status follows.
    let forward = |signal: i32| async move {
        let _ = agent.call(RequestBody::Signal { process, signal }).await;
    };
    let finish = relay.finish(agent);
    tokio::pin!(finish);
    loop {
        tokio::select! {
            status = &mut finish => return Ok(status?),
            Some(()) = interrupt.recv() => forward(libc::SIGINT).await,
            Some(()) = terminate.recv() => forward(libc::SIGTERM).await,
            Some(()) = hangup.recv() => forward(libc::SIGHUP).await,
            Some(()) = window_change.recv(), if terminal => {
                if let Some((rows, columns)) = terminal::window_size(std::io::stdin().as_fd()) {
                    let resize = RequestBody::ResizeTerminal { process, rows, columns };
                    let _ = agent.call(resize).await;
                }
            }
        }
    }
}

fn process_spec(args: &VmRunArgs) -> Result<ProcessSpec, RunError> {
    let mut env = vec![DEFAULT_PATH.to_owned()];
    if args.tty {
        env.push("TERM=xterm".to_owned());
    }
    for entry in &args.env {
        let Some((name, _)) = entry.split_once('=') else {
            return Err(RunError::Usage(format!(
                "--env {entry:?} is not NAME=value"
            )));
        };
        if name.is_empty() {
            return Err(RunError::Usage(format!("--env {entry:?} has no name")));
        }
        // A later entry for the same name replaces the earlier one.
        env.retain(|existing| existing.split_once('=').map(|(n, _)| n) != Some(name));
        env.push(entry.clone());
    }
    let (uid, gid) = match &args.user {
        None => (0, 0),
        Some(user) => parse_user(user)?,
    };
    Ok(ProcessSpec {
        argv: args.command.clone(),
        env,
        cwd: args.cwd.clone(),
        uid,
        gid,
    })
}

/// `UID[:GID]`, numeric (the guest image has no user database).
fn parse_user(user: &str) -> Result<(u32, u32), RunError> {
    let bad = || RunError::Usage(format!("--user {user:?} is not UID[:GID] (numbers)"));
    let (uid, gid) = match user.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (user, None),
    };
    let uid: u32 = uid.parse().map_err(|_| bad())?;
    let gid: u32 = match gid {
        Some(gid) => gid.parse().map_err(|_| bad())?,
        None => uid,
    };
    Ok((uid, gid))
}

/// `runvm-vmm` installed beside this program.
fn sibling_vmm() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("runvm-vmm")))
        .unwrap_or_else(|| PathBuf::from("runvm-vmm"))
}

/// A fresh private directory for the VM's sockets and console log.
fn vm_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::env::temp_dir().join(format!("runvm-{}-{nanos:08x}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        args: VmRunArgs,
    }

    fn args(argv: &[&str]) -> VmRunArgs {
        let mut full = vec!["vm-run", "--kernel", "k", "--initrd", "i"];
        full.extend_from_slice(argv);
        Harness::parse_from(full).args
    }

    #[test]
    fn env_entries_replace_defaults_and_are_checked() {
        let spec =
            process_spec(&args(&["-e", "A=1", "--env", "PATH=/bin", "--", "sh"])).expect("valid");
        assert_eq!(spec.env, ["A=1", "PATH=/bin"]);
        assert_eq!(spec.argv, ["sh"]);
        assert!(process_spec(&args(&["-e", "NOVALUE", "--", "sh"])).is_err());
        assert!(process_spec(&args(&["-e", "=x", "--", "sh"])).is_err());
    }

    #[test]
    fn users_are_numeric() {
        assert_eq!(parse_user("1000").ok(), Some((1000, 1000)));
        assert_eq!(parse_user("1000:5").ok(), Some((1000, 5)));
        assert!(parse_user("nobody").is_err());
        assert!(parse_user("1:").is_err());
    }

    #[test]
    fn the_command_comes_after_the_double_dash() {
        let a = args(&["--memory", "256", "--", "echo", "--memory"]);
        assert_eq!(a.memory, 256);
        assert_eq!(a.command, ["echo", "--memory"]);
    }
}
