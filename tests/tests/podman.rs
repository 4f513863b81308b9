//! Debian's podman (4.3) and conmon, unchanged, on the runtime under test
//! (`podman --runtime`): `run --rm --read-only` output, exit codes and
//! copied-up tmpfs mounts, `run -d` with `exec`, `logs`, `stop` and `rm`,
//! and `run -it` through a pseudo-terminal this test opens; podman's
//! bridge network (netavark, in a network namespace of the test's) with a
//! container and a pod (its infra container and two members, in one VM)
//! on it, published ports, and nothing of runvm's left in any namespace.
//! The image is busybox-static imported with `podman import` (there is no
//! registry); storage, configuration and cgroups are private to each test,
//! and nothing may be left behind.
//!
//! The runtime under test is `$RUNVM_TEST_RUNTIME` or the runvm build (see
//! `common/harness.rs`). Each test is one container or pod (for runvm, one
//! microVM; the bridge scenario in `podman/bridge.rs` has one of each, two
//! VMs at once); they run one at a time.

#[path = "podman/bridge.rs"]
mod bridge;
mod common;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/pod_netns.rs"]
mod pod_netns;
#[path = "common/podman_env.rs"]
mod podman_env;
#[path = "common/pty.rs"]
mod pty;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use harness::{
    assert_no_mounts_below, assert_no_process_references, read_text, wait_for, Output,
    RuntimeUnderTest, Scratch,
};
use podman_env::PodmanEnv;
use pty::InPty;

/// One container (one VM for runvm) at a time: the host has two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// podman on private storage, running containers on the runtime under
/// test. Field order matters: podman cleans up before the scratch dir goes.
struct Podman {
    env: PodmanEnv,
    runtime: RuntimeUnderTest,
    image: &'static str,
    /// The `--cidfile`s of the containers this test ran.
    cidfiles: Vec<PathBuf>,
    scratch: Scratch,
}

impl Podman {
    fn new(name: &str) -> Podman {
        harness::require_root();
        let scratch = Scratch::new(&format!("pm-{name}"));
        let runtime = RuntimeUnderTest::resolve(&scratch);
        let env = PodmanEnv::new(&scratch.join("pm"), Some(&runtime.path));
        let image = env.import_busybox();
        Podman {
            env,
            runtime,
            image,
            cidfiles: Vec::new(),
            scratch,
        }
    }

