//! exec: another process in a running container. Like runc's, the process
//! is a whole OCI process (a file) or the container's own process with
//! changes (args, env, cwd, user, tty). Each exec'd process has a monitor
//! of its own (see [`crate::monitor`]): detached, a new process whose pid
//! goes to the pid file; otherwise the calling process itself.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Process, User};

use crate::bundle::Bundle;
use crate::deadlines;
use crate::monitor::{self, MonitorArgs, Report};
use crate::state::{self, Status};

use super::{absolute, hand_over, read_input, write_pid_file, ContainerError, Context, Result};

/// The process to exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecProcess {
    /// An OCI process JSON file (`-`: stdin), runc's `--process`.
    File(PathBuf),
    /// The container's own process (config.json's) with changes.
    Changed(ProcessChanges),
}

/// Changes to the container's own process, as runc's exec flags make
/// them. Env entries are `NAME=value` (replacing the variable's value);
/// the user is `UID[:GID]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessChanges {
    /// The command and its arguments.
    pub args: Vec<String>,
    pub terminal: bool,
    pub cwd: Option<String>,
    pub env: Vec<String>,
    pub user: Option<String>,
    pub additional_gids: Vec<u32>,
    pub no_new_privileges: bool,
}

/// What `exec` is asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecOptions {
    pub process: ExecProcess,
    /// Leave the process running under a monitor of its own.
    pub detach: bool,
    /// Where to write the pid of the process's monitor.
    pub pid_file: Option<PathBuf>,
    /// Where to send the master of the process's pty.
    pub console_socket: Option<PathBuf>,
    /// Exec into a paused container too.
    pub ignore_paused: bool,
}

impl ProcessChanges {
    /// `base` with the changes applied.
    pub fn apply(&self, base: Process) -> Result<Process> {
        if self.args.is_empty() {
            return Err(ContainerError::NoCommand);
        }
        let mut process = base;
        process.set_args(Some(self.args.clone()));
        process.set_terminal(Some(self.terminal));
        if let Some(cwd) = &self.cwd {
            process.set_cwd(cwd.into());
        }
        let mut env = process.env().clone().unwrap_or_default();
        for entry in &self.env {
            let Some((name, _)) = entry.split_once('=') else {
                return Err(ContainerError::BadEnv(entry.clone()));
            };
            env.retain(|e| e.split_once('=').map(|(n, _)| n) != Some(name));
            env.push(entry.clone());
        }
        process.set_env(Some(env));
        if let Some(user) = &self.user {
            process.set_user(parse_user(user)?);
        }
        if !self.additional_gids.is_empty() {
            let mut user = process.user().clone();
            user.set_additional_gids(Some(self.additional_gids.clone()));
            process.set_user(user);
        }
        if self.no_new_privileges {
            process.set_no_new_privileges(Some(true));
        }
        Ok(process)
    }
}

/// `UID[:GID]`, numbers; no group is group 0.
fn parse_user(text: &str) -> Result<User> {
    let bad = || ContainerError::BadUser(text.to_owned());
    let (uid, gid) = match text.split_once(':') {
        Some((uid, gid)) => (uid, Some(gid)),
        None => (text, None),
    };
    let mut user = User::default();
    user.set_uid(uid.parse().map_err(|_| bad())?);
    user.set_gid(match gid {
        Some(gid) => gid.parse().map_err(|_| bad())?,
        None => 0,
    });
    Ok(user)
}

fn read_process(path: &Path) -> Result<Process> {
    let text = read_input(path)?;
    serde_json::from_slice(&text).map_err(|source| ContainerError::BadProcess {
        path: path.to_owned(),
        source,
    })
}

