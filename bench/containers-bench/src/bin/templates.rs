//! `runvm-templates-bench`: boots `--vms` microVMs with a share through
//! the runtime library (`runvm::vm::MicroVm`, as a container's VM is
//! booted), each to agent-ready, and reports what that took and, with all
//! of them running, the memory of each VM's host processes. Whether the
//! VMs boot cold, make a template or are restored from one is the
//! runtime's choice, steered by the caller's environment
//! (`RUNVM_COLD_BOOT`, `RUNVM_TEMPLATE_DIR`; see `runvm::template`).
//! Run by `bench/templates.sh` (through `bench/templates/measure.py`),
//! which compares cold boots with restores.
//!
//! Per VM: wall time from `MicroVm::boot` to `connect_agent` returning
//! (the template's key, virtiofsd, the VMM, boot or restore, reseeding);
//! KVM's counters at that moment (of the VMM process then running: a
//! restored VM's count starts at its restore); the agent's `MountShare`
//! (a check that the restored share works); the lines the runtime noted
//! in the VM's log (a restore that failed and fell back to a cold boot
//! says so there). With every VM ready: PSS and RSS of each VM's
//! processes from `/proc/PID/smaps_rollup`, and the host's
//! `/proc/meminfo` before and after. Then every VM is shut down and must
//! leave nothing behind. JSON on stdout, progress on stderr.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use runvm::agent_client::AgentClient;
use runvm::kvm_stats;
use runvm::vm::{MicroVm, VmSpec};
use runvm_agent_api::{RequestBody, ResponseBody, SHARE_TAG};
use serde_json::{json, Map, Value};

#[path = "../vm_args.rs"]
mod vm_args;
use vm_args::VmArgs;

#[derive(Parser, Debug)]
#[command(about = "Boot or restore microVMs with a share; time to agent-ready and memory")]
struct Args {
    #[command(flatten)]
    vm: VmArgs,
    /// Work directory for the VMs; must not exist, is created and removed.
    #[arg(long)]
    dir: PathBuf,
    /// VMs running at once at the end.
    #[arg(long, default_value_t = 1)]
    vms: usize,
    /// VMs started together (their VMMs run side by side until each
    /// agent has answered); 1 for a clean time to ready.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    /// Each agent must answer by then (a batch of cold boots shares the
    /// host's cores).
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// With every VM ready, wait this long before reading memory.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
}

/// How long a shut-down VM's processes get to be gone.
const REAP_PATIENCE: Duration = Duration::from_secs(5);
/// The smaps_rollup fields kept, in KiB.
const MEMORY_FIELDS: [&str; 5] = ["Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem"];

fn progress(detail: impl std::fmt::Display) {
    eprintln!("templates-bench: {detail}");
}

/// The work directory, removed on every way out.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A VM that has answered, with what was measured on the way.
struct Running {
    vm: MicroVm,
    agent: AgentClient,
    dir: PathBuf,
    log: PathBuf,
    measured: Map<String, Value>,
}

/// `/proc/PID/smaps_rollup`'s [`MEMORY_FIELDS`], in KiB.
fn memory_of(pid: u32) -> Result<Map<String, Value>, String> {
    let path = format!("/proc/{pid}/smaps_rollup");
    let text = fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut fields = Map::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        if MEMORY_FIELDS.contains(&key) {
            let kib: u64 = rest
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("{path}: unreadable line {line:?}"))?;
            fields.insert(key.to_owned(), kib.into());
        }
    }
    Ok(fields)
}

/// `/proc/meminfo`, in KiB by key.
fn host_meminfo() -> Map<String, Value> {
    let text = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some((key.to_owned(), Value::from(kib)))
        })
        .collect()
}

/// Each process of the VM by role: the process started (jailed, the
/// jail's supervisor), the VMM, and virtiofsd's.
fn vm_processes(vm: &MicroVm) -> Vec<(&'static str, u32)> {
    let mut found = Vec::new();
    match (vm.pid(), vm.vmm_pid()) {
        (Some(started), Some(vmm)) if started != vmm => {
            found.push(("jail supervisor", started));
            found.push(("runvm-vmm", vmm));
        }
        (_, Some(vmm)) => found.push(("runvm-vmm", vmm)),
        (Some(started), None) => found.push(("runvm-vmm", started)),
        (None, None) => {}
    }
    found.extend(
        vm.virtiofsd_pids()
            .into_iter()
            .map(|pid| ("virtiofsd", pid)),
    );
    found
}

/// The lines the runtime noted about the VM (`runvm: ...`) in its log.
fn runtime_notes(log: &Path) -> Vec<String> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with("runvm: "))
        .map(str::to_owned)
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie holds no memory, socket or mount: gone.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|state| state.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

impl Running {
    /// Has the agent mount the share: a restored VM's virtio-fs must work.
    async fn mount_share(&mut self) -> Result<(), String> {
        let started = Instant::now();
        let tag = SHARE_TAG.to_owned();
        match self.agent.call(RequestBody::MountShare { tag }).await {
            Ok(ResponseBody::Done) => {}
            Ok(other) => return Err(format!("MountShare answered {other:?}")),
            Err(e) => {
                return Err(format!(
                    "MountShare: {e}; the guest console ended with:\n{}",
                    self.vm.console_tail()
                ))
            }
        }
        self.measured.insert(
            "mount_share_ms".into(),
            json!(started.elapsed().as_secs_f64() * 1e3),
        );
        Ok(())
    }

