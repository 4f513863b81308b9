//! What runvm's command line does on a hostile or broken host: a guest
//! that stops answering, a planted pid-file symlink, an unsafe `--root`,
//! runtime descriptors that must not reach the VMM or virtiofsd. (Bad
//! input to `runvm-vmm` itself: `vmm_errors.rs`.)

#[path = "common/cgroup_view.rs"]
mod cgroup_view;
mod common;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/jail_view.rs"]
mod jail_view;
#[path = "common/runtime_cli.rs"]
mod runtime_cli;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cgroup_view::CgroupView;
use harness::Output;
use runtime_cli::{one_at_a_time, unique, Cli};
use serde_json::{json, Value};

// These drive the runtime under test (`$RUNVM_TEST_RUNTIME`, e.g. runc,
// or the runvm build) like conmon does; the ones about runvm's VM say so.

impl Cli {
    /// `run` and how long it took.
    #[track_caller]
    fn timed(&self, args: &[&str]) -> (Output, Duration) {
        let started = Instant::now();
        let output = self.run(args);
        (output, started.elapsed())
    }

    /// A busybox bundle `scratch/name` running `args`, its host cgroup
    /// below [`Cli::cgroup_parent`] (returned), then `edit` applied.
    fn bundle(
        &self,
        name: &str,
        args: &[&str],
        edit: impl FnOnce(&mut Value),
    ) -> (PathBuf, String) {
        let dir = self.scratch.join(name);
        harness::busybox_rootfs(&dir.join("rootfs"));
        let mut spec = self.command(&["spec"]);
        spec.current_dir(&dir);
        harness::run(&mut spec).ok();
        let path = dir.join("config.json");
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("json");
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        let cgroup = format!("{}/{name}", self.cgroup_parent);
        config["linux"]["cgroupsPath"] = json!(cgroup);
        edit(&mut config);
        std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write");
        (dir, cgroup)
    }

    /// `run --detach` of `bundle` as `id`; the process's output goes to
    /// `scratch/<id>.out`; returns the pid-file process.
    #[track_caller]
    fn run_detached(&self, bundle: &Path, id: &str) -> u32 {
        let out = self.scratch.join(format!("{id}.out"));
        let pid_path = self.scratch.join(format!("{id}.pid"));
        harness::run_to_files(
            &mut self.command(&[
                "run",
                "--detach",
                "--bundle",
                &bundle.display().to_string(),
                "--pid-file",
                &pid_path.display().to_string(),
                id,
            ]),
            &out,
            &self.scratch.join(format!("{id}.err")),
        )
        .ok();
        harness::wait_for("the container prints `up`", || {
            let text = harness::read_text(&out);
            text.contains("up").then_some(()).ok_or(text)
        });
        let text = harness::read_text(&pid_path);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("the pid file holds {text:?}"))
    }

    /// The processes of runvm's VM for the containers under `--root`
    /// whose command line names `program`.
    /// The VMM of the one container running: its supervisor and the
    /// jailed VMM.
    #[track_caller]
    fn vmm(&self) -> jail_view::VmmProcesses {
        jail_view::vmm_processes(&harness::processes_referencing(&[self
            .root
            .display()
            .to_string()]))
    }

    fn vm_processes(&self, program: &str) -> Vec<u32> {
        harness::processes_referencing(&[self.root.display().to_string()])
            .into_iter()
            .filter(|(_, line)| line.contains(program))
            .map(|(pid, _)| pid)
            .collect()
    }

    /// Nothing of the container is left: no process refers to `--root`
    /// (monitor, VMM, virtiofsd), `--root` is empty, no mount below the
    /// scratch directory, no host cgroup.
    #[track_caller]
    fn assert_gone(&self, id: &str, cgroup: &str) {
        self.run(&["state", id]).fails();
        harness::assert_no_process_references(&[self.root.display().to_string()]);
        harness::assert_empty_dir(&self.root);
        harness::assert_no_mounts_below(self.scratch.path());
        let view = CgroupView::of(cgroup);
        assert!(!view.exists(), "{} is left", view.dir.display());
    }
}

