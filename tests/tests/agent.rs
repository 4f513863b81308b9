//! The host/agent channel end to end: one microVM (the test image, with
//! busybox) and every exec scenario of the agent API against it. One VM
//! for all of them keeps the suite fast on a host where a boot takes
//! seconds; each scenario is reported by name when it fails.

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use runvm::agent_client::{connect_guest_port, AgentClient, ClientError};
use runvm::guest_process::{self, HostStdio, ProcessSpec};
use runvm::vm::{MicroVm, VmSpec};
use runvm_agent_api::{ExitStatus, RequestBody, ResponseBody, CONTROL_PORT};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Any one scenario; a hung one fails instead of hanging the suite. Every
/// guest-kernel instruction may be emulated: 10 MiB takes up to a minute.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);

/// A writer whose bytes the test reads afterwards.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn bytes(&self) -> Vec<u8> {
        self.0.lock().expect("not poisoned").clone()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

impl AsyncWrite for Captured {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

struct Output {
    status: ExitStatus,
    stdout: Captured,
    stderr: Captured,
}

fn spec(argv: &[&str]) -> ProcessSpec {
    ProcessSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into()],
        ..ProcessSpec::default()
    }
}

/// Runs `argv` in the guest, feeding `stdin` (or /dev/null), capturing
/// stdout and stderr.
async fn run(
    agent: &AgentClient,
    argv: &[&str],
    stdin: Option<Vec<u8>>,
) -> Result<Output, ClientError> {
    let stdout = Captured::default();
    let stderr = Captured::default();
    let stdio = HostStdio {
        stdin: stdin.map(|data| Box::new(std::io::Cursor::new(data)) as guest_process::HostReader),
        stdout: Some(Box::new(stdout.clone())),
        stderr: Some(Box::new(stderr.clone())),
    };
    let relay = guest_process::spawn(agent, &spec(argv), stdio).await?;
    let status = relay.finish(agent).await?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Deterministic pseudo-random bytes (xorshift), so a corrupted byte
/// anywhere shows.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

type Scenario = for<'a> fn(&'a Guest) -> Pin<Box<dyn Future<Output = Result<(), String>> + 'a>>;

struct Guest {
    agent: AgentClient,
    socket: std::path::PathBuf,
}

macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

fn echo(g: &Guest) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        let out = run(&g.agent, &["echo", "hello", "from the guest"], None)
            .await
            .map_err(|e| e.to_string())?;
        check!(
            out.stdout.text() == "hello from the guest\n",
            "stdout {:?}",
            out.stdout.text()
        );
        check!(out.status == ExitStatus::Code(0), "status {:?}", out.status);
        Ok(())
    })
}

fn stdout_and_stderr_stay_apart(
    g: &Guest,
) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        let out = run(&g.agent, &["sh", "-c", "echo out; echo err >&2"], None)
            .await
            .map_err(|e| e.to_string())?;
        check!(
            out.stdout.text() == "out\n",
            "stdout {:?}",
            out.stdout.text()
        );
        check!(
            out.stderr.text() == "err\n",
            "stderr {:?}",
            out.stderr.text()
        );
        Ok(())
    })
}

fn cat_through_stdin(g: &Guest) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        let input = b"line one\nline two\n".to_vec();
        let out = run(&g.agent, &["cat"], Some(input.clone()))
            .await
            .map_err(|e| e.to_string())?;
        check!(
            out.stdout.bytes() == input,
            "stdout {:?}",
            out.stdout.text()
        );
        check!(out.status == ExitStatus::Code(0), "status {:?}", out.status);
        Ok(())
    })
}

fn exit_code_3(g: &Guest) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        let out = run(&g.agent, &["sh", "-c", "exit 3"], None)
            .await
            .map_err(|e| e.to_string())?;
        check!(out.status == ExitStatus::Code(3), "status {:?}", out.status);
        check!(
            out.status.shell_code() == 3,
            "shell code {}",
            out.status.shell_code()
        );
        Ok(())
    })
}