/// Runs the process in container `id`. Detached: 0 once it runs. In the
/// foreground: its exit status as a shell sees it, once it has ended.
pub fn exec(context: &Context, id: &str, options: &ExecOptions) -> Result<u8> {
    let root = context.root()?;
    let record = state::peek(&root, id)?;
    match record.status() {
        Status::Running | Status::Created => {}
        Status::Paused if options.ignore_paused => {}
        Status::Paused => return Err(ContainerError::ExecPaused),
        _ => return Err(ContainerError::ExecStopped),
    }
    let process = match &options.process {
        ExecProcess::File(path) => read_process(path)?,
        ExecProcess::Changed(changes) => {
            let bundle = Bundle::load(&record.bundle)?;
            changes.apply(bundle.spec.process().clone().unwrap_or_default())?
        }
    };
    let terminal = process.terminal().unwrap_or(false);
    if !terminal && options.console_socket.is_some() {
        return Err(ContainerError::ConsoleSocketWithoutTerminal);
    }
    if terminal && options.detach && options.console_socket.is_none() {
        return Err(ContainerError::TerminalWithoutConsoleSocket);
    }
    // The monitor reads the process from a file in the container's
    // directory (private to root) and removes it.
    let file = root.dir().join(id).join(format!(
        "exec-{}-{}.json",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    let text = serde_json::to_vec(&process)?;
    state::write_atomically(&file, &text)?;
    let monitor_args = MonitorArgs {
        id: id.to_owned(),
        exec_process: Some(file.clone()),
        console_socket: options.console_socket.as_deref().map(absolute),
        own_terminal: terminal && options.console_socket.is_none(),
        sync_fd: None,
    };
    if !options.detach {
        if let Some(pid_file) = &options.pid_file {
            write_pid_file(pid_file, std::process::id() as i32)?;
        }
        let code = monitor::run(root.dir(), monitor_args);
        return Ok(u8::try_from(code).unwrap_or(255));
    }
    let spawned = monitor::spawn(
        &context.monitor_globals,
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
        return Err(ContainerError::Monitor(message));
    }
    hand_over(launched, options.pid_file.as_deref(), || Ok(()))?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Process {
        let mut process = Process::default();
        process.set_env(Some(vec!["PATH=/bin".into(), "HOME=/root".into()]));
        process
    }

    #[test]
    fn changes_apply_to_the_containers_process() {
        let changes = ProcessChanges {
            args: vec!["sh".into(), "-c".into(), "true".into()],
            terminal: true,
            cwd: Some("/tmp".into()),
            env: vec!["HOME=/home/x".into(), "A=b=c".into()],
            user: Some("1000:100".into()),
            additional_gids: vec![5, 6],
            no_new_privileges: true,
        };
        let process = changes.apply(base()).expect("valid changes");
        assert_eq!(process.args().as_deref(), Some(&changes.args[..]));
        assert_eq!(process.terminal(), Some(true));
        assert_eq!(process.cwd(), Path::new("/tmp"));
        let env: Vec<String> = vec!["PATH=/bin".into(), "HOME=/home/x".into(), "A=b=c".into()];
        assert_eq!(process.env().as_ref(), Some(&env));
        assert_eq!(process.user().uid(), 1000);
        assert_eq!(process.user().gid(), 100);
        assert_eq!(
            process.user().additional_gids().as_deref(),
            Some(&[5, 6][..])
        );
        assert_eq!(process.no_new_privileges(), Some(true));
    }

    #[test]
    fn bad_changes_are_refused_with_runcs_words() {
        let refused = |changes: ProcessChanges| {
            changes
                .apply(base())
                .map(drop)
                .map_err(|e| e.to_string())
                .expect_err("refused")
        };
        assert_eq!(
            refused(ProcessChanges::default()),
            "exec: no command given (args or --process)"
        );
        let command = || ProcessChanges {
            args: vec!["true".into()],
            ..ProcessChanges::default()
        };
        assert_eq!(
            refused(ProcessChanges {
                env: vec!["NOEQUALS".into()],
                ..command()
            }),
            "--env \"NOEQUALS\" is not NAME=value"
        );
        assert_eq!(
            refused(ProcessChanges {
                user: Some("root".into()),
                ..command()
            }),
            "--user \"root\" is not UID[:GID] (numbers)"
        );
        let user = command().apply(base()).expect("valid").user().clone();
        assert_eq!((user.uid(), user.gid()), (0, 0));
        let only_uid = ProcessChanges {
            user: Some("7".into()),
            ..command()
        };
        let user = only_uid.apply(base()).expect("valid").user().clone();
        assert_eq!((user.uid(), user.gid()), (7, 0));
    }
}
