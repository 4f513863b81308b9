//! `runvm-vmm` snapshots: a VM booted to the agent's ready point with a
//! virtio-fs device that has no backend yet (`--fs tag=share,pending`) is
//! saved (`--snapshot-to`, SIGUSR1) and restored in new VMM processes
//! (`--restore`) with new vsock sockets and CIDs and a virtiofsd each,
//! where the agent answers and mounts and reads the share; damaged
//! snapshots are refused with a clear error. Prints the time to
//! agent-ready, cold and restored, of the same run.

mod common;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    require_kvm, root_disk_image, vmm_binary, vmm_command, wait_with_timeout, Captured,
    BOOT_TIMEOUT,
};
use runvm::agent_client::AgentClient;
use runvm::guest_process::{self, HostStdio, ProcessSpec};
use runvm::share::find_virtiofsd;
use runvm_agent_api::{
    ExitStatus, RequestBody, ResponseBody, GUEST_SHARE_DIR, READY_LINE, READY_PORT,
};

/// A restore maps a file and sets registers: it must not take a boot's time.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the template waits before it is restored.
const TEMPLATE_AGE: Duration = Duration::from_secs(20);

/// A directory of its own, removed afterwards.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let path = std::env::temp_dir().join(format!("runvm-e2e-snapshot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("scratch dir");
        Scratch(path)
    }
    fn join(&self, part: &str) -> PathBuf {
        self.0.join(part)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills a VMM left running by a failed assertion.
struct Vmm(Child);

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Vmm {
    fn start(mut command: Command) -> Vmm {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start runvm-vmm");
        Vmm(child)
    }

    fn signal(&self, signo: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.0.id() as libc::pid_t, signo) }, 0);
    }

    /// Waits for the VMM to end; its status and stderr.
    fn finish(mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let status = wait_with_timeout(&mut self.0, timeout);
        let mut stderr = String::new();
        if let Some(mut pipe) = self.0.stderr.take() {
            let _ = pipe.read_to_string(&mut stderr);
        }
        (status, stderr)
    }
}

/// The template's virtio-fs tag.
const SHARE_TAG: &str = "share";
/// What the shared directory holds, read back in the guest.
const SHARED_TEXT: &str = "served by a virtiofsd bound at restore\n";

/// A virtiofsd serving `dir` on `socket`, killed (if it has not ended with
/// its VMM's connection) when dropped.
struct Virtiofsd(Child);

impl Virtiofsd {
    fn start(socket: &Path, dir: &Path) -> Virtiofsd {
        let binary = find_virtiofsd()
            .expect("virtiofsd not found (RUNVM_VIRTIOFSD, PATH, ~/.cargo/bin, /usr/libexec)");
        let child = Command::new(binary)
            .arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", dir.display()))
            .arg("--sandbox=none")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start virtiofsd");
        // A jailed VMM gets the sockets present when it starts.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "virtiofsd made no socket");
            std::thread::sleep(Duration::from_millis(10));
        }
        Virtiofsd(child)
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The directory the restored VMs share: a file to read, and busybox to
/// read it with (the image has the agent only).
fn shared_dir(scratch: &Scratch) -> PathBuf {
    let dir = scratch.join("shared");
    std::fs::create_dir(&dir).expect("shared dir");
    std::fs::write(dir.join("hello.txt"), SHARED_TEXT).expect("shared file");
    std::fs::copy("/bin/busybox", dir.join("busybox")).expect("a static /bin/busybox");
    dir
}

/// Through the agent behind `socket`: mounts the share, and reads the file
/// in it with the busybox from it.
fn read_through_share(socket: &Path) -> String {
    run_shared_busybox(
        socket,
        true,
        &["cat", &format!("{GUEST_SHARE_DIR}/hello.txt")],
    )
}

/// The guest's uptime in seconds (/proc/uptime, from its monotonic boot
/// clock), read with the share's busybox (the share already mounted).
fn guest_uptime(socket: &Path) -> f64 {
    let text = run_shared_busybox(socket, false, &["cat", "/proc/uptime"]);
    text.split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the guest's uptime from {text:?}"))
}

/// Runs the share's busybox with `args` in the guest behind `socket`
/// (mounting the share first when `mount`), and returns its output.
fn run_shared_busybox(socket: &Path, mount: bool, args: &[&str]) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let run = async {
            let agent = AgentClient::connect(socket).await.expect("the agent");
            if mount {
                let mounted = agent
                    .call(RequestBody::MountShare {
                        tag: SHARE_TAG.into(),
                    })
                    .await
                    .expect("MountShare");
                assert_eq!(mounted, ResponseBody::Done);
            }
            let mut argv = vec![format!("{GUEST_SHARE_DIR}/busybox")];
            argv.extend(args.iter().map(|a| a.to_string()));
            let spec = ProcessSpec {
                argv,
                env: vec!["PATH=/bin".into()],
                ..ProcessSpec::default()
            };
            let (stdout, stderr) = (Captured::default(), Captured::default());
            let stdio = HostStdio {
                stdin: None,
                stdout: stdout.writer(),
                stderr: stderr.writer(),
            };
            let relay = guest_process::spawn(&agent, &spec, stdio)
                .await
                .expect("exec");
            let status = relay.finish(&agent).await.expect("wait");
            assert_eq!(status, ExitStatus::Code(0), "{args:?}: {}", stderr.text());
            stdout.text()
        };
        tokio::time::timeout(RESTORE_TIMEOUT, run)
            .await
            .expect("running busybox from the share timed out")
    })
}

