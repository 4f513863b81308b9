//! exec: another process in a running container. Like runc, the process
//! is `--process FILE` or the container's own process with the command
//! line's args, env, cwd, user and tty applied. Each exec'd process has a
//! monitor of its own (see [`crate::monitor`]): with `--detach` a new
//! process whose pid goes to `--pid-file`; otherwise this very process.

use std::path::PathBuf;

use oci_spec::runtime::{Process, User};

use crate::bundle::Bundle;
use crate::deadlines;
use crate::monitor::{self, MonitorArgs, Report};
use crate::state::{self, Status};

use super::{hand_over, read_input, write_pid_file, CliError, CliResult, Context};

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// An OCI process JSON file; overrides the other process options.
    #[arg(short, long)]
    pub process: Option<PathBuf>,
    #[arg(short, long)]
    pub tty: bool,
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    #[arg(long)]
    pub cwd: Option<String>,
    #[arg(short, long = "env", value_name = "NAME=value")]
    pub env: Vec<String>,
    /// UID[:GID].
    #[arg(short, long)]
    pub user: Option<String>,
    #[arg(short = 'g', long = "additional-gids")]
    pub additional_gids: Vec<u32>,
    /// Accepted for runc compatibility (the container's bounding set
    /// applies).
    #[arg(short, long = "cap")]
    pub caps: Vec<String>,
    #[arg(long)]
    pub no_new_privs: bool,
    #[arg(long, default_value_t = 0)]
    pub preserve_fds: u32,
    #[arg(long)]
    pub process_label: Option<String>,
    #[arg(long)]
    pub apparmor: Option<String>,
    #[arg(long)]
    pub ignore_paused: bool,
    pub id: String,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

fn read_process(path: &std::path::Path) -> CliResult<Process> {
    let text = read_input(path)?;
    serde_json::from_slice(&text)
        .map_err(|e| CliError::new(format!("{} is not an OCI process: {e}", path.display())))
}

/// The process from the command line, based on the container's own.
fn process_from_args(args: &ExecArgs, base: Process) -> CliResult<Process> {
    if args.command.is_empty() {
        return Err(CliError::new("exec: no command given (args or --process)"));
    }
    let mut process = base;
    process.set_args(Some(args.command.clone()));
    process.set_terminal(Some(args.tty));
    if let Some(cwd) = &args.cwd {
        process.set_cwd(cwd.into());
    }
    let mut env = process.env().clone().unwrap_or_default();
    for entry in &args.env {
        let Some((name, _)) = entry.split_once('=') else {
            return Err(CliError::new(format!("--env {entry:?} is not NAME=value")));
        };
        env.retain(|e| e.split_once('=').map(|(n, _)| n) != Some(name));
        env.push(entry.clone());
    }
    process.set_env(Some(env));
    if let Some(user) = &args.user {
        let bad = || CliError::new(format!("--user {user:?} is not UID[:GID] (numbers)"));
        let (uid, gid) = match user.split_once(':') {
            Some((uid, gid)) => (uid, Some(gid)),
            None => (user.as_str(), None),
        };
        let mut new_user = User::default();
        new_user.set_uid(uid.parse().map_err(|_| bad())?);
        new_user.set_gid(match gid {
            Some(gid) => gid.parse().map_err(|_| bad())?,
            None => 0,
        });
        process.set_user(new_user);
    }
    if !args.additional_gids.is_empty() {
        let mut user = process.user().clone();
        user.set_additional_gids(Some(args.additional_gids.clone()));
        process.set_user(user);
    }
    if args.no_new_privs {
        process.set_no_new_privileges(Some(true));
    }
    Ok(process)
}

pub fn exec(context: &Context, args: ExecArgs) -> CliResult<u8> {
    let root = context.root()?;
    let record = state::peek(&root, &args.id)?;
    match record.status() {
        Status::Running | Status::Created => {}
        Status::Paused if args.ignore_paused => {}
        Status::Paused => return Err(CliError::new("cannot exec in a paused container")),
        _ => return Err(CliError::new("cannot exec in a stopped container")),
    }
    let process = match &args.process {
        Some(path) => read_process(path)?,
        None => {
            let bundle = Bundle::load(&record.bundle)?;
            let base = bundle.spec.process().clone().unwrap_or_default();
            process_from_args(&args, base)?
        }
    };
    let terminal = process.terminal().unwrap_or(false);
    if !terminal && args.console_socket.is_some() {
        return Err(CliError::new(
            "cannot use console socket if runc will not allocate tty",
        ));
    }
    if terminal && args.detach && args.console_socket.is_none() {
        return Err(CliError::new(
            "cannot allocate tty if runc will detach without setting console socket",
        ));
    }
    // The monitor reads the process from a file in the container's
    // directory (private to root) and removes it.
    let file = root.dir().join(&args.id).join(format!(
        "exec-{}-{}.json",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    let text = serde_json::to_vec(&process).map_err(|e| CliError::new(e.to_string()))?;
    state::write_atomically(&file, &text)?;
    let monitor_args = MonitorArgs {
        id: args.id.clone(),
        exec_process: Some(file.clone()),
        console_socket: args
            .console_socket
            .as_deref()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_owned())),
        own_terminal: terminal && args.console_socket.is_none(),
        sync_fd: None,
    };
    if !args.detach {
        if let Some(pid_file) = &args.pid_file {
            write_pid_file(pid_file, std::process::id() as i32)?;
        }
        let code = monitor::run(root.dir(), monitor_args);
        return Ok(u8::try_from(code).unwrap_or(255));
    }
    let spawned = monitor::spawn(
        &context.global_args,
        &monitor_args,
        true,
        ("exec", deadlines::EXEC_REPORT),
    );
    let (launched, report) = match spawned {
        Ok(spawned) => spawned,
        Err(e) => {
            let _ = std::fs::remove_file(&file);
            return Err(e.into());
        }
    };
    if let Report::Error(message) = report {
        launched.abort();
        let _ = std::fs::remove_file(&file);
        return Err(CliError::new(message));
    }
    hand_over(launched, args.pid_file.as_deref(), || Ok(()))?;
    Ok(0)
}
