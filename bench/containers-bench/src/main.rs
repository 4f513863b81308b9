//! Containers and the share: what a trivial container costs on top of a
//! VM, and what virtio-fs moves. Measured with the runtime library
//! (`runvm::vm`, `runvm::share`, `runvm::container_client`), the code a
//! runtime command runs:
//!
//! - boot to agent-ready of the test image without a share and with one
//!   (virtiofsd started first), alternating, each VM shut down again; in
//!   the VMs with a share, also the agent's `MountShare` (the guest mounts
//!   virtio-fs);
//! - in one VM with a share: trivial containers one after the other (a
//!   busybox bundle built on the host, a `runc spec` config running
//!   `true`): bind the rootfs into the share, create, start, wait,
//!   delete, unbind, each step timed;
//! - in the same VM: sequential `dd` write (`conv=fsync`) and read (guest
//!   page cache dropped first) of one file on the share (a writable
//!   rootfs bind) and on a tmpfs in the guest; before any VM, the same
//!   `dd` on the host in the same host directory.
//!
//! Prints the raw figures as JSON on stdout (progress on stderr);
//! `bench/containers_report.py` turns them into the report. Run it through
//! `bench/containers.sh`.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use runvm::agent_client::AgentClient;
use runvm::container_client::ContainerClient;
use runvm::guest_process::{self, HostStdio, ProcessSpec};
use runvm::kvm_stats::{self, GuestCounters};
use runvm::share;
use runvm::vm::MicroVm;
use runvm_agent_api::oci::Spec;
use runvm_agent_api::{ExitStatus, RequestBody, ResponseBody, SHARE_TAG};
use serde_json::{json, Value};

mod captured;
mod vm_args;
use captured::Captured;
use vm_args::VmArgs;

#[derive(Parser, Debug)]
#[command(
    about = "Trivial container latency over a VM boot, and virtio-fs throughput, in microVMs"
)]
struct Args {
    /// The VM; its image must hold busybox (build/rootfs-tools.ext4): the
    /// guest side of the throughput runs needs `sh` and `dd`.
    #[command(flatten)]
    vm: VmArgs,
    /// Work directory for the bundles and the VMs; must not exist, is
    /// created and removed again.
    #[arg(long)]
    dir: PathBuf,
    /// Boots of each kind (without and with a share), alternating.
    #[arg(long, default_value_t = 3)]
    boot_runs: usize,
    /// Measured containers.
    #[arg(long, default_value_t = 10)]
    container_runs: usize,
    /// Uncounted containers first (the first one also has the guest mount
    /// the share).
    #[arg(long, default_value_t = 1)]
    container_warmup: usize,
    /// File size of the throughput runs, in MiB.
    #[arg(long, default_value_t = 32)]
    fs_mib: u64,
    /// Measured rounds of the guest throughput probes.
    #[arg(long, default_value_t = 3)]
    fs_runs: usize,
    /// Runs of the host `dd` baseline.
    #[arg(long, default_value_t = 3)]
    host_runs: usize,
    /// The busybox for the bundles and for the host `dd`; the test image
    /// holds a copy of the same one.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    #[arg(long, default_value_t = 120)]
    boot_timeout_s: u64,
    /// Any single measured step that takes longer fails the benchmark.
    #[arg(long, default_value_t = 600)]
    step_timeout_s: u64,
}

const MIB: u64 = 1 << 20;
/// Where the guest mounts its own tmpfs for the throughput runs.
const GUEST_TMPFS: &str = "/run/runvm-bench-tmpfs";
/// The container id under which the writable directory is shared.
const FS_ID: &str = "fsbench";
/// How long virtiofsd's sandboxed child gets to go once the VM has.
const REAP_PATIENCE: Duration = Duration::from_secs(5);

