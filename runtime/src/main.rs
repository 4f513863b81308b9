//! `runvm`, the OCI front end: runc's command line, each container in a
//! KVM microVM (see `runvm::cli`).

fn main() -> std::process::ExitCode {
    runvm::cli::main()
}
