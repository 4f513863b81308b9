//! The runc command line, a front end of [`crate::container`]. Each
//! subcommand's arguments live in a module of their own, which parses
//! them into the library's options and prints what it returns; this one
//! holds the global options and reports errors the way runc does (on
//! stderr and, with `--log`, in the log file as text or JSON; exit
//! status 1).

pub mod exec;
pub mod lifecycle;
pub mod query;
pub mod resources;
pub mod spec;
pub mod templates;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::commands::vm_run::{self, VmRunArgs};
use crate::container::{self, ContainerError, Context, Logger};
use crate::monitor::{self, MonitorArgs};
use crate::state::DEFAULT_ROOT;

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

impl From<ContainerError> for CliError {
    fn from(e: ContainerError) -> CliError {
        CliError::new(e.to_string())
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

impl From<LogFormat> for container::LogFormat {
    fn from(format: LogFormat) -> container::LogFormat {
        match format {
            LogFormat::Text => container::LogFormat::Text,
            LogFormat::Json => container::LogFormat::Json,
        }
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
    let logger = Logger::new(cli.log.clone(), cli.log_format.into(), cli.debug);
    let context = Context::new(&cli.root, logger, cli.systemd_cgroup);
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