fn sigkill_is_137(g: &Guest) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        let relay = guest_process::spawn(&g.agent, &spec(&["sleep", "600"]), HostStdio::default())
            .await
            .map_err(|e| e.to_string())?;
        let process = relay.started.process;
        g.agent
            .call(RequestBody::Signal {
                process,
                signal: libc::SIGKILL,
            })
            .await
            .map_err(|e| e.to_string())?;
        let status = relay.finish(&g.agent).await.map_err(|e| e.to_string())?;
        check!(
            status == ExitStatus::Signal(libc::SIGKILL),
            "status {status:?}"
        );
        check!(
            status.shell_code() == 137,
            "shell code {}",
            status.shell_code()
        );
        Ok(())
    })
}

fn ten_mib_byte_exact(g: &Guest) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        // seq's output is known exactly: 1..=1500000 is 10,888,896 bytes.
        let out = run(&g.agent, &["seq", "1", "1500000"], None)
            .await
            .map_err(|e| e.to_string())?;
        let expected: String = (1..=1_500_000u32).map(|i| format!("{i}\n")).collect();
        let back = out.stdout.bytes();
        check!(back.len() >= 10 << 20, "only {} bytes", back.len());
        check!(
            back.len() == expected.len(),
            "got {} of {} bytes",
            back.len(),
            expected.len()
        );
        if let Some(at) = back
            .iter()
            .zip(expected.as_bytes())
            .position(|(a, b)| a != b)
        {
            return Err(format!("first differing byte at offset {at}"));
        }
        check!(out.status == ExitStatus::Code(0), "status {:?}", out.status);
        Ok(())
    })
}

fn one_mib_through_stdin_and_back(
    g: &Guest,
) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        let data = noise(1 << 20);
        let out = run(&g.agent, &["cat"], Some(data.clone()))
            .await
            .map_err(|e| e.to_string())?;
        let back = out.stdout.bytes();
        check!(
            back.len() == data.len(),
            "got {} of {} bytes",
            back.len(),
            data.len()
        );
        if let Some(at) = back.iter().zip(&data).position(|(a, b)| a != b) {
            return Err(format!("first differing byte at offset {at}"));
        }
        check!(out.status == ExitStatus::Code(0), "status {:?}", out.status);
        Ok(())
    })
}

fn twenty_concurrent_execs(g: &Guest) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        let labels: Vec<String> = (0..20).map(|i| format!("process-{i}")).collect();
        let runs = labels
            .iter()
            .map(|label| async move { run(&g.agent, &["echo", label], None).await });
        let outputs = futures_join_all(runs.collect()).await;
        for (label, out) in labels.iter().zip(outputs) {
            let out = out.map_err(|e| format!("{label}: {e}"))?;
            check!(
                out.stdout.text() == format!("{label}\n"),
                "{label}: stdout {:?}",
                out.stdout.text()
            );
            check!(
                out.status == ExitStatus::Code(0),
                "{label}: status {:?}",
                out.status
            );
        }
        Ok(())
    })
}

/// A client vanishes while its process is still writing: the process gets
/// SIGPIPE as on a host, and the agent goes on serving everyone else.
fn client_disconnects_mid_stream(
    g: &Guest,
) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        let other = AgentClient::connect(&g.socket)
            .await
            .map_err(|e| e.to_string())?;
        let (token, mut stream) = other.open_stream().await.map_err(|e| e.to_string())?;
        let request = runvm_agent_api::ExecRequest {
            argv: vec!["yes".into(), "a line of output".into()],
            env: vec!["PATH=/bin".into()],
            stdout: Some(token),
            ..Default::default()
        };
        let process = match other
            .call(RequestBody::Exec(request))
            .await
            .map_err(|e| e.to_string())?
        {
            ResponseBody::Started { process, .. } => process,
            answer => return Err(format!("exec answered {answer:?}")),
        };
        let mut some = vec![0u8; 64 << 10];
        stream
            .read_exact(&mut some)
            .await
            .map_err(|e| format!("reading yes: {e}"))?;
        drop(stream);
        drop(other);
        // The process is still known to the agent; waiting from the main
        // connection gives its end.
        let status = guest_process::wait(&g.agent, process)
            .await
            .map_err(|e| e.to_string())?;
        check!(
            status == ExitStatus::Signal(libc::SIGPIPE),
            "yes ended with {status:?}"
        );
        let out = run(&g.agent, &["echo", "still here"], None)
            .await
            .map_err(|e| e.to_string())?;
        check!(
            out.stdout.text() == "still here\n",
            "after the disconnect: {:?}",
            out.stdout.text()
        );
        Ok(())
    })
}

