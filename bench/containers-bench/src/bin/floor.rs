//! The least a `runvm run` of a bundle could cost: one cold VM as runvm
//! boots it (the agent, a share), the bundle's rootfs shared, and the
//! bundle's process run by the agent from the share, outside any
//! container (no cgroup, namespaces, mounts or pivot_root, no
//! create/start requests), until it exits. Everything a container adds
//! comes on top; `bench/coldstart/measure.py` sets this next to
//! `runvm run` and the tiny-init boot in one run. Prints one JSON object.
//!
//! Only the paths the bundle gives are moved into the share (the program,
//! absolute `PATH` entries, the working directory): what the guest kernel
//! resolves on its own (an absolute symlink, a dynamic program's
//! interpreter, a `#!` line) or a shell's default `PATH` points into the
//! guest's root, which holds only the agent, so such a bundle fails here
//! with the guest's error instead of being measured wrongly. `make run`'s
//! bundle (static busybox, relative links, a `PATH`) runs as it is.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use runvm::bundle::Bundle;
use runvm::guest_process::{self, HostStdio, ProcessSpec};
use runvm::kvm_stats;
use runvm::vm::{MicroVm, VmSpec};
use runvm_agent_api::oci::Spec;
use runvm_agent_api::ExitStatus;
use serde_json::json;

#[path = "../captured.rs"]
mod captured;
#[path = "../vm_args.rs"]
mod vm_args;
use captured::Captured;
use vm_args::VmArgs;

#[derive(Parser, Debug)]
#[command(about = "A bundle's process run by the agent of a cold VM from the share, no container")]
struct Args {
    /// The VM, as runvm boots it (the image: build/runvm-agent).
    #[command(flatten)]
    vm: VmArgs,
    /// The bundle whose rootfs is shared and whose process runs.
    #[arg(long)]
    bundle: PathBuf,
    /// The VM's directory; must not exist, is created and removed.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

/// The bundle's process with every path moved below `root`, the rootfs as
/// the guest sees it in the share.
fn process_in_share(spec: &Spec, rootfs: &Path, root: &str) -> Result<ProcessSpec, String> {
    let process = spec.process.as_ref().ok_or("the bundle has no process")?;
    let args = process.args.clone().unwrap_or_default();
    let first = args.first().ok_or("the bundle's process has no args")?;
    // A path is the bundle's own; a name is looked up in its PATH, as
    // `runvm create` does on the host.
    let program = if first.starts_with('/') {
        format!("{root}{first}")
    } else if first.contains('/') {
        first.clone()
    } else {
        let found = runvm::program_path::resolve(spec, rootfs).ok_or_else(|| {
            format!("the bundle's program {first:?} is not found in its rootfs's PATH")
        })?;
        format!("{root}{found}")
    };
    let env = process
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| match e.strip_prefix("PATH=") {
            Some(dirs) => {
                let moved: Vec<String> = dirs
                    .split(':')
                    .map(|d| match d.starts_with('/') {
                        true => format!("{root}{d}"),
                        false => d.to_owned(),
                    })
                    .collect();
                format!("PATH={}", moved.join(":"))
            }
            None => e,
        })
        .collect();
    let mut argv = vec![program];
    argv.extend(args.into_iter().skip(1));
    Ok(ProcessSpec {
        argv,
        env,
        cwd: Some(format!("{root}{}", process.cwd.display())),
        uid: process.user.uid,
        gid: process.user.gid,
    })
}

async fn measure(
    args: &Args,
    vm_spec: &VmSpec,
    spec: &Spec,
    rootfs: &Path,
    readonly: bool,
) -> Result<serde_json::Value, String> {
    let timeout = Duration::from_secs(args.timeout_s);
    let started = Instant::now();
    let mut vm = MicroVm::boot(vm_spec, &args.dir).map_err(|e| format!("boot: {e}"))?;
    let agent = vm
        .connect_agent(timeout)
        .await
        .map_err(|e| format!("boot: {e}"))?;
    let ready = started.elapsed();
    let root = vm
        .share_rootfs(&agent, "floor", rootfs, readonly)
        .await
        .map_err(|e| format!("cannot share the rootfs: {e}"))?;
    let shared = started.elapsed();
    let process = process_in_share(spec, rootfs, &root)?;
    let (out, err) = (Captured::default(), Captured::default());
    let stdio = HostStdio {
        stdin: None,
        stdout: Some(Box::new(out.clone())),
        stderr: Some(Box::new(err.clone())),
    };
    let status = tokio::time::timeout(timeout, async {
        let relay = guest_process::spawn(&agent, &process, stdio).await?;
        relay.finish(&agent).await
    })
    .await
    .map_err(|_| "the process did not end in time".to_string())?
    .map_err(|e| format!("the process: {e}"))?;
    let ended = started.elapsed();
    let insn = vm
        .vmm_pid()
        .and_then(|pid| kvm_stats::read(pid).ok())
        .map(|c| c.get("insn_emulation"));
    let _ = vm.shutdown(&agent).await;
    let stopped = started.elapsed();
    if status != ExitStatus::Code(0) {
        return Err(format!(
            "the process ended with {status:?}; stdout {:?}, stderr {:?}",
            out.text(),
            err.text()
        ));
    }
    Ok(json!({
        "ready_s": ready.as_secs_f64(),
        "shared_s": shared.as_secs_f64(),
        "stopped_s": stopped.as_secs_f64(),
        "total_s": ended.as_secs_f64(),
        "insn_emulation": insn,
        "stdout": out.text(),
    }))
}

fn run(args: &Args) -> Result<serde_json::Value, String> {
    if runvm::template::enabled() {
        return Err("set RUNVM_COLD_BOOT=1: this measures a cold boot, not a template's".into());
    }
    // The bundle as `runvm run` reads it.
    let bundle = Bundle::load(&args.bundle).map_err(|e| e.to_string())?;
    let rootfs = bundle.rootfs().map_err(|e| e.to_string())?;
    let spec: Spec = runvm::bundle::to_wire(&bundle.spec).map_err(|e| e.to_string())?;
    let vm_spec = args.vm.spec(Some(args.vm.find_virtiofsd()?));
    if args.dir.exists() {
        return Err(format!("{} exists already", args.dir.display()));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    let readonly = bundle.readonly_rootfs();
    runtime.block_on(measure(args, &vm_spec, &spec, &rootfs, readonly))
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(value) => println!("{value}"),
        Err(e) => {
            eprintln!("runvm-floor-bench: {e}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
