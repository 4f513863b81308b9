//! The runc command line. Each subcommand lives in a module of its own;
//! this one holds the global options, error reporting and logging the way
//! runc does them (errors on stderr and, with `--log`, in the log file as
//! text or JSON; exit status 1).

pub mod exec;
pub mod lifecycle;
pub mod query;
pub mod resources;
pub mod spec;
pub mod templates;

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::agent_client::ClientError;
use crate::bundle::BundleError;
use crate::commands::vm_run::{self, VmRunArgs};
use crate::hooks::HookError;
use crate::monitor::{self, MonitorArgs};
use crate::state::{StateError, StateRoot, DEFAULT_ROOT};

#[derive(Parser, Debug)]
#[command(
    name = "runvm",
    about = "Runs OCI containers in KVM microVMs, with runc's command line",
    disable_version_flag = true,
    subcommand_required = false,
    arg_required_else_help = true
)]
pub struct Cli {
    /// Print the version (in runc's format).
    #[arg(short = 'v', long)]
    pub version: bool,
    /// Where container state is kept.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    pub root: PathBuf,
    /// Also write errors and debug messages to this file.
    #[arg(long, global = true)]
    pub log: Option<PathBuf>,
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log debug messages.
    #[arg(long, global = true)]
    pub debug: bool,
    /// linux.cgroupsPath is systemd's `slice:prefix:name`: the host cgroup
    /// is that scope's directory (runvm makes it; systemd is not asked).
    #[arg(long, global = true)]
    pub systemd_cgroup: bool,
    /// Accepted for runc compatibility and ignored.
    #[arg(long, global = true, value_name = "PATH")]
    pub criu: Option<PathBuf>,
    /// Accepted for runc compatibility and ignored (also `spec --rootless`).
    #[arg(long, global = true, value_name = "true|false|auto", num_args = 0..=1, default_missing_value = "true")]
    pub rootless: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a container (its microVM boots; the process waits for start).
    Create(lifecycle::CreateArgs),
    /// Start the process of a created container.
    Start(lifecycle::IdArgs),
    /// Create and start a container.
    Run(lifecycle::RunArgs),
    /// Send a signal to the container's init (or every process).
    Kill(lifecycle::KillArgs),
    /// Delete a container and everything runvm made for it.
    Delete(lifecycle::DeleteArgs),
    /// Print the state of a container as JSON.
    State(lifecycle::IdArgs),
    /// List containers.
    List(query::ListArgs),
    /// List the processes of a container.
    Ps(query::PsArgs),
    /// Print stats and OOM events of a container.
    Events(query::EventsArgs),
    /// Run a process in a running container.
    Exec(exec::ExecArgs),
    /// Freeze every process of a container.
    Pause(lifecycle::IdArgs),
    /// Thaw a paused container.
    Resume(lifecycle::IdArgs),
    /// Change a container's resource limits.
    Update(resources::UpdateArgs),
    /// Write a starter config.json.
    Spec(spec::SpecArgs),
    /// Print what this runtime supports, as JSON.
    Features,
    /// Boot a microVM and run one command in it (no container).
    VmRun(VmRunArgs),
    /// List or remove VM templates (warm starts; RUNVM_COLD_BOOT=1 boots
    /// every VM cold).
    Template(templates::TemplateArgs),
    /// The host process that stands for a container process (internal).
    #[command(hide = true)]
    Monitor(MonitorArgs),
}

/// A failed command: what to print, and the exit status.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    pub code: u8,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            code: 1,
        }
    }
}

macro_rules! cli_error_from {
    ($($source:ty),*) => {
        $(impl From<$source> for CliError {
            fn from(e: $source) -> CliError {
                CliError::new(e.to_string())
            }
        })*
    };
}
cli_error_from!(
    StateError,
    BundleError,
    HookError,
    ClientError,
    std::io::Error,
    crate::vm::VmError,
    crate::monitor::MonitorError,
    crate::host_cgroup::CgroupError,
    crate::sandbox::SandboxError
);

pub type CliResult<T = ()> = Result<T, CliError>;

/// Logging as runc's `--log` and `--log-format` ask.
#[derive(Clone, Debug)]
pub struct Logger {
    file: Option<PathBuf>,
    format: LogFormat,
    debug: bool,
}

impl Logger {
    fn write(&self, level: &str, message: &str) {
        let Some(path) = &self.file else {
            return;
        };
        let time = crate::state::rfc3339_now();
        let line = match self.format {
            LogFormat::Json => {
                serde_json::json!({"level": level, "msg": message, "time": time}).to_string()
            }
            LogFormat::Text => format!("time={time:?} level={level} msg={message:?}"),
        };
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
    }

    pub fn error(&self, message: &str) {
        self.write("error", message);
    }

    pub fn warn(&self, message: &str) {
        self.write("warning", message);
        if self.file.is_none() {
            eprintln!("runvm: warning: {message}");
        }
    }

    pub fn debug(&self, message: &str) {
        if self.debug {
            self.write("debug", message);
        }
    }
}