/// Reaps our child `pid` (the pid-file process of `run --detach`: this
/// test process started it through the runtime, like conmon does).
fn reap_within(pid: u32, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        let mut status = 0;
        // SAFETY: waitpid(2) on one pid with a valid status pointer.
        let got = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        if got == pid as libc::pid_t || (got < 0 && !harness::alive(pid)) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How much longer than its deadline a call may take: starting runvm,
/// reading the state, connecting, on a busy host.
const DEADLINE_MARGIN: Duration = Duration::from_secs(20);

/// A call on a guest that no longer answers fails at its deadline with a
/// message naming the operation and the deadline.
#[track_caller]
fn assert_deadline(cli: &Cli, args: &[&str], operation: &str, deadline: Duration) {
    let (output, took) = cli.timed(args);
    let output = output.fails();
    let expected = format!(
        "runvm {operation}: the agent did not answer within {} s",
        deadline.as_secs()
    );
    assert!(
        output.stderr.contains(&expected),
        "expected {expected:?}: {output}"
    );
    assert!(
        took >= deadline && took < deadline + DEADLINE_MARGIN,
        "`{}` took {took:?}, its deadline is {deadline:?}",
        args.join(" ")
    );
}

/// runvm only: with the VM frozen from the host (SIGSTOP to the VMM, a
/// guest that stops answering while runvm holds the container's lock),
/// kill, pause and ps end with a clear error at their deadlines, state
/// answers at once (it asks the host only), and `delete --force` ends and
/// leaves nothing: no monitor, VMM or virtiofsd, no state, no mount, no
/// host cgroup.
#[test]
fn a_frozen_guest_fails_calls_at_their_deadlines_and_delete_force_ends_it() {
    use runvm::deadlines;
    let _one = one_at_a_time();
    let cli = Cli::new("errors", "frozen");
    assert!(
        cli.runtime.is_runvm,
        "this test freezes runvm's VMM; run it without RUNVM_TEST_RUNTIME"
    );
    let id: &str = &unique("frozen");
    let (bundle, cgroup) = cli.bundle(
        "bundle",
        &["sh", "-c", "echo up; exec sleep 1000000"],
        |_| {},
    );
    let pid = cli.run_detached(&bundle, id);
    // The jailed VMM runs the vCPUs; its supervisor only waits.
    let vmm = cli.vmm();
    // SAFETY: kill(2) on the VMM this test's container started.
    unsafe { libc::kill(vmm.jailed as libc::pid_t, libc::SIGSTOP) };

    assert_deadline(&cli, &["kill", id, "TERM"], "kill", deadlines::KILL);
    let (state, took) = cli.timed(&["state", id]);
    let state: Value = serde_json::from_str(&state.ok().stdout).expect("state is JSON");
    assert_eq!(state["status"], "running", "{state}");
    assert!(took < DEADLINE_MARGIN, "state took {took:?}");
    assert_deadline(&cli, &["pause", id], "pause", deadlines::FREEZE);
    assert_eq!(
        serde_json::from_str::<Value>(&cli.run(&["state", id]).ok().stdout).expect("json")
            ["status"],
        "running",
        "a pause that failed leaves the status alone"
    );
    assert_deadline(&cli, &["ps", id], "ps", deadlines::QUERY);

    let (deleted, took) = cli.timed(&["delete", "--force", id]);
    deleted.ok();
    assert!(took < DEADLINE_MARGIN, "delete --force took {took:?}");
    assert!(
        reap_within(pid, harness::WAIT_PATIENCE),
        "the pid-file process {pid} did not end"
    );
    for pid in [vmm.jailed, vmm.supervisor] {
        assert!(!harness::alive(pid), "the stopped VMM's {pid} is left");
    }
    cli.assert_gone(id, &cgroup);
}

/// The socket inodes among a process's descriptors, and whether one of
/// them is the directory `dir`.
fn descriptors(pid: u32, dir: &Path) -> (BTreeSet<String>, bool) {
    let mut sockets = BTreeSet::new();
    let mut holds_dir = false;
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("cannot list the descriptors of {pid}: {e}"));
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let text = target.display().to_string();
        if text.starts_with("socket:") {
            sockets.insert(text);
        } else if target == dir {
            holds_dir = true;
        }
    }
    (sockets, holds_dir)
}

