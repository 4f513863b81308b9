//! Debian's containerd (1.6), unchanged, started by the test on a private
//! socket, root and state directory, running containers through its
//! io.containerd.runc.v2 shim on the runtime under test (`ctr run
//! --runc-binary`): `ctr run --rm` output and exit status, and a detached
//! task with `ctr task exec`, `ps`, `kill`, `ls` and its exit status from
//! `ctr task delete`, then `ctr containers rm` and its snapshot. The image
//! is the busybox one the podman tests use, saved by podman as an OCI
//! archive and `ctr images import`ed. Nothing may be left behind.
//!
//! The runtime under test is `$RUNVM_TEST_RUNTIME` or the runvm build (see
//! `common/harness.rs`). Each test is one container (for runvm, one
//! microVM); they run one at a time.

#[path = "common/cgroup_view.rs"]
mod cgroup_view;
mod common;
#[path = "common/containerd_config.rs"]
mod containerd_config;
#[path = "common/containerd_daemon.rs"]
mod containerd_daemon;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/podman_env.rs"]
mod podman_env;
#[path = "common/pty.rs"]
mod pty;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use cgroup_view::CgroupView;
use containerd_daemon::Daemon;
use harness::{
    assert_empty_dir, assert_no_mounts_below, assert_no_process_references, read_text, run,
    wait_for, Output, RuntimeUnderTest, Scratch,
};
use podman_env::IMAGE;
use pty::InPty;

/// One container (one VM for runvm) at a time: the host has two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A containerd of this test, and `ctr` talking to it in a namespace of
/// its own. Field order matters: the daemon is stopped before the scratch
/// dir goes.
struct Containerd {
    daemon: Daemon,
    runtime: RuntimeUnderTest,
    /// Also names the cgroup parent of the containers (/<namespace>/<id>).
    namespace: String,
    scratch: Scratch,
}

