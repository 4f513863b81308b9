//! create, start, run, kill, delete, state: the OCI lifecycle.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::agent_client::AgentClient;
use crate::bundle::Bundle;
use crate::container_client::ContainerClient;
use crate::deadlines;
use crate::hooks::{self, HookPoint};
use crate::host_cgroup::{self, HostCgroup, Layout, Limits};
use crate::monitor::{self, MonitorArgs, Report};
use crate::network::{self, NetworkNamespace};
use crate::sandbox;
use crate::state::{self, Container, HostProcess, Record, StateError, Status};

use super::{block_on, hand_over, CliError, CliResult, Context};

/// How long `delete` waits for killed processes to be gone.
const KILL_PATIENCE: Duration = Duration::from_secs(10);

#[derive(clap::Args, Debug)]
pub struct IdArgs {
    pub id: String,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The bundle directory (config.json and the rootfs).
    #[arg(short, long, default_value = ".")]
    pub bundle: PathBuf,
    /// Where to send the master of the container's pty.
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Write the pid of the container's host process here.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Accepted for runc compatibility (the guest decides).
    #[arg(long)]
    pub no_pivot: bool,
    /// Accepted for runc compatibility.
    #[arg(long)]
    pub no_new_keyring: bool,
    /// Accepted for runc compatibility: extra descriptors cannot reach a
    /// guest.
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub create: CreateArgs,
    /// Do not wait for the container: leave it running.
    #[arg(short, long)]
    pub detach: bool,
    /// Keep the container after it exits (foreground runs delete it).
    #[arg(long)]
    pub keep: bool,
}

#[derive(clap::Args, Debug)]
pub struct KillArgs {
    /// Signal every process of the container.
    #[arg(short, long)]
    pub all: bool,
    pub id: String,
    /// A name (TERM, SIGTERM) or number.
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
}

#[derive(clap::Args, Debug)]
pub struct DeleteArgs {
    /// Kill a running container first; no error if it does not exist.
    #[arg(short, long)]
    pub force: bool,
    pub id: String,
}

fn new_record(id: &str, bundle: &Bundle) -> CliResult<Record> {
    let annotations = bundle
        .spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    Ok(Record {
        id: id.to_owned(),
        bundle: bundle.dir.clone(),
        rootfs: bundle.rootfs()?,
        created: state::rfc3339_now(),
        owner: String::new(),
        annotations,
        status: Status::Creating,
        monitor: None,
        helpers: Vec::new(),
        cgroup: None,
        exit_status: None,
        hooks: bundle.hooks(),
        sandbox: None,
        vm: None,
        netns: None,
    })
}