/// runvm only: no descriptor of the runtime reaches the VMM or virtiofsd.
/// A createRuntime hook (run while `create` and the monitor still talk
/// over their socket pair, the VM up) records the sockets of the monitor
/// and of `create`; neither the VMM nor virtiofsd may share one of them
/// (a shared socket inode is an inherited descriptor), nor hold the
/// container's (locked) state directory open.
#[test]
fn runtime_descriptors_do_not_reach_the_vmm_or_virtiofsd() {
    let _one = one_at_a_time();
    let cli = Cli::new("errors", "fds");
    assert!(
        cli.runtime.is_runvm,
        "this test is about runvm's VMM and virtiofsd; run it without RUNVM_TEST_RUNTIME"
    );
    let id: &str = &unique("fds");
    let record = cli.scratch.join("fds");
    std::fs::create_dir_all(&record).expect("dir");
    let script = format!(
        "pid=$(sed -n 's/.*\"pid\":\\([0-9]*\\).*/\\1/p'); \
         for f in /proc/$pid/fd/*; do readlink $f; done > {dir}/monitor; \
         for f in /proc/$PPID/fd/*; do readlink $f; done > {dir}/create",
        dir = record.display()
    );
    let (bundle, cgroup) = cli.bundle(
        "bundle",
        &["sh", "-c", "echo up; exec sleep 1000000"],
        |c| {
            c["hooks"] =
                json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", script]}]});
        },
    );
    let pid = cli.run_detached(&bundle, id);
    let read = |name: &str| -> BTreeSet<String> {
        harness::read_text(&record.join(name))
            .lines()
            .filter(|line| line.starts_with("socket:"))
            .map(str::to_owned)
            .collect()
    };
    let (monitor, create) = (read("monitor"), read("create"));
    // The monitor had its sync socket and its agent connections then.
    assert!(
        monitor.len() >= 2,
        "the hook saw no monitor sockets: {monitor:?}"
    );
    assert!(!create.is_empty(), "the hook saw no create sockets");
    let container_dir = cli.root.join(id);
    let vmm = cli.vmm();
    let virtiofsd = cli.vm_processes("virtiofsd");
    assert!(!virtiofsd.is_empty(), "no virtiofsd");
    for (what, pid) in [
        ("the VMM's supervisor", vmm.supervisor),
        ("the jailed VMM", vmm.jailed),
    ]
    .into_iter()
    .chain(virtiofsd.iter().map(|p| ("virtiofsd", *p)))
    {
        let (sockets, holds_dir) = descriptors(pid, &container_dir);
        let shared: Vec<&String> = sockets
            .iter()
            .filter(|s| monitor.contains(*s) || create.contains(*s))
            .collect();
        assert!(
            shared.is_empty(),
            "{what} (pid {pid}) holds runtime sockets {shared:?}"
        );
        assert!(
            !holds_dir,
            "{what} (pid {pid}) holds {} open",
            container_dir.display()
        );
    }
    cli.run(&["delete", "--force", id]).ok();
    assert!(
        reap_within(pid, harness::WAIT_PATIENCE),
        "{pid} did not end"
    );
    cli.assert_gone(id, &cgroup);
}

