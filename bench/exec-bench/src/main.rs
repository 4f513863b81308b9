//! Host/agent channel benchmark: boots one microVM from the test image
//! (agent + busybox) and measures, in that one VM,
//!
//! - exec round-trip latency: `Version` on the control connection alone,
//!   `true` with no streams (Exec, Wait, Exited), `echo x` with its stdout
//!   streamed to the host;
//! - stdout throughput guest to host: `head -c BYTES /dev/zero` with stdout
//!   streamed to the host and counted there, next to the same bytes
//!   through a pipe inside the guest (timed by the guest) and through a
//!   host pipe (the same busybox, on the host).
//!
//! Prints the raw figures as JSON on stdout (progress on stderr);
//! `bench/exec_report.py` turns them into the report. Run it through
//! `bench/exec.sh`.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use clap::Parser;
use runvm::agent_client::AgentClient;
use runvm::guest_process::{self, HostStdio, ProcessSpec};
use runvm::vm::{MicroVm, VmSpec};
use runvm_agent_api::{ExitStatus, RequestBody, ResponseBody};
use serde_json::{json, Value};
use tokio::io::AsyncWrite;

#[derive(Parser, Debug)]
#[command(about = "Exec latency and stdout throughput of the host/agent channel, in one microVM")]
struct Args {
    /// runvm-vmm binary.
    #[arg(long)]
    vmm: PathBuf,
    /// Guest kernel (vmlinux).
    #[arg(long)]
    kernel: PathBuf,
    /// Guest image with busybox (build/rootfs-tools.ext4).
    #[arg(long)]
    #[arg(alias = "initrd")]
    image: PathBuf,
    /// Directory for the VM's socket and console log; must not exist, is
    /// removed with the VM.
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 128)]
    memory_mib: u32,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Measured runs of each latency probe.
    #[arg(long, default_value_t = 30)]
    latency_runs: usize,
    /// Uncounted runs of each latency probe before the measured ones.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Bytes per throughput run, in MiB.
    #[arg(long, default_value_t = 16)]
    throughput_mib: u64,
    /// Measured runs of each throughput probe in the guest.
    #[arg(long, default_value_t = 3)]
    throughput_runs: usize,
    /// Runs of the host pipe baseline.
    #[arg(long, default_value_t = 5)]
    host_runs: usize,
    /// Bytes per run of the second, larger host pipe baseline, in MiB (0: skip).
    #[arg(long, default_value_t = 1024)]
    host_large_mib: u64,
    /// The busybox on the host; the test image holds a copy of the same one.
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    #[arg(long, default_value_t = 120)]
    boot_timeout_s: u64,
    /// Any single measured step that takes longer fails the benchmark.
    #[arg(long, default_value_t = 600)]
    step_timeout_s: u64,
}

/// Counts what a guest stream delivers, when the first and the last byte
/// arrived, and keeps the first few KiB (for checks and error messages).
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<SinkState>>);

#[derive(Default)]
struct SinkState {
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    kept: Vec<u8>,
}

const SINK_KEEP: usize = 4096;

impl Sink {
    fn bytes(&self) -> u64 {
        self.0.lock().expect("not poisoned").bytes
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned").kept).into_owned()
    }
    fn span(&self) -> Option<(Instant, Instant)> {
        let state = self.0.lock().expect("not poisoned");
        Some((state.first?, state.last?))
    }
}

