//! `runvm vm-run`: a command run in a fresh microVM from the command line,
//! with stdio relayed and its exit status passed on.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{kernel, runvm_binary, tools_image, vmm_binary, wait_with_timeout, BOOT_TIMEOUT};

/// `runvm vm-run` with the built VMM, kernel and test image.
fn vm_run(extra: &[&str]) -> Command {
    vm_run_with_kernel(&kernel(), extra)
}

fn vm_run_with_kernel(kernel: &std::path::Path, extra: &[&str]) -> Command {
    let mut command = Command::new(runvm_binary());
    command
        .arg("vm-run")
        .arg("--vmm")
        .arg(vmm_binary())
        .arg("--kernel")
        .arg(kernel)
        .arg("--image")
        .arg(tools_image())
        .args(extra);
    command
}

/// Directories runvm made for the VMs of process `pid` that are still there.
fn leftovers(pid: u32) -> Vec<String> {
    let prefix = format!("runvm-{pid}-");
    std::fs::read_dir(std::env::temp_dir())
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn stdin_stdout_stderr_and_exit_status_cross_the_vm_boundary() {
    common::require_kvm();
    let mut child = vm_run(&["-i", "--", "sh", "-c", "cat; echo to-stderr >&2; exit 3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start runvm");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(b"through the guest\n")
        .expect("write stdin");
    drop(stdin);
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let stdout = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = wait_with_timeout(&mut child, BOOT_TIMEOUT);
    let stdout = stdout.join().expect("stdout reader");
    let stderr = stderr.join().expect("stderr reader");
    assert_eq!(stdout, "through the guest\n", "stderr:\n{stderr}");
    assert!(stderr.contains("to-stderr"), "stderr:\n{stderr}");
    assert_eq!(status.code(), Some(3), "stderr:\n{stderr}");
    assert_eq!(leftovers(pid), Vec::<String>::new());
}

#[test]
fn a_vmm_that_cannot_boot_is_reported_and_cleaned_up() {
    common::require_kvm();
    let output = vm_run_with_kernel(
        std::path::Path::new("/nonexistent/vmlinux"),
        &["--", "true"],
    )
    .stdin(Stdio::null())
    .output()
    .expect("run runvm");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(125), "stderr:\n{stderr}");
    assert!(stderr.contains("/nonexistent/vmlinux"), "stderr:\n{stderr}");
    assert!(
        stderr.contains("before its agent answered"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn tty_without_a_terminal_is_refused_before_booting() {
    let output = vm_run(&["--tty", "--", "sh"])
        .stdin(Stdio::null())
        .output()
        .expect("run runvm");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(125), "stderr:\n{stderr}");
    assert!(
        stderr.contains("--tty needs a terminal"),
        "stderr:\n{stderr}"
    );
}

#[test]
fn bad_env_entries_are_named() {
    let output = vm_run(&["--env", "JUSTANAME", "--", "true"])
        .stdin(Stdio::null())
        .output()
        .expect("run runvm");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(125), "stderr:\n{stderr}");
    assert!(stderr.contains("JUSTANAME"), "stderr:\n{stderr}");
}
