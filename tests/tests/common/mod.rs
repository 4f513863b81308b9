//! Finding the built artifacts and running `runvm-vmm` with a time limit.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A boot on the emulating host takes ~4 s; this only catches a hung guest.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The line the agent prints once it is up.
pub fn ready_line() -> String {
    format!("runvm-agent {} ready", env!("CARGO_PKG_VERSION"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// An artifact from `make build`, overridable by an environment variable.
fn artifact(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(default));
    assert!(
        path.exists(),
        "{} not found: run `make build` first (or set {variable})",
        path.display()
    );
    path
}

pub fn vmm_binary() -> PathBuf {
    artifact("RUNVM_VMM", "target/release/runvm-vmm")
}

pub fn kernel() -> PathBuf {
    artifact("RUNVM_KERNEL", "build/vmlinux")
}

/// The guest image as an initramfs (the VMM's `--initrd` path).
pub fn initrd() -> PathBuf {
    artifact("RUNVM_INITRD", "build/initramfs.cpio")
}

/// The guest image runvm boots: the agent, which the VMM preloads and
/// its loader maps (`--init-program`).
pub fn image() -> PathBuf {
    artifact("RUNVM_IMAGE", "build/runvm-agent")
}

/// The agent as an ext4 root disk (the VMM's `--root-disk` path).
pub fn root_disk_image() -> PathBuf {
    artifact("RUNVM_ROOT_DISK", "build/rootfs.ext4")
}

/// The test image: the agent plus busybox, for running commands in the guest.
pub fn tools_image() -> PathBuf {
    artifact("RUNVM_TOOLS_IMAGE", "build/rootfs-tools.ext4")
}

pub fn runvm_binary() -> PathBuf {
    artifact("RUNVM_RUNVM", "target/release/runvm")
}

/// VM tests need KVM; without it they fail, loudly, rather than skip.
pub fn require_kvm() {
    let kvm = Path::new("/dev/kvm");
    assert!(
        kvm.exists(),
        "/dev/kvm is missing: these tests boot real microVMs and need KVM"
    );
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(kvm) {
        panic!("/dev/kvm cannot be opened ({e}): these tests need access to KVM");
    }
}

/// `runvm-vmm` with the built kernel and root disk and the given extra
/// arguments.
pub fn vmm_command(extra: &[&str]) -> Command {
    vmm_booting("--root-disk", root_disk_image(), extra)
}

/// [`vmm_command`] with the agent as the init program instead (what
/// runvm boots).
pub fn vmm_command_init_program(extra: &[&str]) -> Command {
    vmm_booting("--init-program", image(), extra)
}

/// [`vmm_command`] with the image as an initramfs instead.
pub fn vmm_command_initramfs(extra: &[&str]) -> Command {
    vmm_booting("--initrd", initrd(), extra)
}

/// `runvm-vmm` booting the built kernel with `image` given by `flag`.
fn vmm_booting(flag: &str, image: PathBuf, extra: &[&str]) -> Command {
    require_kvm();
    let mut command = Command::new(vmm_binary());
    command
        .arg("--kernel")
        .arg(kernel())
        .arg(flag)
        .arg(image)
        .args(extra);
    command
}

pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to its end, killing it after `timeout`.
pub fn run_with_timeout(mut command: Command, timeout: Duration) -> Finished {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start runvm-vmm");
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_with_timeout(&mut child, timeout);
    Finished {
        status,
        stdout: stdout.recv().unwrap_or_default(),
        stderr: stderr.recv().unwrap_or_default(),
    }
}

/// Waits for `child`, killing it and failing the test after `timeout`.
pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("cannot wait for runvm-vmm") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("runvm-vmm did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = sender.send(text);
        });
    }
    receiver
}

/// Reads `child`'s stdout line by line until `wanted` appears; returns what
/// was read. Fails the test after `timeout` or at end of output.
pub fn wait_for_line(child: &mut Child, wanted: &str, timeout: Duration) -> String {
    let stdout = child.stdout.take().expect("stdout must be piped");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut seen = String::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match receiver.recv_timeout(left) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(wanted) {
                    return seen;
                }
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{wanted:?} did not appear within {timeout:?}; output was:\n{seen}");
            }
        }
    }
}

/// Output of a guest process gathered in memory, for assertions: the
/// writer half goes into `HostStdio`, `text` reads what arrived.
#[derive(Clone, Default)]
pub struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("not poisoned")).into_owned()
    }

    pub fn writer(&self) -> Option<runvm::guest_process::HostWriter> {
        Some(Box::new(self.clone()))
    }
}

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.0.lock().expect("not poisoned").extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