/// A symlink planted at the `--pid-file` path of `create` and of `exec
/// --detach` is replaced by the pid file, not written through: the file
/// it points to is untouched (runc writes a new file beside the path and
/// renames it over; so does runvm).
#[test]
fn a_symlink_planted_at_the_pid_file_is_not_followed() {
    let _one = one_at_a_time();
    let cli = Cli::new("errors", "pidlink");
    let id: &str = &unique("pidlink");
    let (bundle, cgroup) = cli.bundle(
        "bundle",
        &["sh", "-c", "echo up; exec sleep 1000000"],
        |_| {},
    );
    let victim = cli.scratch.join("victim");
    std::fs::write(&victim, "precious").expect("victim");
    let plant = |name: &str| {
        let path = cli.scratch.join(name);
        std::os::unix::fs::symlink(&victim, &path).expect("plant a symlink");
        path
    };
    let created = plant("create.pid");
    cli.create_to_files(
        &bundle,
        &created,
        id,
        &cli.scratch.join("out"),
        &cli.scratch.join("err"),
    )
    .ok();
    cli.run(&["start", id]).ok();
    let exec = plant("exec.pid");
    // The detached process keeps its stdio: files, not pipes.
    harness::run_to_files(
        &mut cli.command(&[
            "exec",
            "--detach",
            "--pid-file",
            &exec.display().to_string(),
            id,
            "sleep",
            "5",
        ]),
        &cli.scratch.join("exec.out"),
        &cli.scratch.join("exec.err"),
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious"
    );
    let mut pids = Vec::new();
    for path in [&created, &exec] {
        let meta = std::fs::symlink_metadata(path).expect("the pid file");
        assert!(
            meta.is_file(),
            "{} is not a regular file now",
            path.display()
        );
        let text = std::fs::read_to_string(path).expect("pid");
        let pid = text
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|p| harness::alive(*p));
        pids.push(
            pid.unwrap_or_else(|| panic!("{} holds {text:?}, not a live pid", path.display())),
        );
    }
    let leftovers: Vec<String> = std::fs::read_dir(cli.scratch.path())
        .expect("scratch")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // Both pid-file processes are ours (a subreaper's) to reap: the
    // exec'd one ends by itself, then the init is killed (runc's delete
    // waits for them to be reaped).
    let (init, exec) = (pids[0], pids[1]);
    assert!(
        reap_within(exec, harness::WAIT_PATIENCE),
        "{exec} did not end"
    );
    cli.run(&["kill", id, "KILL"]).ok();
    assert!(
        reap_within(init, harness::WAIT_PATIENCE),
        "{init} did not end"
    );
    cli.run(&["delete", "--force", id]).ok();
    cli.assert_gone(id, &cgroup);
}

/// A `--root` that exists but is writable by group or others, or is owned
/// by another user, is refused by runvm with the path and the problem
/// named (the state in it decides what runvm kills, mounts and removes as
/// root). runc accepts both; with RUNVM_TEST_RUNTIME=runc this checks that.
#[test]
fn an_unsafe_root_is_refused() {
    // Its Cli reaps orphaned zombies when dropped, which is safe only while
    // no other test has a command of its own running.
    let _one = one_at_a_time();
    let cli = Cli::new("errors", "unsafe-root");
    let root = cli.scratch.join("shared-root");
    std::fs::create_dir_all(&root).expect("root");
    let list = |cli: &Cli| {
        let mut command = Command::new(&cli.runtime.path);
        command.arg("--root").arg(&root).arg("list");
        harness::run(&mut command)
    };
    use std::os::unix::fs::PermissionsExt;
    let cases = [
        (0o777, 0, "it is writable by group or others (mode 0777)"),
        (0o1777, 0, "it is writable by group or others (mode 1777)"),
        (0o700, 1000, "it is owned by uid 1000, not by root"),
    ];
    for (mode, owner, problem) in cases {
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode)).expect("chmod");
        std::os::unix::fs::chown(&root, Some(owner), Some(owner)).expect("chown");
        let output = list(&cli);
        if cli.runtime.is_runvm {
            let output = output.fails();
            let expected = format!(
                "refusing the state directory (--root) {}: {problem}",
                root.display()
            );
            assert!(
                output.stderr.contains(&expected),
                "expected {expected:?}: {output}"
            );
        } else {
            output.ok();
        }
    }
    // Ours and closed to others: fine.
    std::os::unix::fs::chown(&root, Some(0), Some(0)).expect("chown");
    for mode in [0o700, 0o711] {
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(mode)).expect("chmod");
        list(&cli).ok();
    }
}
