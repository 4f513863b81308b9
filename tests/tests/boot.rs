//! A microVM boots our kernel with our agent as PID 1 under our VMM, and
//! every way it can end is reported as such.

mod common;

use std::process::Stdio;

use common::*;

#[test]
fn boots_to_the_agent_and_powers_off_cleanly() {
    let run = run_with_timeout(vmm_command(&["--init-arg=--poweroff"]), BOOT_TIMEOUT);
    assert!(
        run.stdout.contains(&ready_line()),
        "no ready line; stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.status.code(), Some(0), "stderr:\n{}", run.stderr);
}

#[test]
fn sigterm_stops_a_running_vm() {
    let mut child = vmm_command(&[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start runvm-vmm");
    wait_for_line(&mut child, &ready_line(), BOOT_TIMEOUT);
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = wait_with_timeout(&mut child, std::time::Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("stopped by signal 15"), "stderr:\n{stderr}");
}

/// Also the one boot from the initramfs instead of the root disk.
#[test]
fn linux64_boot_reaches_the_agent_and_a_guest_reboot_is_reported() {
    let run = run_with_timeout(
        vmm_command_initramfs(&["--boot-protocol", "linux64", "--init-arg=--reboot"]),
        BOOT_TIMEOUT,
    );
    assert!(
        run.stdout.contains(&ready_line()),
        "no ready line; stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.status.code(), Some(3), "stderr:\n{}", run.stderr);
    assert!(
        run.stderr.contains("the guest reset"),
        "stderr:\n{}",
        run.stderr
    );
}

#[test]
fn two_vcpus_boot() {
    let run = run_with_timeout(
        vmm_command(&["--vcpus", "2", "--init-arg=--poweroff"]),
        BOOT_TIMEOUT,
    );
    assert!(
        run.stdout.contains(&ready_line()),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.status.code(), Some(0), "stderr:\n{}", run.stderr);
}
