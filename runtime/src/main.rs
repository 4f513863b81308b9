//! `runvm`, the OCI front end. The runc command line arrives with the
//! container issues; for now it only reports its version.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--version") | Some("-v") => {
            println!("runvm version {}", env!("CARGO_PKG_VERSION"));
            std::process::ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("runvm: command {other:?} is not implemented yet");
            std::process::ExitCode::FAILURE
        }
        None => {
            eprintln!("usage: runvm --version");
            std::process::ExitCode::FAILURE
        }
    }
}