    /// `podman run` with the test's options, `options`, the image and
    /// `command`; the container's id is kept (through `--cidfile`).
    fn run_command(&mut self, options: &[&str], command: &[&str]) -> Command {
        let cidfile = self.scratch.join(format!("cid-{}", self.cidfiles.len()));
        self.cidfiles.push(cidfile.clone());
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(self.env.run_options());
        args.extend(["--cidfile".into(), cidfile.display().to_string()]);
        args.extend(options.iter().map(|s| s.to_string()));
        args.push(self.image.into());
        args.extend(command.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.env.command(&args)
    }

    #[track_caller]
    fn run(&mut self, options: &[&str], command: &[&str]) -> Output {
        harness::run(&mut self.run_command(options, command))
    }

    /// `podman run --detach --pod pod --name name` of `script` (the pod
    /// decides network and cgroup parent); the id is kept.
    #[track_caller]
    fn run_in_pod(&mut self, pod: &str, name: &str, script: &str) -> Output {
        let cidfile = self.scratch.join(format!("cid-{}", self.cidfiles.len()));
        self.cidfiles.push(cidfile.clone());
        let cidfile = cidfile.display().to_string();
        self.env.run(&[
            "run",
            "--detach",
            "--pull",
            "never",
            "--cidfile",
            &cidfile,
            "--pod",
            pod,
            "--name",
            name,
            self.image,
            "sh",
            "-c",
            script,
        ])
    }

    /// Waits until `podman logs name` shows `text`.
    #[track_caller]
    fn wait_for_log(&self, name: &str, text: &str) {
        wait_for(&format!("`podman logs {name}` shows {text:?}"), || {
            let logs = self.podman(&["logs", name]).ok();
            logs.stdout
                .contains(text)
                .then_some(())
                .ok_or(logs.to_string())
        });
    }

    #[track_caller]
    fn podman(&self, args: &[&str]) -> Output {
        self.env.run(args)
    }

    /// The container ids, read from the cid files.
    fn container_ids(&self) -> Vec<String> {
        self.cidfiles
            .iter()
            .map(|cidfile| read_text(cidfile).trim().to_string())
            .filter(|id| !id.is_empty())
            .collect()
    }

    /// Nothing is left: no container in podman, none of ours in the
    /// runtime's (default) state, no process referring to the scratch dir
    /// or to a container id, no mount, and the cgroups can go.
    #[track_caller]
    fn assert_clean(&self) {
        let ps = self.podman(&["ps", "--all", "--quiet"]).ok();
        assert!(ps.stdout.trim().is_empty(), "containers left: {ps}");
        let ids = self.container_ids();
        assert!(!ids.is_empty(), "no container id was recorded");
        let listed = harness::run(Command::new(&self.runtime.path).args(["list", "-q"])).ok();
        for id in &ids {
            assert!(
                !listed.stdout.contains(id.as_str()),
                "the runtime still lists {id}: {listed}"
            );
        }
        let mut needles = ids.clone();
        needles.push(self.scratch.display());
        assert_no_process_references(&needles);
        assert_no_mounts_below(self.scratch.path());
        let stuck = harness::remove_cgroup(&self.env.cgroup_parent);
        assert!(stuck.is_empty(), "cgroups that cannot go: {stuck:?}");
    }
}

/// `podman run --rm --read-only`: stdout, stderr and the exit code are
/// the container's; the root is read-only, and /run and /tmp are tmpfs
/// with what the image had there copied up (podman's tmpcopyup).
#[test]
fn run_rm_gives_output_and_exit_code() {
    let _one = one_at_a_time();
    let mut podman = Podman::new("rm");
    let script = "echo hi; echo oops >&2; \
        touch /new 2>/dev/null && echo root-writable || echo root-readonly; \
        cat /tmp/from-image /run/link; ls -ld /tmp /run | cut -c1-10; \
        touch /tmp/new /run/lock/new && echo tmpfs-writable; \
        grep -E ' /(tmp|run) ' /proc/mounts | cut -d' ' -f2,3 | sort; exit 3";
    let output = podman
        .run(&["--rm", "--read-only"], &["sh", "-c", script])
        .exits(3);
    assert_eq!(
        output.stdout,
        "hi\nroot-readonly\ntmp from the image\nrun from the image\n\
         drwxr-xr-x\ndrwxrwxrwt\ntmpfs-writable\n/run tmpfs\n/tmp tmpfs\n",
        "{output}"
    );
    assert!(output.stderr.contains("oops"), "{output}");
    podman.assert_clean();
}

/// `podman run -d`, then `exec` (output, environment, working directory,
/// exit code), `logs`, `stop` (SIGTERM, which the container traps to exit
/// 7), the exit code in `inspect`, and `rm`.
#[test]
fn detached_run_exec_logs_stop_rm() {
    let _one = one_at_a_time();
    let mut podman = Podman::new("d");
    let script = "trap 'echo bye; exit 7' TERM; echo ready; sleep 1000000 & wait";
    let started = podman
        .run(&["--detach", "--name", "d1"], &["sh", "-c", script])
        .ok();
    let id = started.stdout.trim().to_string();
    assert_eq!(id, podman.container_ids()[0], "`run -d` prints the id");

    wait_for("`podman logs` shows `ready`", || {
        let logs = podman.podman(&["logs", "d1"]).ok();
        logs.stdout
            .contains("ready")
            .then_some(())
            .ok_or(logs.to_string())
    });
    let inspect = podman
        .podman(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.Pid}} {{.State.ConmonPid}}",
            "d1",
        ])
        .ok();
    let fields: Vec<&str> = inspect.stdout.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"running"), "{inspect}");
    let pid: u32 = fields[1].parse().expect("a pid");
    let conmon: u32 = fields[2].parse().expect("conmon's pid");
    assert!(
        harness::alive(pid),
        "the container's pid {pid} is not alive"
    );
    assert_eq!(
        harness::parent_of(pid),
        Some(conmon),
        "the pid-file process is conmon's child (conmon waits for it)"
    );
    let ps = podman
        .podman(&[
            "ps",
            "--filter",
            "name=d1",
            "--format",
            "{{.Names}} {{.Status}}",
        ])
        .ok();
    assert!(ps.stdout.starts_with("d1 Up"), "{ps}");
    // The container's processes: the shell and its `sleep`, through ps(1)
    // in the container (podman's path for ps options; its own reading of
    // /proc sees the host side of a VM, see the README).
    let top = podman.podman(&["top", "d1", "-eo", "pid,args"]).ok();
    assert!(
        top.stdout.contains("sleep 1000000") && top.stdout.contains("sh -c"),
        "`podman top` shows the container's processes: {top}"
    );

    let exec = podman
        .podman(&[
            "exec",
            "--env",
            "GREETING=hello",
            "--workdir",
            "/etc",
            "d1",
            "sh",
            "-c",
            "echo \"greeting=$GREETING\"; pwd; echo exec err >&2; exit 4",
        ])
        .exits(4);
    assert_eq!(exec.stdout, "greeting=hello\n/etc\n", "{exec}");
    assert!(exec.stderr.contains("exec err"), "{exec}");

    podman.podman(&["stop", "--time", "120", "d1"]).ok();
    let inspect = podman
        .podman(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            "d1",
        ])
        .ok();
    assert_eq!(inspect.stdout.trim(), "exited 7", "{inspect}");
    let logs = podman.podman(&["logs", "d1"]).ok();
    assert_eq!(logs.stdout, "ready\nbye\n", "{logs}");
    podman.podman(&["rm", "d1"]).ok();
    podman.assert_clean();
}

