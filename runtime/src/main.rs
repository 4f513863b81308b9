//! `runvm`, the OCI front end. The runc command line arrives with the
//! container issues; today it boots a microVM and runs one command in it
//! (`runvm vm-run`).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use runvm::commands::vm_run::{self, VmRunArgs};

#[derive(Parser)]
#[command(name = "runvm", version, about = "Runs containers in KVM microVMs")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a microVM, run one command in it with this terminal's stdio,
    /// power the VM off and exit with the command's status.
    VmRun(VmRunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::VmRun(args) => vm_run::main(args),
    }
}