impl Containerd {
    /// Starts containerd with a minimal config (no CRI, no snapshotters but
    /// overlayfs, no /opt) and imports the busybox image.
    fn start(name: &str) -> Containerd {
        harness::require_root();
        harness::require_programs(&[
            ("containerd", "containerd"),
            ("ctr", "containerd"),
            ("containerd-shim-runc-v2", "containerd"),
        ]);
        let scratch = Scratch::new(&format!("ctr-{name}"));
        let runtime = RuntimeUnderTest::resolve(&scratch);
        let namespace = format!("runvm-e2e-{}", std::process::id());
        let daemon = Daemon::start(&scratch, &namespace, None);
        Containerd {
            daemon,
            runtime,
            namespace,
            scratch,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        self.daemon.command(args)
    }

    #[track_caller]
    fn ctr(&self, args: &[&str]) -> Output {
        self.daemon.ctr(args)
    }

    fn runc_root(&self) -> PathBuf {
        self.scratch.join("runc-root")
    }

    /// `ctr run` with the runtime under test (its state and the stdio
    /// FIFOs in the scratch dir), `options`, the image, `id` and `command`.
    #[track_caller]
    fn run_container(&self, options: &[&str], id: &str, command: &[&str]) -> Output {
        run(&mut self.run_command(options, id, command))
    }

    /// The `ctr run` command of [`Self::run_container`], not started.
    fn run_command(&self, options: &[&str], id: &str, command: &[&str]) -> Command {
        let runtime = self.runtime.path.display().to_string();
        let root = self.runc_root().display().to_string();
        let fifos = self.scratch.join("fifo").display().to_string();
        let mut args = vec![
            "run",
            "--runc-binary",
            &runtime,
            "--runc-root",
            &root,
            "--fifo-dir",
            &fifos,
        ];
        args.extend(options);
        args.push(IMAGE);
        args.push(id);
        args.extend(command);
        self.command(&args)
    }

    #[track_caller]
    fn tasks(&self) -> Vec<(String, u32, String)> {
        self.daemon.tasks()
    }

    /// No container, task or container snapshot left in containerd, and
    /// nothing in the runtime's root (`--runc-root`, per namespace).
    #[track_caller]
    fn assert_no_containers(&self) {
        let containers = self.ctr(&["containers", "ls", "--quiet"]).ok();
        assert!(containers.stdout.trim().is_empty(), "{containers}");
        assert!(self.tasks().is_empty(), "tasks left");
        let snapshots = self.ctr(&["snapshots", "ls"]).ok();
        assert!(
            !snapshots.stdout.contains("Active"),
            "a container's snapshot is left: {snapshots}"
        );
        assert_empty_dir(&self.runc_root().join(&self.namespace));
    }

    /// Removes the image, stops containerd, and checks that no process
    /// (shim, runtime, VM) and no mount is left, and that the containers'
    /// cgroups can go.
    #[track_caller]
    fn stop_and_assert_clean(mut self) {
        self.ctr(&["images", "rm", IMAGE]).ok();
        self.stop_daemon();
        assert_no_process_references(&[self.scratch.display(), self.namespace.clone()]);
        assert_no_mounts_below(self.scratch.path());
        let stuck = harness::remove_cgroup(&self.namespace);
        assert!(stuck.is_empty(), "cgroups that cannot go: {stuck:?}");
    }

    fn stop_daemon(&mut self) {
        self.daemon.stop();
    }
}

impl Drop for Containerd {
    /// Best effort (also after a failure): tasks and containers removed,
    /// containerd stopped, cgroups removed; the scratch dir goes next.
    fn drop(&mut self) {
        self.daemon.remove_all_and_stop();
        harness::remove_cgroup(&self.namespace);
    }
}

/// `ctr run --rm`: the container's stdout, stderr and exit status are
/// ctr's; the container and its snapshot are removed, also after a
/// program that does not exist.
#[test]
fn ctr_run_rm_gives_output_and_exit_status() {
    let _one = one_at_a_time();
    let containerd = Containerd::start("rm");
    let output = containerd
        .run_container(
            &["--rm"],
            "c1",
            &["sh", "-c", "echo hi; echo oops >&2; exit 3"],
        )
        .exits(3);
    assert_eq!(output.stdout, "hi\n", "{output}");
    assert_eq!(output.stderr, "oops\n", "{output}");
    // A program that is not there: ctr fails naming it, and nothing of
    // the container stays (with runc the shim exits once it is removed).
    let missing = containerd
        .run_container(&["--rm"], "c9", &["/no/such/binary"])
        .fails();
    assert!(missing.stderr.contains("/no/such/binary"), "{missing}");
    containerd.assert_no_containers();
    containerd.stop_and_assert_clean();
}

/// `ctr run -d`, then `ctr task exec` (output, cwd, exit status), `ctr task
/// ps`, `ctr task kill` (SIGTERM, trapped: exit 7), `ctr task ls` showing
/// it stopped, the exit status from `ctr task delete`, and `ctr containers
/// rm` taking its snapshot.
#[test]
fn detached_task_exec_ps_kill_and_exit_status() {
    let _one = one_at_a_time();
    let containerd = Containerd::start("d");
    let log = containerd.scratch.join("c2.log");
    let log_uri = format!("file://{}", log.display());
    let script = "trap 'echo bye; exit 7' TERM; echo ready; sleep 1000000 & wait";
    containerd
        .run_container(
            &["--detach", "--log-uri", &log_uri],
            "c2",
            &["sh", "-c", script],
        )
        .ok();
    wait_for("the task logs `ready`", || {
        let text = read_text(&log);
        text.contains("ready").then_some(()).ok_or(text)
    });
    let tasks = containerd.tasks();
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    let (id, pid, status) = &tasks[0];
    assert_eq!(
        (id.as_str(), status.as_str()),
        ("c2", "RUNNING"),
        "{tasks:?}"
    );
    assert!(harness::alive(*pid), "the task's pid {pid} is not alive");
    let parent = harness::parent_of(*pid).expect("a parent");
    let parent_cmdline = read_text(&PathBuf::from(format!("/proc/{parent}/cmdline")));
    assert!(
        parent_cmdline.contains("containerd-shim"),
        "the pid-file process {pid} is the shim's child (the shim waits for it), \
         not {parent}'s ({parent_cmdline:?})"
    );
    let cgroup = assert_metrics(&containerd, *pid);

    let fifos = containerd.scratch.join("fifo").display().to_string();
    let exec = containerd
        .ctr(&[
            "tasks",
            "exec",
            "--exec-id",
            "e1",
            "--fifo-dir",
            &fifos,
            "--cwd",
            "/etc",
            "c2",
            "sh",
            "-c",
            "echo from exec; pwd; echo exec err >&2; exit 4",
        ])
        .exits(4);
    assert_eq!(exec.stdout, "from exec\n/etc\n", "{exec}");
    assert_eq!(exec.stderr, "exec err\n", "{exec}");

    // The shim asks the runtime (`ps --format json`).
    let ps = containerd.ctr(&["tasks", "ps", "c2"]).ok();
    let pids: Vec<&str> = ps.stdout.lines().skip(1).collect();
    // Every process of the task: the shell and its `sleep`.
    assert!(
        pids.len() >= 2 && ps.stdout.starts_with("PID"),
        "`ctr task ps` lists the task's processes: {ps}"
    );

    containerd.ctr(&["tasks", "kill", "c2"]).ok();
    containerd.daemon.wait_until_stopped("c2", false);
    assert_eq!(read_text(&log), "ready\nbye\n", "the task's log");
    let deleted = containerd.ctr(&["tasks", "delete", "c2"]).ok();
    assert!(
        deleted.stderr.contains("exit code 7"),
        "`ctr task delete` reports the exit status: {deleted}"
    );
    assert!(containerd.tasks().is_empty(), "the task is gone");
    assert!(
        !cgroup.exists(),
        "the task's cgroup {} is left",
        cgroup.dir.display()
    );
    containerd.ctr(&["containers", "rm", "c2"]).ok();
    containerd.assert_no_containers();
    containerd.stop_and_assert_clean();
}

/// `ctr task metrics`: the shim reads the task's host cgroup, the one of
/// the pid-file process, which containerd names `/<namespace>/<id>`. For
/// runvm it holds the monitor, the VMM and virtiofsd (and their threads).
#[track_caller]
fn assert_metrics(containerd: &Containerd, pid: u32) -> CgroupView {
    let cgroup = CgroupView::of(&format!("/{}/c2", containerd.namespace));
    cgroup.assert_holds(pid, "the task's pid-file process");
    let metrics = containerd.ctr(&["tasks", "metrics", "c2"]).ok();
    let metric = |name: &str| -> Option<u64> {
        metrics.stdout.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            (fields.next()? == name).then_some(())?;
            fields.next()?.parse().ok()
        })
    };
    let usage = metric(if cgroup.v2 {
        "memory.usage"
    } else {
        "memory.usage_in_bytes"
    });
    assert!(usage.is_some_and(|u| u > 0), "memory usage: {metrics}");
    let least = if containerd.runtime.is_runvm { 3 } else { 1 };
    assert!(
        metric("pids.current").is_some_and(|p| p >= least),
        "pids.current (at least {least}): {metrics}"
    );
    cgroup
}