/// Containers that ignore SIGTERM: `podman stop --time 2` kills one after
/// its grace period (exit 137) without podman's "did not die" warning,
/// and `podman rm --force --time 0` takes a running one away at once. In
/// both podman waits only a few seconds for the pid-file process after
/// its SIGKILL, as it does with runc.
#[test]
fn stop_after_the_grace_period_and_rm_force() {
    let _one = one_at_a_time();
    let mut podman = Podman::new("kill");
    let script = "trap '' TERM; echo ready; sleep 1000000 & while :; do wait; done";
    for name in ["k1", "k2"] {
        podman
            .run(&["--detach", "--name", name], &["sh", "-c", script])
            .ok();
        wait_for(&format!("`podman logs {name}` shows `ready`"), || {
            let logs = podman.podman(&["logs", name]).ok();
            logs.stdout
                .contains("ready")
                .then_some(())
                .ok_or(logs.to_string())
        });
    }

    let stopped = podman.podman(&["stop", "--time", "2", "k1"]).ok();
    assert!(
        !stopped.stderr.contains("did not die"),
        "the pid-file process outlived podman's wait after SIGKILL: {stopped}"
    );
    let inspect = podman
        .podman(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            "k1",
        ])
        .ok();
    assert_eq!(inspect.stdout.trim(), "exited 137", "{inspect}");
    podman.podman(&["rm", "k1"]).ok();

    let removed = podman.podman(&["rm", "--force", "--time", "0", "k2"]).ok();
    assert!(
        !removed.stderr.contains("did not die"),
        "the pid-file process outlived podman's wait after SIGKILL: {removed}"
    );
    let left = podman.podman(&["ps", "--all", "--quiet"]).ok();
    assert!(left.stdout.trim().is_empty(), "`rm -f -t 0` left: {left}");
    podman.assert_clean();
}

/// `podman run -it` from a terminal: the container has a tty of the
/// terminal's size, reads what is typed, and its exit code is podman's.
#[test]
fn interactive_run_through_a_pty() {
    let _one = one_at_a_time();
    let mut podman = Podman::new("tty");
    let script = "tty; read line; stty size; echo \"got:$line\"; exit 5";
    let command = podman.run_command(&["--rm", "--interactive", "--tty"], &["sh", "-c", script]);
    let mut session = InPty::spawn(command, 33, 111);
    // A pty of the container's own devpts, as under runc.
    session.wait_for_text("/dev/pts/0");
    session.type_text("hello\r");
    let status = session.wait();
    session.wait_for_text("got:hello");
    let seen = session.seen();
    eprintln!("the terminal showed:\n{seen}");
    assert_eq!(
        status.code(),
        Some(5),
        "podman's exit; the terminal showed:\n{seen}"
    );
    assert!(
        seen.contains("33 111"),
        "the tty's size; the terminal showed:\n{seen}"
    );
    podman.assert_clean();
}