/// What every subcommand gets: the state root, the logger, and the
/// global options to pass on to a monitor.
pub struct Context {
    pub root_dir: PathBuf,
    pub logger: Logger,
    /// `--systemd-cgroup`.
    pub systemd_cgroup: bool,
    pub global_args: Vec<OsString>,
}

impl Context {
    pub fn root(&self) -> CliResult<StateRoot> {
        Ok(StateRoot::open(&self.root_dir)?)
    }
}

pub fn main() -> ExitCode {
    close_inherited_on_exec();
    let cli = Cli::parse();
    let Some(command) = cli.command else {
        // `--version` (clap asks for help when there is nothing at all).
        println!(
            "runvm version {}\nspec: {}",
            env!("CARGO_PKG_VERSION"),
            oci_spec::runtime::VERSION
        );
        return ExitCode::SUCCESS;
    };
    let logger = Logger {
        file: cli.log.clone(),
        format: cli.log_format,
        debug: cli.debug,
    };
    let mut global_args: Vec<OsString> = vec!["--root".into(), cli.root.clone().into()];
    if let Some(log) = &cli.log {
        global_args.push("--log".into());
        global_args.push(absolute(log).into());
        global_args.push("--log-format".into());
        global_args.push(
            match cli.log_format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }
            .into(),
        );
    }
    if cli.debug {
        global_args.push("--debug".into());
    }
    let context = Context {
        root_dir: absolute(&cli.root),
        logger,
        systemd_cgroup: cli.systemd_cgroup,
        global_args,
    };
    if matches!(
        command,
        Command::State(_)
            | Command::List(_)
            | Command::Ps(_)
            | Command::Events(_)
            | Command::Spec(_)
            | Command::Features
    ) {
        // Commands that only print end quietly when their reader goes
        // away (`runvm state ID | grep -q running`), as runc does, instead
        // of panicking on EPIPE. Not the ones that relay a container's
        // stdio, which must see the error and carry on.
        // SAFETY: signal(2) on our own disposition, before any thread.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match command {
        Command::Create(args) => lifecycle::create(&context, args),
        Command::Start(args) => lifecycle::start(&context, args),
        Command::Run(args) => lifecycle::run(&context, args),
        Command::Kill(args) => lifecycle::kill(&context, args),
        Command::Delete(args) => lifecycle::delete(&context, args),
        Command::State(args) => lifecycle::state(&context, args),
        Command::List(args) => query::list(&context, args),
        Command::Ps(args) => query::ps(&context, args),
        Command::Events(args) => query::events(&context, args),
        Command::Exec(args) => exec::exec(&context, args),
        Command::Pause(args) => resources::pause(&context, args, true),
        Command::Resume(args) => resources::pause(&context, args, false),
        Command::Update(args) => resources::update(&context, args),
        Command::Spec(args) => spec::spec(args),
        Command::Features => spec::features(),
        Command::VmRun(args) => return vm_run::main(args),
        Command::Template(args) => templates::template(args),
        Command::Monitor(args) => return monitor::main(&context.root_dir, args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            context.logger.error(&e.message);
            eprintln!("{}", e.message);
            ExitCode::from(e.code)
        }
    }
}

/// Marks every descriptor runvm inherited beyond stdio close-on-exec: its
/// caller's (a shim's, conmon's) must not reach the VMM or virtiofsd,
/// which runvm's monitor starts. What runvm hands on itself (a monitor's
/// sync socket) it unmarks in the child it is meant for.
fn close_inherited_on_exec() {
    // SAFETY: close_range(2) with CLOSE_RANGE_CLOEXEC only sets flags.
    let marked = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if marked == 0 {
        return;
    }
    // Kernels before 5.11: one by one.
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: fcntl(2) on a descriptor number; one that is closed by
        // now (the directory's own) only fails.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// A single-threaded async runtime for a command that talks to an agent.
pub fn block_on<F: std::future::Future>(future: F) -> CliResult<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the async runtime: {e}")))?;
    let output = runtime.block_on(future);
    runtime.shutdown_background();
    Ok(output)
}

/// After a monitor reported it is set up: `prepare` (hooks, say), then the
/// pid file, then the monitor goes on; if any of it fails the monitor is
/// told to undo everything.
pub fn hand_over(
    launched: monitor::Launched,
    pid_file: Option<&Path>,
    prepare: impl FnOnce() -> CliResult,
) -> CliResult<std::process::Child> {
    let pid = launched.pid() as i32;
    let ready = prepare().and_then(|()| match pid_file {
        Some(path) => write_pid_file(path, pid),
        None => Ok(()),
    });
    match ready {
        Ok(()) => Ok(launched.go()?),
        Err(e) => {
            launched.abort();
            Err(e)
        }
    }
}

/// A file's content, or stdin's for `-`.
pub fn read_input(path: &Path) -> CliResult<Vec<u8>> {
    if path.as_os_str() == "-" {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut text)?;
        return Ok(text);
    }
    std::fs::read(path).map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))
}

/// Writes `pid` to `path` the way runc does (no newline; written aside
/// and renamed, so a reader never sees a partial file).
pub fn write_pid_file(path: &Path, pid: i32) -> CliResult {
    let path = absolute(path);
    crate::state::write_atomically(&path, pid.to_string().as_bytes())?;
    Ok(())
}