/// Terminals the way `ctr run -t` and `ctr task exec -t` (and so `crictl
/// exec -it`) make them: the shim takes the pty master over
/// `--console-socket` and copies between it and ctr's FIFOs. The
/// container's process sees a terminal of its own devpts, reads what is typed, and its exit status is ctr's;
/// an exec'd terminal beside it works the same, and the task is killed
/// and removed promptly afterwards.
#[test]
fn terminal_run_and_exec() {
    let _one = one_at_a_time();
    let containerd = Containerd::start("tty");
    let script = "tty; read line; echo \"got:$line\"; exit 5";
    let command = containerd.run_command(&["--rm", "--tty"], "t1", &["sh", "-c", script]);
    let mut session = InPty::spawn(command, 33, 111);
    // (Not its size: ctr sets it after the task starts, so a process may
    // see 0×0 first, with runc too.)
    session.wait_for_text("/dev/pts/");

    let fifos = containerd.scratch.join("fifo").display().to_string();
    let exec = containerd.command(&[
        "tasks",
        "exec",
        "--tty",
        "--exec-id",
        "e1",
        "--fifo-dir",
        &fifos,
        "t1",
        "sh",
        "-c",
        "tty; read line; echo \"exec got:$line\"; exit 4",
    ]);
    let mut exec_session = InPty::spawn(exec, 24, 80);
    exec_session.wait_for_text("/dev/pts/");
    exec_session.type_text("there\r");
    let exec_status = exec_session.wait();
    exec_session.wait_for_text("exec got:there");
    assert_eq!(
        exec_status.code(),
        Some(4),
        "`ctr task exec -t`'s exit; the terminal showed:\n{}",
        exec_session.seen()
    );

    session.type_text("hello\r");
    let status = session.wait();
    session.wait_for_text("got:hello");
    assert_eq!(
        status.code(),
        Some(5),
        "`ctr run -t`'s exit; the terminal showed:\n{}",
        session.seen()
    );
    containerd.assert_no_containers();
    containerd.stop_and_assert_clean();
}