/// The host end of the agent's readiness port: what the agent says there,
/// once it has closed the connection.
fn wait_for_ready_port(listener: &UnixListener, timeout: Duration) -> String {
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                stream.set_nonblocking(false).expect("blocking");
                stream
                    .set_read_timeout(Some(timeout))
                    .expect("read timeout");
                let mut said = String::new();
                stream.read_to_string(&mut said).expect("the ready line");
                return said;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "the agent was not ready within {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept on the readiness port: {e}"),
        }
    }
}

/// Asks the agent behind `socket` for its version until it answers; on
/// failure the guest's console, `console`, is shown.
fn agent_version(socket: &Path, console: &Path, timeout: Duration) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let deadline = Instant::now() + timeout;
        loop {
            // One attempt may hang on a guest that does not run: bounded.
            let attempt = async {
                match AgentClient::connect(socket).await {
                    Ok(client) => client
                        .call(RequestBody::Version)
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = tokio::time::timeout(left, attempt)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
            match answer {
                Ok(ResponseBody::Version { agent, .. }) => return agent,
                Ok(other) => panic!("Version answered with {other:?}"),
                Err(e) if Instant::now() > deadline => panic!(
                    "the agent did not answer: {e}; console:\n{}",
                    std::fs::read_to_string(console).unwrap_or_default()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
}

/// A restore of `snapshot`, its share served by the backend at `fs`.
fn restore_command(snapshot: &Path, socket: &Path, cid: u32, fs: &Path) -> Command {
    require_kvm();
    let mut command = Command::new(vmm_binary());
    command
        .arg("--restore")
        .arg(snapshot)
        .arg("--root-disk")
        .arg(root_disk_image())
        .arg("--vsock-socket")
        .arg(socket)
        .arg(format!("--vsock-cid={cid}"))
        .arg(format!("--fs=tag={SHARE_TAG},socket={}", fs.display()))
        .arg(format!("--serial=file:{}", console(socket).display()));
    command
}

/// Where the console of the VM behind `socket` goes.
fn console(socket: &Path) -> PathBuf {
    socket.with_extension("console")
}

/// A restore of `snapshot` that must fail before any guest runs, with a
/// message containing `expected`.
fn assert_refused(scratch: &Scratch, snapshot: &Path, expected: &str) {
    let socket = scratch.join("refused.sock");
    // Refused before any backend is reached: there is none.
    let fs = scratch.join("no-virtiofsd.sock");
    let (status, stderr) =
        Vmm::start(restore_command(snapshot, &socket, 5, &fs)).finish(RESTORE_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{}: {stderr}", snapshot.display());
    assert!(
        stderr.contains(expected) && stderr.contains("cannot be restored"),
        "{}: expected {expected:?} in: {stderr}",
        snapshot.display()
    );
    assert!(!socket.exists(), "a refused restore left its socket behind");
}

/// A copy of the snapshot in `from`, as directory `name`, with the byte at
/// `at` of file `file` flipped (or the file emptied when `at` is None).
fn damaged_copy(
    scratch: &Scratch,
    from: &Path,
    name: &str,
    file: &str,
    at: Option<u64>,
) -> PathBuf {
    let dir = scratch.join(name);
    std::fs::create_dir_all(&dir).expect("damaged dir");
    for part in ["state", "memory"] {
        if part == file {
            std::fs::copy(from.join(part), dir.join(part)).expect("copy");
        } else {
            std::fs::hard_link(from.join(part), dir.join(part)).expect("link");
        }
    }
    let target = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.join(file))
        .expect("open the copy");
    match at {
        Some(at) => {
            let mut byte = [0u8];
            target.read_exact_at(&mut byte, at).expect("read a byte");
            target.write_all_at(&[byte[0] ^ 0x20], at).expect("flip it");
        }
        None => target.set_len(0).expect("empty it"),
    }
    dir
}

/// Every thread of `pid` runs under a seccomp filter: the device threads a
/// restored VM starts before its vCPUs (the vhost-user connection's watch
/// among them) as much as the others.
fn assert_every_thread_confined(pid: u32) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the VMM's threads");
    let mut seen = Vec::new();
    for task in tasks {
        let path = task.expect("a thread").path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|line| line.strip_prefix("Seccomp:"))
            .map(str::trim)
            .unwrap_or("?")
            .to_string();
        seen.push((name.trim().to_string(), mode));
    }
    let names: Vec<&str> = seen.iter().map(|(name, _)| name.as_str()).collect();
    // Thread names are cut to 15 bytes.
    for wanted in ["vcpu0", "virtio-blk", "vsock", "vhost-user-watc"] {
        assert!(names.contains(&wanted), "no {wanted} thread: {seen:?}");
    }
    assert!(
        seen.iter().all(|(_, mode)| mode == "2"),
        "unconfined threads: {seen:?}"
    );
}

#[test]
fn a_vm_saved_at_agent_ready_is_restored_in_new_processes_and_answers() {
    let scratch = Scratch::new();
    let snapshot = scratch.join("template");
    std::fs::create_dir(&snapshot).expect("snapshot dir");

    // Cold boot to the agent's ready point, announced on the readiness port.
    let socket = scratch.join("cold.sock");
    let ready = UnixListener::bind(format!("{}_{READY_PORT}", socket.display())).expect("bind");
    let started = Instant::now();
    let cold = Vmm::start(vmm_command(&[
        "--vsock-socket",
        socket.to_str().expect("utf-8"),
        "--snapshot-to",
        snapshot.to_str().expect("utf-8"),
        &format!("--fs=tag={SHARE_TAG},pending"),
        &format!("--serial=file:{}", console(&socket).display()),
    ]));
    assert_eq!(wait_for_ready_port(&ready, BOOT_TIMEOUT), READY_LINE);
    let cold_ready = started.elapsed();
    // A host connection that is over does not stand in the way.
    let version = agent_version(&socket, &console(&socket), RESTORE_TIMEOUT);
    cold.signal(libc::SIGUSR1);
    let (status, stderr) = cold.finish(RESTORE_TIMEOUT);
    assert!(status.success(), "saving failed ({status}): {stderr}");
    assert!(stderr.contains("the VM was saved to"), "{stderr}");
    // The guest's clock stopped here, at most this long after it started.
    let guest_time_at_save = started.elapsed();
    assert!(!socket.exists(), "the saved VM's socket was left behind");
    // The guest's driver had set the pending device up (status 15:
    // DRIVER_OK), so the restores below hand a backend live rings.
    let state = std::fs::read(snapshot.join("state")).expect("the state file");
    let pending =
        format!(r#"{{"kind":{{"Fs":{{"tag":"{SHARE_TAG}"}}}},"transport":{{"status":15,"#);
    assert!(
        String::from_utf8_lossy(&state).contains(&pending),
        "no live pending virtio-fs device in the template's state"
    );

    // Two VMs restored from it at once, each with its own socket and CID;
    // the second in a jail, its socket inside, the snapshot outside.
    let jail = scratch.join("jail");
    std::fs::create_dir(&jail).expect("jail dir");
    let sockets = [scratch.join("warm1.sock"), jail.join("warm2.sock")];
    // Each with a virtiofsd of its own for the template's share.
    let shared = shared_dir(&scratch);
    let fs_sockets = [scratch.join("fs1.sock"), jail.join("fs2.sock")];
    let _servers: Vec<Virtiofsd> = fs_sockets
        .iter()
        .map(|fs| Virtiofsd::start(fs, &shared))
        .collect();
    let resaved = scratch.join("resaved");
    std::fs::create_dir(&resaved).expect("second snapshot dir");
    // A template is restored long after it was saved: the guest's clocks
    // must resume where they stopped, not jump by the template's age.
    std::thread::sleep(TEMPLATE_AGE);
    let started = Instant::now();
    let mut first = restore_command(&snapshot, &sockets[0], 7, &fs_sockets[0]);
    // Tried at the end: a VM whose share has a backend cannot be saved.
    first.arg("--snapshot-to").arg(&resaved);
    let first = Vmm::start(first);
    assert_eq!(
        agent_version(&sockets[0], &console(&sockets[0]), RESTORE_TIMEOUT),
        version
    );
    let warm_ready = started.elapsed();
    assert_every_thread_confined(first.0.id());
    let mut jailed = restore_command(&snapshot, &sockets[1], 8, &fs_sockets[1]);
    jailed.arg("--jail").arg(&jail);
    let second = Vmm::start(jailed);
    assert_eq!(
        agent_version(&sockets[1], &console(&sockets[1]), RESTORE_TIMEOUT),
        version
    );
    // The guest's driver set the device up in the template; the backend
    // bound at restore serves it.
    for socket in &sockets {
        assert_eq!(read_through_share(socket), SHARED_TEXT);
    }
    let uptime = guest_uptime(&sockets[0]);
    let expected = guest_time_at_save + started.elapsed();
    assert!(
        uptime < expected.as_secs_f64() + 5.0,
        "the restored guest's uptime is {uptime:.1} s, more than the {:.1} s it ran: its \
         clock jumped by the template's age ({TEMPLATE_AGE:?})",
        expected.as_secs_f64()
    );
    // The first still answers once the second runs beside it.
    assert_eq!(
        agent_version(&sockets[0], &console(&sockets[0]), RESTORE_TIMEOUT),
        version
    );
    first.signal(libc::SIGUSR1);
    let (status, stderr) = first.finish(RESTORE_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("virtio-fs device served by a backend, which cannot be saved"),
        "{stderr}"
    );
    second.signal(libc::SIGTERM);
    let (status, stderr) = second.finish(RESTORE_TIMEOUT);
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{stderr}");
    eprintln!(
        "agent ready: cold boot {:.2} s, restored {:.3} s ({:.3}x)",
        cold_ready.as_secs_f64(),
        warm_ready.as_secs_f64(),
        warm_ready.as_secs_f64() / cold_ready.as_secs_f64()
    );

    // Damage of every kind is refused before a guest runs.
    let state_len = std::fs::metadata(snapshot.join("state"))
        .expect("state")
        .len();
    let cases = [
        (
            "state-body",
            "state",
            Some(state_len - 10),
            "the state is damaged",
        ),
        ("state-header", "state", Some(20), "header is damaged"),
        ("state-empty", "state", None, "never completed"),
        (
            "memory-byte",
            "memory",
            Some(0x10_0000 + 123),
            "memory file is damaged",
        ),
        ("memory-short", "memory", None, "bytes where"),
    ];
    for (name, file, at, expected) in cases {
        let damaged = damaged_copy(&scratch, &snapshot, name, file, at);
        assert_refused(&scratch, &damaged, expected);
    }
    // A share the template has no device for.
    let socket = scratch.join("othertag.sock");
    let mut command = restore_command(&snapshot, &socket, 9, &fs_sockets[0]);
    command.arg(format!("--fs=tag=other,socket={}", fs_sockets[1].display()));
    let (status, stderr) = Vmm::start(command).finish(RESTORE_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("it has no virtio-fs device tagged \"other\""),
        "{stderr}"
    );
    // A snapshot restored with devices other than its own.
    let socket = scratch.join("nodisk.sock");
    let mut command = Command::new(vmm_binary());
    command
        .args([
            "--restore",
            snapshot.to_str().expect("utf-8"),
            "--vsock-socket",
        ])
        .arg(&socket)
        .arg("--serial=none");
    let (status, stderr) = Vmm::start(command).finish(RESTORE_TIMEOUT);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("it needs a root disk"), "{stderr}");
}