impl AsyncWrite for Sink {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let now = Instant::now();
        let mut state = self.0.lock().expect("not poisoned");
        state.first.get_or_insert(now);
        state.last = Some(now);
        state.bytes += buf.len() as u64;
        let room = SINK_KEEP.saturating_sub(state.kept.len());
        state.kept.extend_from_slice(&buf[..room.min(buf.len())]);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// One finished guest process.
struct Run {
    started: Instant,
    elapsed: Duration,
    stdout: Sink,
    stderr: Sink,
}

/// Runs `argv` in the guest with stdin on /dev/null; stdout and stderr
/// are streamed to the host only if asked. The clock runs from just
/// before the first request (stream connections included) until the
/// process has been reported exited and every output stream has ended.
/// Anything but exit status 0 is an error.
async fn run(
    agent: &AgentClient,
    argv: &[&str],
    stdout: bool,
    stderr: bool,
    timeout: Duration,
) -> Result<Run, String> {
    let out = Sink::default();
    let err = Sink::default();
    let spec = ProcessSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        ..ProcessSpec::default()
    };
    let stdio = HostStdio {
        stdin: None,
        stdout: stdout.then(|| Box::new(out.clone()) as guest_process::HostWriter),
        stderr: stderr.then(|| Box::new(err.clone()) as guest_process::HostWriter),
    };
    let started = Instant::now();
    let status = tokio::time::timeout(timeout, async {
        let relay = guest_process::spawn(agent, &spec, stdio).await?;
        relay.finish(agent).await
    })
    .await
    .map_err(|_| format!("{argv:?} did not finish within {timeout:?}"))?
    .map_err(|e| format!("{argv:?}: {e}"))?;
    let elapsed = started.elapsed();
    if status != ExitStatus::Code(0) {
        return Err(format!(
            "{argv:?} ended with {status:?}; stderr: {:?}",
            err.text()
        ));
    }
    Ok(Run {
        started,
        elapsed,
        stdout: out,
        stderr: err,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `Version` on the control connection: the channel alone, no process.
async fn version_round_trip(agent: &AgentClient, timeout: Duration) -> Result<f64, String> {
    let started = Instant::now();
    let answer = tokio::time::timeout(timeout, agent.call(RequestBody::Version))
        .await
        .map_err(|_| format!("Version not answered within {timeout:?}"))?
        .map_err(|e| format!("Version: {e}"))?;
    let elapsed = started.elapsed();
    match answer {
        ResponseBody::Version { .. } => Ok(ms(elapsed)),
        other => Err(format!("Version answered {other:?}")),
    }
}

/// `true`: Exec, Wait, Exited, no stream connections.
async fn true_round_trip(agent: &AgentClient, timeout: Duration) -> Result<f64, String> {
    let r = run(agent, &["true"], false, false, timeout).await?;
    Ok(ms(r.elapsed))
}

/// `echo x` with stdout streamed: one stream connection, Exec, Wait,
/// Exited, and the output's end of file.
async fn echo_round_trip(agent: &AgentClient, timeout: Duration) -> Result<f64, String> {
    let r = run(agent, &["echo", "x"], true, false, timeout).await?;
    if r.stdout.text() != "x\n" {
        return Err(format!("echo x printed {:?}", r.stdout.text()));
    }
    Ok(ms(r.elapsed))
}

/// `head -c BYTES /dev/zero` with stdout streamed to the host and counted.
async fn channel_throughput(
    agent: &AgentClient,
    bytes: u64,
    timeout: Duration,
) -> Result<Value, String> {
    let count = bytes.to_string();
    let r = run(
        agent,
        &["head", "-c", &count, "/dev/zero"],
        true,
        true,
        timeout,
    )
    .await?;
    if r.stdout.bytes() != bytes {
        return Err(format!(
            "head -c {bytes}: the host received {} bytes",
            r.stdout.bytes()
        ));
    }
    let (first, last) = r.stdout.span().ok_or("no output arrived")?;
    Ok(json!({
        "bytes": bytes,
        "wall_s": r.elapsed.as_secs_f64(),
        "first_byte_s": (first - r.started).as_secs_f64(),
        "last_byte_s": (last - r.started).as_secs_f64(),
        "stream_s": (last - first).as_secs_f64(),
    }))
}

/// `pipeline` run by the guest's shell between two reads of /proc/uptime
/// (a shell builtin reading a file: no process is started for the clock).
async fn guest_timed(
    agent: &AgentClient,
    pipeline: &str,
    bytes: u64,
    timeout: Duration,
) -> Result<Value, String> {
    let script = format!(
        "read t0 rest < /proc/uptime; {pipeline}; read t1 rest < /proc/uptime; echo \"$t0 $t1\""
    );
    let r = run(agent, &["sh", "-c", &script], true, true, timeout).await?;
    let text = r.stdout.text();
    let times: Vec<f64> = text
        .split_whitespace()
        .map(|t| t.parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("guest timing {text:?}: {e}"))?;
    let [t0, t1] = times[..] else {
        return Err(format!("guest timing {text:?}: expected two uptimes"));
    };
    if !r.stderr.text().is_empty() {
        return Err(format!("{pipeline}: stderr {:?}", r.stderr.text()));
    }
    Ok(json!({
        "bytes": bytes,
        "guest_s": t1 - t0,
        "wall_s": r.elapsed.as_secs_f64(),
    }))
}

/// The same pipeline through a host pipe, with the same busybox; timed
/// around the whole command (host process start-up included: ~1 ms).
fn host_pipe(busybox: &Path, bytes: u64) -> Result<Value, String> {
    let bb = busybox.display().to_string();
    let script = r#""$0" head -c "$1" /dev/zero | "$0" cat > /dev/null"#;
    let started = Instant::now();
    let status = Command::new(busybox)
        .args(["sh", "-c", script])
        .arg(busybox)
        .arg(bytes.to_string())
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("{bb} sh -c {script:?}: {e}"))?;
    let elapsed = started.elapsed();
    if !status.success() {
        return Err(format!("{bb} sh -c {script:?}: {status}"));
    }
    Ok(json!({ "bytes": bytes, "wall_s": elapsed.as_secs_f64() }))
}

fn secs(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

fn progress(what: &str, detail: impl std::fmt::Display) {
    eprintln!("exec-bench: {what:<28} {detail}");
}

async fn measure_with_agent(
    args: &Args,
    agent: &AgentClient,
    step: Duration,
    boot_s: f64,
) -> Result<Value, String> {
    let uname = run(agent, &["uname", "-r"], true, true, step).await?;
    let guest_kernel = uname.stdout.text().trim().to_string();

    // Latency: the three probes interleaved, so drift hits them alike.
    for _ in 0..args.warmup {
        version_round_trip(agent, step).await?;
        true_round_trip(agent, step).await?;
        echo_round_trip(agent, step).await?;
    }
    let (mut version, mut true_ms, mut echo) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..args.latency_runs {
        version.push(version_round_trip(agent, step).await?);
        true_ms.push(true_round_trip(agent, step).await?);
        echo.push(echo_round_trip(agent, step).await?);
        progress(
            &format!("latency {}/{}", i + 1, args.latency_runs),
            format!(
                "Version {:.2} ms, true {:.1} ms, echo x {:.1} ms",
                version[i], true_ms[i], echo[i]
            ),
        );
    }

    // Throughput: one small uncounted round, then the measured rounds, the
    // probes interleaved. The empty pipeline is what starting `head` and
    // `cat` costs the guest.
    let bytes = args.throughput_mib << 20;
    let pipe = format!("head -c {bytes} /dev/zero | cat > /dev/null");
    let head_only = format!("head -c {bytes} /dev/zero > /dev/null");
    channel_throughput(agent, 1 << 20, step).await?;
    guest_timed(
        agent,
        "head -c 1048576 /dev/zero | cat > /dev/null",
        1 << 20,
        step,
    )
    .await?;
    let (mut channel, mut guest_pipe) = (Vec::new(), Vec::new());
    let (mut guest_head, mut guest_empty) = (Vec::new(), Vec::new());
    for i in 0..args.throughput_runs {
        let c = channel_throughput(agent, bytes, step).await?;
        progress(
            &format!("channel {}/{}", i + 1, args.throughput_runs),
            format!(
                "{} MiB in {:.2} s (first to last byte {:.2} s)",
                args.throughput_mib,
                secs(&c["wall_s"]),
                secs(&c["stream_s"])
            ),
        );
        channel.push(c);
        let p = guest_timed(agent, &pipe, bytes, step).await?;
        progress(
            &format!("guest pipe {}/{}", i + 1, args.throughput_runs),
            format!(
                "{} MiB in {:.2} s (guest clock)",
                args.throughput_mib,
                secs(&p["guest_s"])
            ),
        );
        guest_pipe.push(p);
        let h = guest_timed(agent, &head_only, bytes, step).await?;
        progress(
            &format!("guest head only {}/{}", i + 1, args.throughput_runs),
            format!(
                "{} MiB in {:.2} s (guest clock)",
                args.throughput_mib,
                secs(&h["guest_s"])
            ),
        );
        guest_head.push(h);
        let e = guest_timed(agent, "head -c 0 /dev/zero | cat > /dev/null", 0, step).await?;
        progress(
            &format!("guest empty pipe {}/{}", i + 1, args.throughput_runs),
            format!("0 bytes in {:.2} s (guest clock)", secs(&e["guest_s"])),
        );
        guest_empty.push(e);
    }
    Ok(json!({
        "boot_s": boot_s,
        "guest_kernel": guest_kernel,
        "latency_ms": { "version": version, "true": true_ms, "echo": echo },
        "throughput": {
            "channel": channel,
            "guest_pipe": guest_pipe,
            "guest_head": guest_head,
            "guest_empty_pipe": guest_empty,
        },
    }))
}

fn measure(args: &Args) -> Result<Value, String> {
    // The host baseline first, while no VM runs.
    let bytes = args.throughput_mib << 20;
    host_pipe(&args.busybox, bytes)?; // warm-up
    let mut host = Vec::new();
    for _ in 0..args.host_runs {
        host.push(host_pipe(&args.busybox, bytes)?);
    }
    let mut host_large = Vec::new();
    if args.host_large_mib > 0 {
        for _ in 0..args.host_runs.min(3) {
            host_large.push(host_pipe(&args.busybox, args.host_large_mib << 20)?);
        }
    }
    progress(
        "host pipe",
        format!("{} runs done", host.len() + host_large.len()),
    );

    let spec = VmSpec {
        vmm: args.vmm.clone(),
        kernel: args.kernel.clone(),
        image: args.image.clone(),
        memory_mib: args.memory_mib,
        vcpus: args.vcpus,
        // The channel alone: no share, no virtiofsd.
        virtiofsd: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;
    let step = Duration::from_secs(args.step_timeout_s);
    let mut guest = runtime.block_on(async {
        // On any error below, dropping `vm` kills the VMM and removes its
        // directory.
        let boot_started = Instant::now();
        let mut vm = MicroVm::boot(&spec, &args.dir).map_err(|e| format!("boot: {e}"))?;
        let agent = vm
            .connect_agent(Duration::from_secs(args.boot_timeout_s))
            .await
            .map_err(|e| format!("boot: {e}"))?;
        let boot_s = boot_started.elapsed().as_secs_f64();
        progress("agent answered after", format!("{boot_s:.3} s"));
        let measured = measure_with_agent(args, &agent, step, boot_s)
            .await
            .map_err(|e| format!("{e}\nguest console ended with:\n{}", vm.console_tail()))?;
        let status = vm
            .shutdown(&agent)
            .await
            .map_err(|e| format!("shutdown: {e}"))?;
        if !status.success() {
            return Err(format!("the VMM exited with {status} after Shutdown"));
        }
        Ok::<Value, String>(measured)
    })?;
    guest["bytes"] = json!(bytes);
    guest["memory_mib"] = json!(args.memory_mib);
    guest["vcpus"] = json!(args.vcpus);
    guest["latency_runs"] = json!(args.latency_runs);
    guest["warmup"] = json!(args.warmup);
    guest["throughput_runs"] = json!(args.throughput_runs);
    guest["host"] = json!({ "pipe": host, "pipe_large": host_large });
    Ok(guest)
}

fn main() {
    let args = Args::parse();
    match measure(&args) {
        Ok(value) => println!("{value:#}"),
        Err(e) => {
            eprintln!("exec-bench: FAILED: {e}");
            std::process::exit(1);
        }
    }
}
