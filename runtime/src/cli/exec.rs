//! exec's arguments: like runc's, the process is `--process FILE` or the
//! container's own process with the command line's args, env, cwd, user
//! and tty applied (see [`crate::container::exec`]).

use std::path::PathBuf;

use crate::container::{self, Context, ExecOptions, ExecProcess, ProcessChanges};

use super::CliResult;

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

impl From<ExecArgs> for ExecOptions {
    /// `--process` wins over the other process flags; the flags a VM has
    /// no use for are dropped.
    fn from(args: ExecArgs) -> ExecOptions {
        let process = match args.process {
            Some(path) => ExecProcess::File(path),
            None => ExecProcess::Changed(ProcessChanges {
                args: args.command,
                terminal: args.tty,
                cwd: args.cwd,
                env: args.env,
                user: args.user,
                additional_gids: args.additional_gids,
                no_new_privileges: args.no_new_privs,
            }),
        };
        ExecOptions {
            process,
            detach: args.detach,
            pid_file: args.pid_file,
            console_socket: args.console_socket,
            ignore_paused: args.ignore_paused,
        }
    }
}

pub fn exec(context: &Context, args: ExecArgs) -> CliResult<u8> {
    let id = args.id.clone();
    Ok(container::exec(context, &id, &args.into())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        args: ExecArgs,
    }

    fn options(argv: &[&str]) -> ExecOptions {
        Harness::parse_from(argv).args.into()
    }

    #[test]
    fn exec_flags_become_process_changes() {
        let options = options(&[
            "exec",
            "-t",
            "-d",
            "--pid-file",
            "p",
            "--cwd",
            "/w",
            "-e",
            "A=1",
            "-e",
            "B=2",
            "--user",
            "1:2",
            "-g",
            "3",
            "--no-new-privs",
            "--ignore-paused",
            "c1",
            "sh",
            "-c",
            "echo -n hi",
        ]);
        assert_eq!(
            options,
            ExecOptions {
                process: ExecProcess::Changed(ProcessChanges {
                    args: vec!["sh".into(), "-c".into(), "echo -n hi".into()],
                    terminal: true,
                    cwd: Some("/w".into()),
                    env: vec!["A=1".into(), "B=2".into()],
                    user: Some("1:2".into()),
                    additional_gids: vec![3],
                    no_new_privileges: true,
                }),
                detach: true,
                pid_file: Some("p".into()),
                console_socket: None,
                ignore_paused: true,
            }
        );
    }

    #[test]
    fn a_process_file_wins_over_the_process_flags() {
        let options = options(&["exec", "--process", "-", "-t", "c1", "ignored"]);
        assert_eq!(options.process, ExecProcess::File(PathBuf::from("-")));
        assert!(!options.detach);
    }
}