/// The creating part of `create` and `run`, with the id claimed; on error
/// the caller removes what is left.
fn create_claimed(
    context: &Context,
    container: &Container,
    args: &CreateArgs,
    bundle: &Bundle,
    foreground_terminal: bool,
) -> CliResult<std::process::Child> {
    let netns = match network::network_namespace(&bundle.spec) {
        NetworkNamespace::Host => return Err(CliError::new(network::HOST_NETWORK_REFUSED)),
        NetworkNamespace::New => None,
        NetworkNamespace::Path(path) => Some(absolute(&path)),
    };
    let mut record = new_record(&args.id, bundle)?;
    let guest_memory_mib = sandbox::place(&context.root()?, &mut record, &bundle.spec)?;
    // The VM owner carries the namespace's interfaces into its VM (its
    // monitor attaches them); members use the VM's.
    if record.sandbox.is_none() {
        record.netns = netns;
    }
    container.save(&record)?;
    let terminal = bundle.terminal();
    if !terminal && args.console_socket.is_some() {
        return Err(CliError::new(
            "cannot use console socket if runc will not allocate tty",
        ));
    }
    if terminal && args.console_socket.is_none() && !foreground_terminal {
        return Err(CliError::new(
            "cannot allocate tty if runc will detach without setting console socket",
        ));
    }
    let limits = Limits::for_vm(&bundle.spec, guest_memory_mib);
    let cgroup = make_cgroup(context, &args.id, bundle, &limits)?;
    record.cgroup = Some(cgroup.clone());
    container.save(&record)?;
    let monitor_args = MonitorArgs {
        id: args.id.clone(),
        exec_process: None,
        console_socket: args.console_socket.as_deref().map(absolute),
        own_terminal: foreground_terminal && args.console_socket.is_none(),
        sync_fd: None,
    };
    let (launched, report) = monitor::spawn(
        &context.global_args,
        &monitor_args,
        !monitor_args.own_terminal,
        ("create", deadlines::CREATE_REPORT),
    )?;
    let helpers = match report {
        Report::Ready { helpers } => helpers,
        Report::Error(message) => {
            launched.abort();
            return Err(CliError::new(message));
        }
    };
    // Once the VM is up: a CPU quota need not slow its boot down.
    if let Err(e) = cgroup.set_cpu(&limits.cpu) {
        launched.abort();
        return Err(e.into());
    }
    record.monitor = HostProcess::of(launched.pid() as i32);
    record.helpers = helpers;
    record.status = Status::Created;
    container.save(&record)?;
    let hooks = record.hooks.clone();
    let mut hook_state = record.oci_state();
    hook_state["status"] = "creating".into();
    hand_over(launched, args.pid_file.as_deref(), || {
        for point in [
            HookPoint::Prestart,
            HookPoint::CreateRuntime,
            HookPoint::CreateContainer,
        ] {
            hooks::run(point, hooks.as_ref(), &hook_state)?;
        }
        Ok(())
    })
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// The container's host cgroup, made with its memory limit (see
/// [`crate::host_cgroup`]); undone if the limit cannot be set.
fn make_cgroup(
    context: &Context,
    id: &str,
    bundle: &Bundle,
    limits: &Limits,
) -> CliResult<HostCgroup> {
    let cgroups_path = bundle
        .spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.cgroups_path().as_deref());
    let inner = host_cgroup::path::resolve(cgroups_path, id, context.systemd_cgroup)?;
    let cgroup = HostCgroup::create(&Layout::current()?, &inner)?;
    if let Err(e) = cgroup.set_memory(limits.memory) {
        let _ = cgroup.remove();
        return Err(e.into());
    }
    Ok(cgroup)
}

/// Claims the id, creates the container; the monitor is returned.
fn create_container(
    context: &Context,
    args: &CreateArgs,
    foreground_terminal: bool,
) -> CliResult<(std::process::Child, Container)> {
    let root = context.root()?;
    let container = root.create(&args.id)?;
    let result = Bundle::load(&args.bundle)
        .map_err(CliError::from)
        .and_then(|bundle| create_claimed(context, &container, args, &bundle, foreground_terminal));
    match result {
        Ok(child) => Ok((child, container)),
        Err(e) => {
            // The monitor undid the VM, or its part in the sandbox's, when
            // it failed or was aborted; a monitor that was killed could not.
            if let Ok(record) = container.load() {
                let _ = leave_sandbox(context, &record);
                detach_network(context, &record);
                if let Some(cgroup) = record.cgroup {
                    let _ = cgroup.remove();
                }
            }
            let _ = container.remove();
            Err(e)
        }
    }
}

pub fn create(context: &Context, args: CreateArgs) -> CliResult<u8> {
    create_container(context, &args, false)?;
    Ok(0)
}

pub fn start(context: &Context, args: IdArgs) -> CliResult<u8> {
    let container = context.root()?.open_container(&args.id)?;
    start_locked(&container)?;
    Ok(0)
}

fn start_locked(container: &Container) -> CliResult {
    let mut record = container.load()?;
    match record.status() {
        Status::Created => {}
        Status::Stopped => return Err(CliError::new("cannot start a container that has stopped")),
        Status::Running | Status::Paused => {
            return Err(CliError::new("cannot start an already running container"))
        }
        Status::Creating => {
            return Err(CliError::new(
                "cannot start a container that is still being created",
            ))
        }
    }
    let hooks = record.hooks.clone();
    hooks::run(
        HookPoint::StartContainer,
        hooks.as_ref(),
        &record.oci_state(),
    )?;
    let socket = container.home(&record).vsock_socket();
    let id = container.id().to_owned();
    block_on(deadlines::within("start", deadlines::START, async {
        let agent = AgentClient::connect(&socket).await?;
        ContainerClient::new(&agent).start(&id).await
    }))??;
    record.status = Status::Running;
    container.save(&record)?;
    hooks::run(HookPoint::Poststart, hooks.as_ref(), &record.oci_state())?;
    Ok(())
}