    /// Memory of each of the VM's processes, and their sum.
    fn memory(&self) -> Result<Value, String> {
        let mut processes = Vec::new();
        let mut total: Map<String, Value> = Map::new();
        for (role, pid) in vm_processes(&self.vm) {
            let fields = memory_of(pid)?;
            for (key, kib) in &fields {
                let sum = total.get(key).and_then(Value::as_u64).unwrap_or(0);
                total.insert(key.clone(), json!(sum + kib.as_u64().unwrap_or(0)));
            }
            processes.push(json!({"role": role, "pid": pid, "kib": fields}));
        }
        Ok(json!({"processes": processes, "total_kib": total}))
    }

    /// Shuts the VM down; its directory and processes must be gone.
    async fn shut_down(self) -> Result<Value, String> {
        let pids: Vec<u32> = vm_processes(&self.vm).iter().map(|(_, pid)| *pid).collect();
        let started = Instant::now();
        let status = self
            .vm
            .shutdown(&self.agent)
            .await
            .map_err(|e| format!("shutdown: {e}"))?;
        let took = started.elapsed().as_secs_f64();
        if !status.success() {
            return Err(format!("the VMM exited with {status} after Shutdown"));
        }
        if self.dir.exists() {
            return Err(format!("{} was left behind", self.dir.display()));
        }
        let deadline = Instant::now() + REAP_PATIENCE;
        while pids.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(pid) = pids.iter().find(|pid| alive(**pid)) {
            return Err(format!("process {pid} of a shut-down VM still runs"));
        }
        let mut measured = self.measured;
        measured.insert("shutdown_s".into(), json!(took));
        measured.insert("notes".into(), json!(runtime_notes(&self.log)));
        Ok(Value::Object(measured))
    }
}

/// Starts the VMs `first..first + count` together, then waits for each
/// agent in turn.
async fn start_batch(
    args: &Args,
    spec: &VmSpec,
    work: &Path,
    first: usize,
    count: usize,
) -> Result<Vec<Running>, String> {
    let mut started = Vec::new();
    for i in first..first + count {
        let dir = work.join(format!("vm{i}"));
        let log = work.join(format!("vm{i}.log"));
        let at = Instant::now();
        let vm = MicroVm::boot_logged(spec, &dir, Some(&log))
            .map_err(|e| format!("VM {i}: boot: {e}"))?;
        started.push((i, vm, dir, log, at));
    }
    let mut running = Vec::new();
    for (i, mut vm, dir, log, at) in started {
        let agent = vm
            .connect_agent(Duration::from_secs(args.timeout_s))
            .await
            .map_err(|e| format!("VM {i}: {e}\nits log: {:?}", runtime_notes(&log)))?;
        let ready_s = at.elapsed().as_secs_f64();
        let counters = match vm.vmm_pid().map(kvm_stats::read) {
            Some(Ok(counters)) => json!(counters.values),
            Some(Err(e)) => return Err(format!("VM {i}: cannot read its KVM counters: {e}")),
            None => return Err(format!("VM {i}: the VMM is gone")),
        };
        progress(format!("VM {i} ready after {ready_s:.3} s"));
        let mut measured = Map::new();
        measured.insert("ready_s".into(), json!(ready_s));
        measured.insert("counters".into(), counters);
        running.push(Running {
            vm,
            agent,
            dir,
            log,
            measured,
        });
    }
    Ok(running)
}

async fn measure(args: &Args, spec: &VmSpec, work: &Path) -> Result<Value, String> {
    let host_before = host_meminfo();
    let batch = Instant::now();
    let mut running: Vec<Running> = Vec::new();
    while running.len() < args.vms {
        let count = args.parallel.max(1).min(args.vms - running.len());
        let more = start_batch(args, spec, work, running.len(), count).await?;
        running.extend(more);
    }
    let all_ready_s = batch.elapsed().as_secs_f64();
    for vm in &mut running {
        vm.mount_share().await?;
    }
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    let mut memory = Vec::new();
    for vm in &running {
        memory.push(vm.memory()?);
    }
    let host_running = host_meminfo();
    let mut vms = Vec::new();
    for (vm, memory) in running.into_iter().zip(memory) {
        let mut measured = vm.shut_down().await?;
        measured["memory"] = memory;
        vms.push(measured);
    }
    Ok(json!({
        "vms": vms,
        "all_ready_s": all_ready_s,
        "host_meminfo_before_kib": host_before,
        "host_meminfo_running_kib": host_running,
        "host_meminfo_after_kib": host_meminfo(),
    }))
}

fn run(args: &Args) -> Result<Value, String> {
    let spec = args.vm.spec(Some(args.vm.find_virtiofsd()?));
    fs::create_dir(&args.dir).map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
    let work = WorkDir(args.dir.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    // On an error, dropping the VMs kills their processes and undoes
    // their shares before the work directory goes.
    runtime.block_on(measure(args, &spec, &work.0))
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(value) => println!("{value:#}"),
        Err(e) => {
            eprintln!("templates-bench: FAILED: {e}");
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