/// The work directory: removed on every way out (unless something is
/// still mounted below it, which is then reported instead).
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(path: &Path) -> Result<WorkDir, String> {
        fs::create_dir(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(WorkDir(path.to_owned()))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let left = share::mounts_below(&self.0);
        if left.is_empty() {
            let _ = fs::remove_dir_all(&self.0);
        } else {
            eprintln!(
                "containers-bench: {} is left behind: {left:?} are still mounted",
                self.0.display()
            );
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn progress(what: &str, detail: impl std::fmt::Display) {
    eprintln!("containers-bench: {what:<26} {detail}");
}

async fn within<T, E: std::fmt::Display>(
    step: Duration,
    what: &str,
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    tokio::time::timeout(step, future)
        .await
        .map_err(|_| format!("{what}: no answer within {step:?}"))?
        .map_err(|e| format!("{what}: {e}"))
}

// ---------------------------------------------------------------- bundles

/// A busybox root filesystem with what a runc config mounts on, and `dirs`.
fn busybox_rootfs(rootfs: &Path, busybox: &Path, dirs: &[&str]) -> Result<(), String> {
    let io = |what: &str, path: &Path, e: std::io::Error| format!("{what} {}: {e}", path.display());
    for sub in ["bin", "dev", "proc", "sys", "etc", "tmp", "root"]
        .iter()
        .chain(dirs)
    {
        let dir = rootfs.join(sub);
        fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
    }
    let target = rootfs.join("bin/busybox");
    fs::copy(busybox, &target).map_err(|e| io("cannot copy busybox to", &target, e))?;
    for applet in ["sh", "true"] {
        let link = rootfs.join("bin").join(applet);
        symlink("busybox", &link).map_err(|e| io("cannot link", &link, e))?;
    }
    Ok(())
}

/// What `runc spec` (runc 1.1.5) writes, with no terminal, `true` as the
/// process, and no ambient capabilities: `runc spec` lists its three
/// capabilities as ambient too but not as inheritable, so the kernel
/// refuses to raise them; runc 1.1 ignores that (its containers run with
/// an empty ambient set), runvm's agent refuses the spec. Without the
/// ambient list both give the container the same capabilities.
fn runc_spec_config() -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["true"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "TERM=xterm"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                           {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"]
        }
    })
}

/// The trivial container's bundle: `config.json` and a busybox `rootfs/`.
struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    fn build(dir: &Path, busybox: &Path) -> Result<Bundle, String> {
        busybox_rootfs(&dir.join("rootfs"), busybox, &[])?;
        let config = serde_json::to_vec_pretty(&runc_spec_config()).map_err(|e| e.to_string())?;
        let path = dir.join("config.json");
        fs::write(&path, config).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(Bundle {
            dir: dir.to_owned(),
        })
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// config.json, read as a runtime reads it for `create`.
    fn spec(&self) -> Result<(Spec, bool), String> {
        let path = self.dir.join("config.json");
        let text = fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut value: Value =
            serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        // Experiments: leave parts of the spec out (JSON pointers,
        // comma-separated), to see what they cost.
        if let Ok(drop) = std::env::var("RUNVM_BENCH_SPEC_DROP") {
            for pointer in drop.split(',').filter(|p| !p.is_empty()) {
                let (parent, key) = pointer.rsplit_once('/').unwrap_or(("", pointer));
                if let Some(Value::Object(map)) = value.pointer_mut(parent) {
                    map.remove(key);
                }
            }
        }
        let spec: Spec =
            serde_json::from_value(value).map_err(|e| format!("{}: {e}", path.display()))?;
        let readonly = spec
            .root
            .as_ref()
            .and_then(|root| root.readonly)
            .unwrap_or(false);
        Ok((spec, readonly))
    }
}

// ------------------------------------------------------------ guest side

/// `sh -c script` in the guest (outside any container) with its stdout
/// and stderr; anything but exit status 0 is an error.
async fn guest_sh(
    agent: &AgentClient,
    script: &str,
    step: Duration,
) -> Result<(String, String), String> {
    let (out, err) = (Captured::default(), Captured::default());
    let spec = ProcessSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        ..ProcessSpec::default()
    };
    let stdio = HostStdio {
        stdin: None,
        stdout: Some(Box::new(out.clone())),
        stderr: Some(Box::new(err.clone())),
    };
    let status = within(step, script, async {
        let relay = guest_process::spawn(agent, &spec, stdio).await?;
        relay.finish(agent).await
    })
    .await?;
    if status != ExitStatus::Code(0) {
        return Err(format!(
            "{script:?} ended with {status:?}; stdout {:?}, stderr {:?}",
            out.text(),
            err.text()
        ));
    }
    Ok((out.text(), err.text()))
}

