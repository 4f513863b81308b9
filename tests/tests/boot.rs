//! A microVM boots our kernel with our agent as PID 1 under our VMM, and
//! every way it can end is reported as such.

mod common;

use std::process::Stdio;

use common::*;

/// The agent as the init program, as runvm boots it: mapped by the VMM's
/// loader, not read from an image.
#[test]
fn boots_to_the_agent_and_powers_off_cleanly() {
    let run = run_with_timeout(
        vmm_command_init_program(&["--init-arg=--poweroff"]),
        BOOT_TIMEOUT,
    );
    assert!(
        run.stdout.contains(&ready_line()),
        "no ready line; stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert_eq!(run.status.code(), Some(0), "stderr:\n{}", run.stderr);
}

/// Also: while it runs, every thread of the VMM, device threads included,
/// is under its seccomp filter.
#[test]
fn sigterm_stops_a_running_vm() {
    let socket = std::env::temp_dir().join(format!("runvm-boot-{}.sock", std::process::id()));
    let vsock = format!("--vsock-socket={}", socket.display());
    let mut child = vmm_command(&[&vsock])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start runvm-vmm");
    wait_for_line(&mut child, &ready_line(), BOOT_TIMEOUT);
    let threads = confinement_of_vmm_threads(child.id());
    let names: Vec<&str> = threads.iter().map(|(name, _)| name.as_str()).collect();
    let missing: Vec<&str> = ["runvm-vmm", "vcpu0", "spawner", "virtio-blk", "vsock"]
        .into_iter()
        .filter(|thread| !names.contains(thread))
        .collect();
    if !missing.is_empty() || threads.iter().any(|(_, mode)| mode != "2") {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_file(&socket);
        panic!("threads missing: {missing:?}; every thread must be in seccomp mode 2: {threads:?}");
    }
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = wait_with_timeout(&mut child, std::time::Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("stopped by signal 15"), "stderr:\n{stderr}");
    assert!(!socket.exists(), "the VMM left {}", socket.display());
}

/// [`confinement_of_threads`] of the process that runs the vCPUs: `pid` or,
/// should the VMM run in a child of its own (a jail), a descendant.
fn confinement_of_vmm_threads(pid: u32) -> Vec<(String, String)> {
    let mut pids = vec![pid];
    let mut next = 0;
    while next < pids.len() {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", pids[next]));
        for task in tasks.into_iter().flatten().flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
        next += 1;
    }
    pids.iter()
        .map(|&pid| confinement_of_threads(pid))
        .find(|threads| threads.iter().any(|(name, _)| name == "vcpu0"))
        .unwrap_or_else(|| confinement_of_threads(pid))
}

/// The name and seccomp mode (`Seccomp:` in its status) of each thread of
/// process `pid`.
fn confinement_of_threads(pid: u32) -> Vec<(String, String)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the VMM's threads");
    let mut threads = Vec::new();
    for task in tasks {
        let path = task.expect("a thread entry").path().join("status");
        let Ok(status) = std::fs::read_to_string(&path) else {
            continue; // the thread ended meanwhile
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .map(|value| value.trim().to_owned())
                .unwrap_or_default()
        };
        threads.push((field("Name:"), field("Seccomp:")));
    }
    threads
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
