//! create, start, run, kill, delete, state: the arguments of the OCI
//! lifecycle's commands (see [`crate::container`] for what they do).

use std::path::PathBuf;

use crate::container::{self, Context, CreateOptions, DeleteOptions, KillOptions, RunOptions};

use super::{CliError, CliResult};

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

impl From<CreateArgs> for CreateOptions {
    /// The flags runc has and a VM has no use for are dropped.
    fn from(args: CreateArgs) -> CreateOptions {
        CreateOptions {
            id: args.id,
            bundle: args.bundle,
            console_socket: args.console_socket,
            pid_file: args.pid_file,
        }
    }
}

impl From<RunArgs> for RunOptions {
    fn from(args: RunArgs) -> RunOptions {
        RunOptions {
            create: args.create.into(),
            detach: args.detach,
            keep: args.keep,
        }
    }
}

impl KillArgs {
    fn options(&self) -> CliResult<KillOptions> {
        Ok(KillOptions {
            signal: container::parse_signal(&self.signal)?,
            all: self.all,
        })
    }
}

pub fn create(context: &Context, args: CreateArgs) -> CliResult<u8> {
    container::create(context, &args.into())?;
    Ok(0)
}

pub fn start(context: &Context, args: IdArgs) -> CliResult<u8> {
    container::start(context, &args.id)?;
    Ok(0)
}

pub fn run(context: &Context, args: RunArgs) -> CliResult<u8> {
    Ok(container::run(context, &args.into())?)
}

pub fn kill(context: &Context, args: KillArgs) -> CliResult<u8> {
    container::kill(context, &args.id, args.options()?)?;
    Ok(0)
}

pub fn delete(context: &Context, args: DeleteArgs) -> CliResult<u8> {
    let options = DeleteOptions { force: args.force };
    container::delete(context, &args.id, options)?;
    Ok(0)
}

pub fn state(context: &Context, args: IdArgs) -> CliResult<u8> {
    let state = container::state(context, &args.id)?;
    let text = serde_json::to_string_pretty(&state).map_err(|e| CliError::new(e.to_string()))?;
    println!("{text}");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    enum Harness {
        Run(RunArgs),
        Kill(KillArgs),
    }

    #[test]
    fn run_flags_become_run_options() {
        let Harness::Run(args) = Harness::parse_from([
            "runvm",
            "run",
            "-d",
            "--bundle",
            "/b",
            "--console-socket",
            "/tmp/c.sock",
            "--pid-file",
            "p.pid",
            "--no-pivot",
            "--preserve-fds",
            "2",
            "c1",
        ]) else {
            panic!("not run");
        };
        let options = RunOptions::from(args);
        assert_eq!(
            options,
            RunOptions {
                create: CreateOptions {
                    id: "c1".into(),
                    bundle: "/b".into(),
                    console_socket: Some("/tmp/c.sock".into()),
                    pid_file: Some("p.pid".into()),
                },
                detach: true,
                keep: false,
            }
        );
        let Harness::Run(args) = Harness::parse_from(["runvm", "run", "c2"]) else {
            panic!("not run");
        };
        assert_eq!(RunOptions::from(args).create.bundle, PathBuf::from("."));
    }

    #[test]
    fn kill_parses_its_signal_before_anything_else() {
        let kill = |argv: &[&str]| match Harness::parse_from(argv) {
            Harness::Kill(args) => args.options().map_err(|e| e.message),
            _ => panic!("not kill"),
        };
        assert_eq!(
            kill(&["runvm", "kill", "c1"]),
            Ok(KillOptions {
                signal: libc::SIGTERM,
                all: false
            })
        );
        assert_eq!(
            kill(&["runvm", "kill", "--all", "c1", "KILL"]),
            Ok(KillOptions {
                signal: libc::SIGKILL,
                all: true
            })
        );
        assert_eq!(
            kill(&["runvm", "kill", "c1", "NOPE"]),
            Err("unknown signal \"NOPE\"".to_owned())
        );
    }
}