/// Garbage on a control connection costs that connection only.
fn garbage_is_survived(g: &Guest) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        let mut raw = connect_guest_port(&g.socket, CONTROL_PORT)
            .await
            .map_err(|e| e.to_string())?;
        // A frame that claims 4 GiB, then junk.
        raw.write_all(&[0xff, 0xff, 0xff, 0xff, b'{', b'x'])
            .await
            .map_err(|e| e.to_string())?;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut sink)).await;
        drop(raw);
        let mut raw = connect_guest_port(&g.socket, CONTROL_PORT)
            .await
            .map_err(|e| e.to_string())?;
        raw.write_all(&[0, 0, 0, 5])
            .await
            .map_err(|e| e.to_string())?;
        raw.write_all(b"nope!").await.map_err(|e| e.to_string())?;
        drop(raw);
        match g
            .agent
            .call(RequestBody::Version)
            .await
            .map_err(|e| e.to_string())?
        {
            ResponseBody::Version { .. } => Ok(()),
            answer => Err(format!("version answered {answer:?}")),
        }
    })
}

fn missing_command_is_an_error(
    g: &Guest,
) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        match run(&g.agent, &["/no/such/program"], None).await {
            Err(ClientError::Agent(e)) => {
                check!(
                    e.message.contains("/no/such/program"),
                    "error does not name the program: {e}"
                );
                Ok(())
            }
            Err(e) => Err(format!("unexpected error {e}")),
            Ok(out) => Err(format!("it ran: {:?}", out.status)),
        }
    })
}

/// Orphans are re-parented to the agent (PID 1), which must reap them.
fn orphans_are_reaped(g: &Guest) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        let out = run(
            &g.agent,
            &["sh", "-c", "sleep 0 & sleep 0 & sleep 0 & exit 0"],
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
        check!(out.status == ExitStatus::Code(0), "status {:?}", out.status);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ps = run(&g.agent, &["ps", "-o", "pid,stat,args"], None)
            .await
            .map_err(|e| e.to_string())?;
        let listing = ps.stdout.text();
        let zombies: Vec<&str> = listing
            .lines()
            .filter(|line| {
                line.split_whitespace()
                    .nth(1)
                    .is_some_and(|stat| stat.starts_with('Z'))
            })
            .collect();
        check!(
            ps.status == ExitStatus::Code(0),
            "ps: {:?} {}",
            ps.status,
            ps.stderr.text()
        );
        check!(zombies.is_empty(), "zombies left: {zombies:?}\n{listing}");
        Ok(())
    })
}

fn terminal_and_resize(g: &Guest) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        let output = Captured::default();
        let relay = guest_process::spawn_on_terminal(
            &g.agent,
            &spec(&["sh", "-c", "tty; stty size"]),
            Box::new(std::io::Cursor::new(Vec::new())),
            Box::new(output.clone()),
            Some((30, 100)),
        )
        .await
        .map_err(|e| e.to_string())?;
        let status = relay.finish(&g.agent).await.map_err(|e| e.to_string())?;
        let text = output.text();
        check!(
            status == ExitStatus::Code(0),
            "status {status:?}, output {text:?}"
        );
        check!(text.contains("/dev/pts/"), "no pty in {text:?}");
        check!(text.contains("30 100"), "window size not applied: {text:?}");
        Ok(())
    })
}