/// `dd ARGS` in the guest, timed by the guest between two reads of
/// /proc/uptime (the shell's `read` builtin: no process is started for
/// the clock). `before` runs first, `after` after the clock stopped.
/// dd must report `records` whole records out.
async fn guest_dd(
    agent: &AgentClient,
    before: &str,
    dd: &str,
    after: &str,
    records: u64,
    step: Duration,
) -> Result<Value, String> {
    let script = format!(
        "{before}read t0 rest < /proc/uptime; dd {dd} || exit; \
         read t1 rest < /proc/uptime; {after}echo \"$t0 $t1\""
    );
    let started = Instant::now();
    let (out, err) = guest_sh(agent, &script, step).await?;
    let wall = started.elapsed();
    let times: Vec<f64> = out
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("guest timing {out:?}: {e}"))?;
    let [t0, t1] = times[..] else {
        return Err(format!("guest timing {out:?}: expected two uptimes"));
    };
    check_records(&format!("dd {dd} (guest)"), &err, records)?;
    Ok(json!({ "guest_s": t1 - t0, "wall_s": secs(wall) }))
}

/// busybox dd's summary must say `records` whole records went out.
fn check_records(what: &str, stderr: &str, records: u64) -> Result<(), String> {
    if stderr.contains(&format!("\n{records}+0 records out")) {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected {records}+0 records out, dd said {stderr:?}"
        ))
    }
}

// ------------------------------------------------------------- host side

/// `busybox dd ARGS` on the host, timed around the command (process
/// start-up, about a millisecond, included).
fn host_dd(busybox: &Path, args: &[String], records: u64) -> Result<f64, String> {
    let started = Instant::now();
    let out = Command::new(busybox)
        .arg("dd")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{} dd: {e}", busybox.display()))?;
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!("dd {args:?} (host): {}: {stderr}", out.status));
    }
    check_records(
        &format!("dd {args:?} (host)"),
        &format!("\n{stderr}"),
        records,
    )?;
    Ok(secs(elapsed))
}

/// Drops the host's cached pages of `path` (clean after an fsync):
/// posix_fadvise(DONTNEED), for this file alone: the machine is shared.
fn drop_host_cache(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    // SAFETY: a plain syscall on a descriptor we own.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(format!(
            "posix_fadvise {}: {}",
            path.display(),
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    Ok(())
}

/// How many of `path`'s pages are in the host's page cache (mincore).
fn host_cached_pages(path: &Path) -> Result<(usize, usize), String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let len = file.metadata().map_err(|e| e.to_string())?.len() as usize;
    if len == 0 {
        return Ok((0, 0));
    }
    // SAFETY: sysconf cannot fail for _SC_PAGESIZE.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let pages = len.div_ceil(page);
    let mut vec = vec![0u8; pages];
    // SAFETY: a read-only shared mapping of a file we hold open, unmapped
    // below; mincore writes `pages` bytes into `vec`.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        if addr == libc::MAP_FAILED {
            return Err(format!(
                "mmap {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        let err = std::io::Error::last_os_error();
        libc::munmap(addr, len);
        if rc != 0 {
            return Err(format!("mincore {}: {err}", path.display()));
        }
    }
    Ok((vec.iter().filter(|b| *b & 1 == 1).count(), pages))
}