pub fn run(context: &Context, args: RunArgs) -> CliResult<u8> {
    let foreground = !args.detach;
    let (mut child, container) = create_container(context, &args.create, foreground)?;
    if let Err(e) = start_locked(&container) {
        drop(container);
        let _ = force_delete(context, &args.create.id);
        return Err(e);
    }
    drop(container);
    if args.detach {
        return Ok(0);
    }
    // The monitor relays our stdio and takes the signals sent to it; ours
    // are passed on to it while we wait.
    let code = wait_forwarding(&mut child)?;
    if !args.keep {
        let _ = delete_stopped(context, &args.create.id);
    }
    Ok(code)
}

/// Waits for a monitor (our child) while passing the usual terminal and
/// termination signals on to it; returns its exit status as a shell sees
/// it.
pub fn wait_forwarding(child: &mut std::process::Child) -> CliResult<u8> {
    let pid = child.id() as libc::pid_t;
    let forwarded = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGUSR2,
    ];
    let status = block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (sender, mut received) = tokio::sync::mpsc::unbounded_channel();
        for number in forwarded {
            if let Ok(mut stream) = signal(SignalKind::from_raw(number)) {
                let sender = sender.clone();
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        let _ = sender.send(number);
                    }
                });
            }
        }
        let waited = tokio::task::spawn_blocking(move || {
            let mut status = 0;
            // SAFETY: waitpid on our own child; the Child handle is not
            // waited on elsewhere.
            let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
            (rc, status)
        });
        tokio::pin!(waited);
        loop {
            tokio::select! {
                result = &mut waited => return result.unwrap_or((-1, 0)),
                Some(number) = received.recv() => {
                    // SAFETY: kill(2) on our own child.
                    unsafe { libc::kill(pid, number) };
                }
            }
        }
    })?;
    let (rc, raw) = status;
    if rc != pid {
        return Err(CliError::new("cannot wait for the container's monitor"));
    }
    let code = if libc::WIFEXITED(raw) {
        libc::WEXITSTATUS(raw)
    } else if libc::WIFSIGNALED(raw) {
        128 + libc::WTERMSIG(raw)
    } else {
        255
    };
    Ok(u8::try_from(code).unwrap_or(255))
}

pub fn kill(context: &Context, args: KillArgs) -> CliResult<u8> {
    let signal = parse_signal(&args.signal)?;
    let container = context.root()?.open_container(&args.id)?;
    let record = container.load()?;
    if !matches!(
        record.status(),
        Status::Created | Status::Running | Status::Paused
    ) {
        return Err(CliError::new("container not running"));
    }
    let socket = container.home(&record).vsock_socket();
    let id = args.id.clone();
    let sent = block_on(deadlines::within("kill", deadlines::KILL, async {
        let agent = AgentClient::connect(&socket).await?;
        ContainerClient::new(&agent)
            .signal(&id, signal, args.all)
            .await
    }))?;
    if let Err(e) = sent {
        // A guest that no longer answers still goes with SIGKILL: its
        // monitor, and its VMM and virtiofsd, which may be stopped or
        // wedged where their parent's death cannot end them.
        if signal == libc::SIGKILL {
            if let Some(monitor) = record.monitor.filter(HostProcess::is_alive) {
                for process in std::iter::once(&monitor).chain(&record.helpers) {
                    if process.is_alive() {
                        // SAFETY: kill(2); the pid was matched with its
                        // start time.
                        unsafe { libc::kill(process.pid, libc::SIGKILL) };
                    }
                }
                return Ok(0);
            }
        }
        return Err(e.into());
    }
    Ok(0)
}

/// A signal by name (`TERM`, `SIGTERM`, any case) or number.
pub fn parse_signal(text: &str) -> CliResult<i32> {
    if let Ok(number) = text.parse::<i32>() {
        if (1..=64).contains(&number) {
            return Ok(number);
        }
        return Err(CliError::new(format!("invalid signal: {text}")));
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let number = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => return Err(CliError::new(format!("unknown signal {text:?}"))),
    };
    Ok(number)
}

pub fn delete(context: &Context, args: DeleteArgs) -> CliResult<u8> {
    if args.force {
        force_delete(context, &args.id)?;
        return Ok(0);
    }
    let container = context.root()?.open_container(&args.id)?;
    let record = container.load()?;
    match record.status() {
        Status::Stopped | Status::Created | Status::Creating => {}
        status => {
            return Err(CliError::new(format!(
                "cannot delete container {} that is not stopped: {status}",
                args.id
            )))
        }
    }
    remove(context, container, &record)?;
    Ok(0)
}

