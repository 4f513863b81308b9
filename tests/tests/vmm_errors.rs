//! Bad input to `runvm-vmm` fails at once with a message naming the
//! problem and boots nothing (or, for what only the guest can see, the
//! guest says what is wrong and the VM ends).

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const QUICK: Duration = Duration::from_secs(20);

fn fails_with(command: Command, expected: &str) {
    let run = run_with_timeout(command, QUICK);
    assert_eq!(run.status.code(), Some(1), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains(expected),
        "expected {expected:?} in stderr:\n{}",
        run.stderr
    );
    assert!(
        !run.stdout.contains("runvm-agent"),
        "a VM booted:\n{}",
        run.stdout
    );
}

#[test]
fn missing_kernel_is_named() {
    let mut command = Command::new(vmm_binary());
    command.args(["--kernel", "/nonexistent/vmlinux", "--init-arg=--poweroff"]);
    fails_with(command, "cannot open kernel /nonexistent/vmlinux");
}

#[test]
fn a_kernel_that_is_not_an_elf_vmlinux_is_refused() {
    let mut command = Command::new(vmm_binary());
    command.arg("--kernel").arg(initrd());
    fails_with(command, "cannot load kernel");
}

#[test]
fn missing_initramfs_is_named() {
    let mut command = Command::new(vmm_binary());
    command
        .arg("--kernel")
        .arg(kernel())
        .args(["--initrd", "/nonexistent/initramfs.cpio"]);
    fails_with(command, "cannot read initramfs /nonexistent/initramfs.cpio");
}

#[test]
fn missing_init_program_is_named() {
    let mut command = Command::new(vmm_binary());
    command
        .arg("--kernel")
        .arg(kernel())
        .args(["--init-program", "/nonexistent/runvm-agent"]);
    fails_with(
        command,
        "cannot use init program /nonexistent/runvm-agent: No such file or directory",
    );
}

/// An init program that is no static executable: runvm-vmm refuses a
/// script before booting; a dynamically linked (non-PIE) one passes that
/// check, and the guest's loader names the problem on the console, after
/// which the guest, without an init, resets. Nothing is left behind.
#[test]
fn an_init_program_that_is_no_static_executable_is_named() {
    let scratch = std::env::temp_dir().join(format!("runvm-badinit-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).expect("make the scratch directory");
    let script = scratch.join("script");
    std::fs::write(&script, b"#!/bin/sh\nexit 0\n").expect("write the script");
    let mut command = Command::new(vmm_binary());
    command
        .arg("--kernel")
        .arg(kernel())
        .arg("--init-program")
        .arg(&script);
    fails_with(
        command,
        &format!(
            "cannot use init program {}: not a static x86-64 executable",
            script.display()
        ),
    );

    let source = scratch.join("dynamic.c");
    let dynamic = scratch.join("dynamic");
    std::fs::write(&source, b"int main(void) { return 0; }\n").expect("write the C source");
    let built = Command::new("cc")
        .arg("-no-pie")
        .arg("-o")
        .arg(&dynamic)
        .arg(&source)
        .status()
        .expect("run cc (this test builds a dynamically linked program)");
    assert!(built.success(), "cc failed");
    let mut command = Command::new(vmm_binary());
    command
        .arg("--kernel")
        .arg(kernel())
        .arg("--init-program")
        .arg(&dynamic);
    let run = run_with_timeout(command, BOOT_TIMEOUT);
    std::fs::remove_dir_all(&scratch).expect("remove the scratch directory");
    assert!(
        run.stdout
            .contains("runvm-loader: the preloaded image needs an interpreter"),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.status.code(), Some(3), "stderr:\n{}", run.stderr);
}

#[test]
fn too_little_memory_is_refused() {
    fails_with(
        vmm_command(&["--memory", "16", "--init-arg=--poweroff"]),
        "guest memory of 16 MiB is too small: at least 64 MiB is needed",
    );
}

#[test]
fn no_kvm_is_reported_clearly() {
    // Hide /dev/kvm in a private mount namespace: a tmpfs over /dev.
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -t tmpfs none /dev && exec \"$0\" \"$@\"")
        .arg(vmm_binary())
        .arg("--kernel")
        .arg(kernel());
    fails_with(command, "cannot open /dev/kvm");
}

/// A jailed VMM (`--jail`, as root) reaches only the sockets in its jail:
/// one named outside is refused before anything starts. An error after
/// the fork (a missing kernel, found by the jailed VMM) keeps its status
/// and message through the jail's supervisor.
#[test]
fn a_jailed_vmm_refuses_sockets_outside_and_reports_errors() {
    // SAFETY: geteuid(2) cannot fail.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "run as root: --jail needs it"
    );
    let jail = std::env::temp_dir().join(format!("runvm-e2e-jail-{}", std::process::id()));
    std::fs::create_dir_all(&jail).expect("the jail directory");
    let jail_arg = jail.display().to_string();
    let outside = std::env::temp_dir().join("runvm-e2e-outside.sock");
    fails_with(
        vmm_command(&[
            "--jail",
            &jail_arg,
            "--vsock-socket",
            &outside.display().to_string(),
            "--init-arg=--poweroff",
        ]),
        "is not below the jail",
    );
    let mut command = Command::new(vmm_binary());
    command
        .args(["--jail", &jail_arg, "--kernel", "/nonexistent/vmlinux"])
        .arg("--root-disk")
        .arg(root_disk_image());
    fails_with(command, "cannot open kernel /nonexistent/vmlinux");
    std::fs::remove_dir_all(&jail).expect("remove the jail directory");
}