/// The host baseline, in `dir` (the host directory behind the share's
/// writable bind): write with fsync, read from the page cache, drop the
/// file's pages, read again from the disk.
fn host_throughput(args: &Args, dir: &Path) -> Result<Value, String> {
    let file = dir.join("host.img");
    let n = args.fs_mib;
    let of = format!("of={}", file.display());
    let iff = format!("if={}", file.display());
    let write = [
        "if=/dev/zero".to_string(),
        of,
        "bs=1M".into(),
        format!("count={n}"),
        "conv=fsync".into(),
    ];
    let read = [iff, "of=/dev/null".to_string(), "bs=1M".into()];
    let (mut w, mut cached, mut cold, mut cold_resident) = (vec![], vec![], vec![], vec![]);
    for i in 0..=args.host_runs {
        let write_s = host_dd(&args.busybox, &write, n)?;
        let cached_s = host_dd(&args.busybox, &read, n)?;
        drop_host_cache(&file)?;
        let (resident, _) = host_cached_pages(&file)?;
        let cold_s = host_dd(&args.busybox, &read, n)?;
        fs::remove_file(&file).map_err(|e| format!("cannot remove {}: {e}", file.display()))?;
        // The first round warms up (busybox, the directory) and is not counted.
        if i > 0 {
            w.push(write_s);
            cached.push(cached_s);
            cold.push(cold_s);
            cold_resident.push(resident);
        }
    }
    progress(
        "host dd",
        format!("{} runs of {n} MiB done", args.host_runs),
    );
    Ok(json!({
        "write_s": w,
        "read_cached_s": cached,
        "read_cold_s": cold,
        "cold_resident_pages": cold_resident,
    }))
}

// ------------------------------------------------------------------ VMs