/// `delete --force`: whatever state it is in, the container goes; one
/// that does not exist is no error.
fn force_delete(context: &Context, id: &str) -> CliResult {
    let container = match context.root()?.open_container(id) {
        Ok(container) => container,
        Err(StateError::NotFound) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let record = match container.load() {
        Ok(record) => record,
        // Unreadable state: remove what is there.
        Err(StateError::Corrupt { .. }) => {
            container.remove()?;
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    remove(context, container, &record)
}

/// After a foreground run: the monitor has ended; remove the rest.
fn delete_stopped(context: &Context, id: &str) -> CliResult {
    let container = context.root()?.open_container(id)?;
    let record = container.load()?;
    remove(context, container, &record)
}

/// Ends the container's monitor, VMM and virtiofsd (SIGKILL: the guest
/// holds nothing the host needs back), removes its directory and runs the
/// poststop hooks.
fn remove(context: &Context, container: Container, record: &Record) -> CliResult {
    if let Err(e) = leave_sandbox(context, record) {
        context.logger.warn(&e.message);
    }
    stop_members(context, record);
    let processes: Vec<HostProcess> = record
        .monitor
        .iter()
        .chain(record.helpers.iter())
        .copied()
        .filter(HostProcess::is_alive)
        .collect();
    for process in &processes {
        // SAFETY: kill(2) on a process matched with its start time.
        unsafe { libc::kill(process.pid, libc::SIGKILL) };
    }
    let deadline = Instant::now() + KILL_PATIENCE;
    while processes.iter().any(HostProcess::is_alive) {
        if Instant::now() >= deadline {
            return Err(CliError::new(format!(
                "container {}: its processes did not end after SIGKILL",
                container.id()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    detach_network(context, record);
    // The share's mounts lived in virtiofsd's private mount namespace and
    // went with it; nothing under the directory can be a mount in ours,
    // which is checked before anything is removed.
    let mounted = crate::share::mounts_below(container.dir());
    if !mounted.is_empty() {
        return Err(CliError::new(format!(
            "container {}: refusing to remove its directory, mounts remain: {mounted:?}",
            container.id()
        )));
    }
    // What is left in the cgroup (exec monitors on their way out) goes
    // with it; the state stays until it is gone, so a later delete can
    // retry.
    if let Some(cgroup) = &record.cgroup {
        cgroup.remove()?;
    }
    let mut stopped = record.clone();
    stopped.status = Status::Stopped;
    let hook_state = stopped.oci_state();
    container.remove()?;
    if let Err(e) = hooks::run(HookPoint::Poststop, record.hooks.as_ref(), &hook_state) {
        context.logger.warn(&e.to_string());
    }
    Ok(())
}

/// Removes the taps and filters runvm added in the caller's network
/// namespace (none, or a namespace that is gone, is no error). A failure
/// is reported, not fatal: the namespace is the caller's, and what is left
/// in it goes with it.
fn detach_network(context: &Context, record: &Record) {
    if let Some(netns) = &record.netns {
        if let Err(e) = network::detach(netns) {
            context
                .logger
                .warn(&format!("container {}: {e}", record.id));
        }
    }
}

/// A member leaves its sandbox's VM (see [`sandbox::leave`]).
fn leave_sandbox(context: &Context, record: &Record) -> CliResult {
    block_on(sandbox::leave(&context.root()?, record))??;
    Ok(())
}

/// A sandbox about to be killed stops its members first.
fn stop_members(context: &Context, record: &Record) {
    let stopped = context
        .root()
        .and_then(|root| block_on(sandbox::stop_members(&root, record)));
    match stopped {
        Ok(Err(e)) => context.logger.warn(&e.to_string()),
        Err(e) => context.logger.warn(&e.message),
        Ok(Ok(())) => {}
    }
}

pub fn state(context: &Context, args: IdArgs) -> CliResult<u8> {
    let record = state::peek(&context.root()?, &args.id)?;
    let text = serde_json::to_string_pretty(&record.oci_state())
        .map_err(|e| CliError::new(e.to_string()))?;
    println!("{text}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("9").ok(), Some(9));
        assert_eq!(parse_signal("KILL").ok(), Some(9));
        assert_eq!(parse_signal("sigterm").ok(), Some(15));
        assert_eq!(parse_signal("SIGWINCH").ok(), Some(28));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").is_err());
    }
}