/// What the VMM's host profile puts in init's environment (GLIBC_TUNABLES on
/// the emulating host) reaches every process.
fn host_profile_environment_reaches_processes(
    g: &Guest,
) -> Pin<Box<dyn Future<Output = Result<(), String>> + '_>> {
    Box::pin(async move {
        let cmdline = std::process::Command::new(common::vmm_binary())
            .arg("--kernel")
            .arg(common::kernel())
            .arg("--print-cmdline")
            .output()
            .map_err(|e| format!("runvm-vmm --print-cmdline: {e}"))?;
        let cmdline = String::from_utf8_lossy(&cmdline.stdout).into_owned();
        let expected = cmdline
            .split_whitespace()
            .find_map(|param| param.strip_prefix("GLIBC_TUNABLES="))
            .unwrap_or("");
        let out = run(&g.agent, &["sh", "-c", "echo \"$GLIBC_TUNABLES\""], None)
            .await
            .map_err(|e| e.to_string())?;
        check!(
            out.stdout.text() == format!("{expected}\n"),
            "GLIBC_TUNABLES in the guest is {:?}, the command line says {expected:?}",
            out.stdout.text()
        );
        Ok(())
    })
}

/// Polls all futures to completion, keeping their order.
async fn futures_join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, result) in futures.iter_mut().zip(results.iter_mut()) {
            if result.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => *result = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results
        .into_iter()
        .map(|r| r.expect("every future completed"))
        .collect()
}

#[test]
fn agent_api_end_to_end() {
    common::require_kvm();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("runvm-e2e-agent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spec = VmSpec {
            vmm: common::vmm_binary(),
            kernel: common::kernel(),
            image: common::tools_image(),
            memory_mib: 128,
            vcpus: 1,
            virtiofsd: None,
        };
        let mut vm = MicroVm::boot(&spec, &dir).expect("boot the VM");
        let agent = vm
            .connect_agent(common::BOOT_TIMEOUT)
            .await
            .expect("the agent answers");
        let guest = Guest {
            agent,
            socket: vm.vsock_socket(),
        };

        let scenarios: &[(&str, Scenario)] = &[
            ("echo", echo),
            ("stdout and stderr stay apart", stdout_and_stderr_stay_apart),
            ("cat through stdin", cat_through_stdin),
            ("exit code 3", exit_code_3),
            ("SIGKILL is 137", sigkill_is_137),
            ("10 MiB byte-exact", ten_mib_byte_exact),
            (
                "1 MiB through stdin and back",
                one_mib_through_stdin_and_back,
            ),
            ("20 concurrent execs", twenty_concurrent_execs),
            (
                "client disconnects mid-stream",
                client_disconnects_mid_stream,
            ),
            ("garbage is survived", garbage_is_survived),
            ("missing command is an error", missing_command_is_an_error),
            ("orphans are reaped", orphans_are_reaped),
            ("terminal and resize", terminal_and_resize),
            (
                "host profile environment reaches processes",
                host_profile_environment_reaches_processes,
            ),
        ];
        let mut failures = Vec::new();
        for (name, scenario) in scenarios {
            match tokio::time::timeout(SCENARIO_TIMEOUT, scenario(&guest)).await {
                Ok(Ok(())) => eprintln!("ok: {name}"),
                Ok(Err(e)) => failures.push(format!("{name}: {e}")),
                Err(_) => failures.push(format!("{name}: no result within {SCENARIO_TIMEOUT:?}")),
            }
        }

        let console = vm.console_tail();
        let status = vm.shutdown(&guest.agent).await.expect("shutdown");
        assert!(
            failures.is_empty(),
            "{} scenario(s) failed:\n{}\nguest console:\n{console}",
            failures.len(),
            failures.join("\n")
        );
        assert!(
            status.success(),
            "the VMM exited with {status} after Shutdown; console:\n{console}"
        );
        assert!(
            !dir.exists(),
            "the VM directory {} was left behind",
            dir.display()
        );
    });
}