fn alive(pid: u32) -> bool {
    // Zombies count as gone: they hold no mount, socket or memory.
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// After a shutdown: the VM's directory is gone and so are its processes.
fn check_nothing_left(dir: &Path, pids: &[u32]) -> Result<(), String> {
    if dir.exists() {
        return Err(format!("{} was left behind", dir.display()));
    }
    let deadline = Instant::now() + REAP_PATIENCE;
    while pids.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    match pids.iter().find(|pid| alive(**pid)) {
        Some(pid) => Err(format!(
            "process {pid} of a VM that was shut down is still running"
        )),
        None => Ok(()),
    }
}

/// Every process of the VM: the VMM (its jail's supervisor too, when it
/// is jailed), virtiofsd and its sandboxed child.
fn vm_pids(vm: &MicroVm) -> Vec<u32> {
    let mut pids: Vec<u32> = vm.pid().into_iter().chain(vm.vmm_pid()).collect();
    pids.dedup();
    pids.extend(vm.virtiofsd_pids());
    pids
}

async fn shutdown(vm: MicroVm, agent: &AgentClient, dir: &Path) -> Result<f64, String> {
    let pids = vm_pids(&vm);
    let started = Instant::now();
    let status = vm
        .shutdown(agent)
        .await
        .map_err(|e| format!("shutdown: {e}"))?;
    let elapsed = started.elapsed();
    if !status.success() {
        return Err(format!("the VMM exited with {status} after Shutdown"));
    }
    check_nothing_left(dir, &pids)?;
    Ok(secs(elapsed))
}

/// One boot to agent-ready and shutdown; with a share, the agent's
/// `MountShare` in between.
async fn boot_once(
    args: &Args,
    virtiofsd: Option<&Path>,
    dir: &Path,
    step: Duration,
) -> Result<Value, String> {
    let started = Instant::now();
    // On an error below, dropping `vm` kills the VMM and virtiofsd and
    // removes `dir`.
    let mut vm = MicroVm::boot(&args.vm.spec(virtiofsd.map(Path::to_owned)), dir)
        .map_err(|e| format!("boot: {e}"))?;
    let agent = vm
        .connect_agent(Duration::from_secs(args.boot_timeout_s))
        .await
        .map_err(|e| format!("boot: {e}"))?;
    let ready = started.elapsed();
    let mount_share = match virtiofsd {
        None => None,
        Some(_) => {
            let started = Instant::now();
            let tag = SHARE_TAG.to_owned();
            match within(
                step,
                "MountShare",
                agent.call(RequestBody::MountShare { tag }),
            )
            .await?
            {
                ResponseBody::Done => Some(ms(started.elapsed())),
                other => return Err(format!("MountShare answered {other:?}")),
            }
        }
    };
    let shutdown_s = shutdown(vm, &agent, dir).await?;
    Ok(json!({
        "share": virtiofsd.is_some(),
        "ready_s": secs(ready),
        "mount_share_ms": mount_share,
        "shutdown_s": shutdown_s,
    }))
}

/// One trivial container from bind to unbind, each step timed.
async fn container_once(
    vm: &mut MicroVm,
    agent: &AgentClient,
    id: &str,
    bundle: &Bundle,
    step: Duration,
) -> Result<Value, String> {
    let vmm = vm.vmm_pid().ok_or("the VMM is gone")?;
    let c0 = counters(vmm)?;
    let t0 = Instant::now();
    let (spec, readonly) = bundle.spec()?;
    // As `runvm create` prepares a container: the program found on the host.
    let program = runvm::program_path::resolve(&spec, &bundle.rootfs());
    let rootfs = within(
        step,
        "share the rootfs",
        vm.share_rootfs(agent, id, &bundle.rootfs(), readonly),
    )
    .await?;
    let t1 = Instant::now();
    let c1 = counters(vmm)?;
    let containers = ContainerClient::new(agent);
    let init = within(
        step,
        "create",
        containers.create(id, spec, &rootfs, program, HostStdio::default()),
    )
    .await?;
    let t2 = Instant::now();
    let c2 = counters(vmm)?;
    within(step, "start", containers.start(id)).await?;
    let t3 = Instant::now();
    let status = within(step, "wait", containers.wait(id)).await?;
    let t4 = Instant::now();
    let c4 = counters(vmm)?;
    init.drain().await;
    if status != ExitStatus::Code(0) {
        return Err(format!("container {id} ended with {status:?}"));
    }
    within(step, "delete", containers.delete(id, false)).await?;
    let t5 = Instant::now();
    let c5 = counters(vmm)?;
    vm.unshare_rootfs(id)
        .map_err(|e| format!("unshare {id}: {e}"))?;
    let t6 = Instant::now();
    Ok(json!({
        "share_ms": ms(t1 - t0),
        "create_ms": ms(t2 - t1),
        "start_ms": ms(t3 - t2),
        "start_exit_ms": ms(t4 - t2),
        "delete_ms": ms(t5 - t4),
        "unshare_ms": ms(t6 - t5),
        "total_ms": ms(t6 - t0),
        "share_insn": emulated(&c1, &c0),
        "create_insn": emulated(&c2, &c1),
        "start_exit_insn": emulated(&c4, &c2),
        "delete_insn": emulated(&c5, &c4),
    }))
}

/// The VM's counters now.
fn counters(vmm_pid: u32) -> Result<GuestCounters, String> {
    kvm_stats::read(vmm_pid).map_err(|e| format!("cannot read the VM's counters: {e}"))
}

/// Guest instructions KVM emulated between two readings.
fn emulated(after: &GuestCounters, before: &GuestCounters) -> u64 {
    after.since(before).get("insn_emulation")
}

/// The guest's own process start, as reference: a shell in the guest runs
/// `/bin/true` `n` times (fork, exec, wait) and an empty loop of the same
/// length; returns the difference per `true`, in ms (the guest's clock,
/// /proc/uptime read by the shell's builtin) and in emulated instructions.
async fn guest_fork_exec(
    vm: &MicroVm,
    agent: &AgentClient,
    n: u32,
    step: Duration,
) -> Result<(f64, u64), String> {
    let vmm = vm.vmm_pid().ok_or("the VMM is gone")?;
    let script = |body: &str| {
        format!(
            "read a _ < /proc/uptime; i=0; while [ $i -lt {n} ]; do {body}i=$((i+1)); done; \
             read b _ < /proc/uptime; echo $a $b"
        )
    };
    let run = async |body: &str| -> Result<(f64, u64), String> {
        let before = counters(vmm)?;
        let (out, _) = guest_sh(agent, &script(body), step).await?;
        let insn = emulated(&counters(vmm)?, &before);
        let times: Vec<f64> = out
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        match times[..] {
            [a, b] => Ok(((b - a) * 1000.0, insn)),
            _ => Err(format!("unexpected output of the fork+exec loop: {out:?}")),
        }
    };
    let (busy_ms, busy_insn) = run("/bin/true; ").await?;
    let (idle_ms, idle_insn) = run("").await?;
    Ok((
        (busy_ms - idle_ms) / f64::from(n),
        busy_insn.saturating_sub(idle_insn) / u64::from(n),
    ))
}

/// `true` run by the agent outside any container (Exec, Wait; no
/// streams): what an exec round trip costs. Returns ms and emulated
/// instructions.
async fn plain_true(
    vm: &MicroVm,
    agent: &AgentClient,
    step: Duration,
) -> Result<(f64, u64), String> {
    let vmm = vm.vmm_pid().ok_or("the VMM is gone")?;
    let before = counters(vmm)?;
    let spec = ProcessSpec {
        argv: vec!["true".into()],
        env: vec!["PATH=/bin".into()],
        ..ProcessSpec::default()
    };
    let started = Instant::now();
    let status = within(step, "true (no container)", async {
        let relay = guest_process::spawn(agent, &spec, HostStdio::default()).await?;
        relay.finish(agent).await
    })
    .await?;
    let elapsed = started.elapsed();
    if status != ExitStatus::Code(0) {
        return Err(format!("true (no container) ended with {status:?}"));
    }
    Ok((ms(elapsed), emulated(&counters(vmm)?, &before)))
}

fn fmt_container(c: &Value) -> String {
    let f = |k: &str| c[k].as_f64().unwrap_or(f64::NAN);
    format!(
        "share {:.0}, create {:.0}, start→exit {:.0}, delete {:.0}, unshare {:.0}: total {:.0} ms",
        f("share_ms"),
        f("create_ms"),
        f("start_exit_ms"),
        f("delete_ms"),
        f("unshare_ms"),
        f("total_ms")
    )
}

/// The guest's `key` from /proc/meminfo, in KiB.
fn meminfo_kib(meminfo: &str, key: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
}

/// Sequential write and read on the share and on a guest tmpfs, rounds
/// interleaved; the first round (1 MiB) is not counted.
async fn fs_throughput(
    args: &Args,
    vm: &mut MicroVm,
    agent: &AgentClient,
    host_dir: &Path,
    step: Duration,
) -> Result<Value, String> {
    let n = args.fs_mib;
    // The writable bind: a bundle rootfs shared with readonly=false.
    let rootfs = host_dir
        .parent()
        .ok_or("the data directory has no parent")?;
    let guest_root = within(
        step,
        "share the writable rootfs",
        vm.share_rootfs(agent, FS_ID, rootfs, false),
    )
    .await?;
    let share_dir = format!("{guest_root}/data");
    guest_sh(
        agent,
        &format!(
            "mkdir -p {GUEST_TMPFS} && mount -t tmpfs -o size={}m tmpfs {GUEST_TMPFS}",
            n + 8
        ),
        step,
    )
    .await?;
    let (meminfo, _) = guest_sh(agent, "cat /proc/meminfo", step).await?;

    let drop_caches = "sync && echo 3 > /proc/sys/vm/drop_caches && ";
    let host_file = host_dir.join("guest.img");
    let mut results: Vec<(&str, Vec<Value>)> = [
        "share_write",
        "share_read",
        "tmpfs_write",
        "tmpfs_read",
        "dd_start",
    ]
    .into_iter()
    .map(|k| (k, Vec::new()))
    .collect();
    for round in 0..=args.fs_runs {
        let count = if round == 0 { 1 } else { n };
        let mut got = Vec::new();
        for dir in [share_dir.as_str(), GUEST_TMPFS] {
            let file = format!("{dir}/guest.img");
            let write = format!("if=/dev/zero of={file} bs=1M count={count} conv=fsync");
            got.push(guest_dd(agent, "", &write, "", count, step).await?);
            if dir == share_dir {
                // The bytes reached the host directory.
                let len = fs::metadata(&host_file)
                    .map_err(|e| format!("{}: {e}", host_file.display()))?
                    .len();
                if len != count * MIB {
                    return Err(format!(
                        "{} holds {len} bytes after the guest wrote {count} MiB",
                        host_file.display()
                    ));
                }
            }
            let read = format!("if={file} of=/dev/null bs=1M");
            let remove = format!("rm {file} && ");
            got.push(guest_dd(agent, drop_caches, &read, &remove, count, step).await?);
        }
        // What starting dd costs the guest (included in every figure above).
        got.push(
            guest_dd(
                agent,
                "",
                "if=/dev/zero of=/dev/null bs=1M count=0",
                "",
                0,
                step,
            )
            .await?,
        );
        let g = |i: usize| got[i]["guest_s"].as_f64().unwrap_or(f64::NAN);
        progress(
            &if round == 0 {
                "fs warm-up (1 MiB)".to_string()
            } else {
                format!("fs {round}/{}", args.fs_runs)
            },
            format!(
                "share write {:.2} s, read {:.2} s; tmpfs write {:.2} s, read {:.2} s; dd start {:.2} s",
                g(0),
                g(1),
                g(2),
                g(3),
                g(4)
            ),
        );
        if round > 0 {
            for ((_, list), value) in results.iter_mut().zip(got) {
                list.push(value);
            }
        }
    }
    guest_sh(agent, &format!("umount {GUEST_TMPFS}"), step).await?;
    vm.unshare_rootfs(FS_ID)
        .map_err(|e| format!("unshare {FS_ID}: {e}"))?;
    let mut out = serde_json::Map::new();
    for (key, list) in results {
        out.insert(key.to_string(), Value::Array(list));
    }
    out.insert(
        "guest_mem_total_kib".into(),
        json!(meminfo_kib(&meminfo, "MemTotal")),
    );
    out.insert(
        "guest_mem_available_kib".into(),
        json!(meminfo_kib(&meminfo, "MemAvailable")),
    );
    Ok(Value::Object(out))
}

/// The VM with a share in which the containers and the throughput runs go.
async fn main_vm(
    args: &Args,
    virtiofsd: &Path,
    dir: &Path,
    bundle: &Bundle,
    data_dir: &Path,
    step: Duration,
) -> Result<Value, String> {
    let started = Instant::now();
    let mut vm = MicroVm::boot(&args.vm.spec(Some(virtiofsd.to_owned())), dir)
        .map_err(|e| format!("boot: {e}"))?;
    let agent = vm
        .connect_agent(Duration::from_secs(args.boot_timeout_s))
        .await
        .map_err(|e| format!("boot: {e}"))?;
    let ready_s = secs(started.elapsed());
    progress("VM with a share ready", format!("{ready_s:.3} s"));
    let measured = async {
        let (uname, _) = guest_sh(&agent, "uname -r", step).await?;
        let (mut warmup, mut runs, mut plain) = (Vec::new(), Vec::new(), Vec::new());
        let (mut plain_insn, mut fork_exec) = (Vec::new(), Vec::new());
        for i in 0..args.container_warmup + args.container_runs {
            let c = container_once(&mut vm, &agent, &format!("bench{i}"), bundle, step).await?;
            // Interleaved, so that drift hits all alike.
            let (p, p_insn) = plain_true(&vm, &agent, step).await?;
            let (f, f_insn) = guest_fork_exec(&vm, &agent, 10, step).await?;
            let line = format!(
                "{}; exec round trip {p:.0} ms; the guest's own fork+exec {f:.0} ms",
                fmt_container(&c)
            );
            if i < args.container_warmup {
                progress(&format!("container warm-up {}", i + 1), line);
                warmup.push(c);
            } else {
                let k = i - args.container_warmup + 1;
                progress(&format!("container {k}/{}", args.container_runs), line);
                runs.push(c);
                plain.push(p);
                plain_insn.push(p_insn);
                fork_exec.push(json!({ "ms": f, "insn": f_insn }));
            }
        }
        let fs = fs_throughput(args, &mut vm, &agent, data_dir, step).await?;
        Ok::<Value, String>(json!({
            "guest_kernel": uname.trim(),
            "containers": {
                "warmup": warmup,
                "runs": runs,
                "plain_true_ms": plain,
                "plain_true_insn": plain_insn,
                "guest_fork_exec": fork_exec,
            },
            "fs": fs,
        }))
    }
    .await
    .map_err(|e| format!("{e}\nguest console ended with:\n{}", vm.console_tail()))?;
    // A copy of the guest console when asked for (an agent built with
    // the `phases` feature logs where container set-up spends its time).
    if let Some(keep) = std::env::var_os("RUNVM_BENCH_CONSOLE") {
        if let Err(e) = fs::copy(vm.console_log(), &keep) {
            progress("console", format!("cannot copy the console: {e}"));
        }
    }
    let shutdown_s = shutdown(vm, &agent, dir).await?;
    let mut measured = measured;
    measured["ready_s"] = json!(ready_s);
    measured["shutdown_s"] = json!(shutdown_s);
    Ok(measured)
}

fn version_of(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn measure(args: &Args) -> Result<Value, String> {
    // SAFETY: geteuid(2) cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("run as root: the share binds root filesystems and starts virtiofsd".into());
    }
    let virtiofsd = args.vm.find_virtiofsd()?;
    let work = WorkDir::create(&args.dir)?;
    let bundle = Bundle::build(&work.0.join("bundle"), &args.busybox)?;
    // The writable directory: a second bundle rootfs, shared read-write;
    // its data/ is where the host and the guest write.
    let fs_rootfs = work.0.join("fsbench/rootfs");
    busybox_rootfs(&fs_rootfs, &args.busybox, &["data"])?;
    let data_dir = fs_rootfs.join("data");

    // The host baseline first, while no VM of ours runs.
    let host = host_throughput(args, &data_dir)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let step = Duration::from_secs(args.step_timeout_s);
    runtime.block_on(async {
        // Boots: bare and with a share, alternating which goes first.
        let mut boots = Vec::new();
        for round in 0..args.boot_runs {
            let kinds: [Option<&Path>; 2] = if round % 2 == 0 {
                [None, Some(&virtiofsd)]
            } else {
                [Some(&virtiofsd), None]
            };
            for kind in kinds {
                let dir = work.0.join(format!("vm-boot{round}"));
                let mut b = boot_once(args, kind, &dir, step).await?;
                progress(
                    &format!(
                        "boot {}/{} {}",
                        round + 1,
                        args.boot_runs,
                        if kind.is_some() { "with share" } else { "bare" }
                    ),
                    format!(
                        "ready {:.3} s{}, shutdown {:.3} s",
                        b["ready_s"].as_f64().unwrap_or(f64::NAN),
                        b["mount_share_ms"]
                            .as_f64()
                            .map(|m| format!(", MountShare {m:.0} ms"))
                            .unwrap_or_default(),
                        b["shutdown_s"].as_f64().unwrap_or(f64::NAN),
                    ),
                );
                b["round"] = json!(round + 1);
                boots.push(b);
            }
        }
        let mut out = main_vm(
            args,
            &virtiofsd,
            &work.0.join("vm"),
            &bundle,
            &data_dir,
            step,
        )
        .await?;
        out["boots"] = Value::Array(boots);
        out["host_fs"] = host;
        out["virtiofsd"] = json!(virtiofsd.display().to_string());
        out["virtiofsd_version"] = json!(version_of(&virtiofsd));
        out["memory_mib"] = json!(args.vm.memory_mib);
        out["vcpus"] = json!(args.vm.vcpus);
        out["fs_bytes"] = json!(args.fs_mib * MIB);
        out["fs_runs"] = json!(args.fs_runs);
        out["host_runs"] = json!(args.host_runs);
        out["boot_runs"] = json!(args.boot_runs);
        out["container_runs"] = json!(args.container_runs);
        out["container_warmup"] = json!(args.container_warmup);
        Ok(out)
    })
}

fn main() {
    let args = Args::parse();
    match measure(&args) {
        Ok(value) => println!("{value:#}"),
        Err(e) => {
            eprintln!("containers-bench: FAILED: {e}");
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
