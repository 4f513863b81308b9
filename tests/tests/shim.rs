//! runvm's own containerd shim, `containerd-shim-runvm-v2` (runtime
//! `io.containerd.runvm.v2`), under Debian's containerd (1.6), unchanged,
//! started by the test on a private socket, root and state directory with
//! the runvm build installed in the scratch dir first on its PATH (where
//! containerd finds shims). No runc shim and no `runvm` process take part:
//! the shim owns the VM.
//!
//! - `ctr run --rm`: output, exit status, nothing left; `--net-host`
//!   refused, naming host networking;
//! - a detached task in a network namespace of the test (`--with-ns`,
//!   an `eth0` with an address, as CNI leaves it): the guest wears that
//!   `eth0`, `ctr task exec` (output, exit status), `ctr task ps`; then
//!   containerd restarts (SIGTERM, started again on the same root and
//!   state) and finds the running shim again (Connect): the task listed
//!   running, `ctr task exec` works, and the shim's events (the exec's,
//!   the task's exit) reach the new containerd; `ctr task kill` (a
//!   trapped SIGTERM), `ctr task delete` with the exit status, then
//!   nothing left (no shim, VMM or virtiofsd, no state, no tap or TC
//!   filter in the namespace);
//! - the shim SIGKILLed: containerd's clean-up (`shim delete`) removes
//!   the VMM, virtiofsd, the rootfs mount, the pod's state and its taps
//!   and TC filters.
//!
//! While a task runs, its VMM and virtiofsd (every process of theirs) are
//! in the host cgroup its cgroupsPath names (ctr's `/<namespace>/<id>`),
//! and the shim is not; once the task is gone, by delete or by the
//! clean-up after a killed shim, no cgroup of the namespace is left.
//!
//! Each test is one microVM; they run one at a time.

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

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use containerd_daemon::Daemon;
use harness::{
    assert_no_mounts_below, assert_no_process_references, run, wait_for, Output, Scratch,
};
use netns::NetNs;
use podman_env::IMAGE;

const RUNTIME: &str = "io.containerd.runvm.v2";
const SHIM: &str = "containerd-shim-runvm-v2";
/// Where the shim keeps its pods' state, per containerd namespace.
const SHIM_STATE: &str = "/run/runvm-shim";

/// The address of the test namespace's `eth0`.
const POD_ADDRESS: &str = "10.91.0.2/24";
/// runvm's TC filter priority (0xc0de), as `tc` prints it.
const RUNVM_FILTER_PREF: &str = "pref 49374";

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A network namespace as CNI leaves a pod's: an `eth0` with an address,
/// up, a veth whose peer is in a second namespace (the second of the two).
fn pod_namespace(name: &str) -> (NetNs, NetNs) {
    let (ns, peer) = (NetNs::new(name), NetNs::new(&format!("{name}-peer")));
    let peer_name = peer.path().file_name().expect("a name").to_owned();
    let peer_name = peer_name.to_str().expect("UTF-8");
    let veth = [
        "link", "add", "eth0", "type", "veth", "peer", "name", "vpeer",
    ];
    in_namespace(&ns, "ip", &[&veth[..], &["netns", peer_name]].concat());
    in_namespace(&ns, "ip", &["link", "set", "eth0", "up"]);
    in_namespace(&ns, "ip", &["addr", "add", POD_ADDRESS, "dev", "eth0"]);
    in_namespace(&peer, "ip", &["link", "set", "vpeer", "up"]);
    (ns, peer)
}

/// `ip` or `tc` in `ns`: its stdout.
fn in_namespace(ns: &NetNs, program: &str, args: &[&str]) -> String {
    let mut command = Command::new(program);
    command.args(args);
    netns::enter(&ns.path(), &mut command);
    run(&mut command).ok().stdout
}

/// What runvm could have left in `ns`: its taps and its filters on `eth0`.
fn runvm_leftovers(ns: &NetNs) -> String {
    let links = in_namespace(ns, "ip", &["-o", "link"]);
    let filters = in_namespace(ns, "tc", &["filter", "show", "dev", "eth0", "ingress"]);
    let taps = links.lines().filter(|l| l.contains("rvtap"));
    let ours = filters.lines().filter(|l| l.contains(RUNVM_FILTER_PREF));
    taps.chain(ours).collect::<Vec<_>>().join("\n")
}

/// `--with-ns` for `ctr run`: the container's network namespace is `ns`.
fn with_netns(ns: &NetNs) -> String {
    format!("network:{}", ns.path().display())
}

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The runvm build laid out as `make install` does, with the shim.
fn install_with_shim(prefix: &Path) -> PathBuf {
    harness::install_runvm(prefix);
    let built = harness::workspace_root().join("target/release").join(SHIM);
    assert!(
        built.is_file(),
        "{} is missing: run `make build` first",
        built.display()
    );
    let bin = prefix.join("bin");
    std::fs::copy(&built, bin.join(SHIM)).expect("install the shim");
    bin
}

/// A containerd of this test and `ctr` in a namespace of its own. The
/// daemon is stopped before the scratch dir goes (field order).
struct Containerd {
    daemon: Daemon,
    namespace: String,
    scratch: Scratch,
}

impl Containerd {
    fn start(name: &str) -> Containerd {
        harness::require_root();
        harness::require_programs(&[("containerd", "containerd"), ("ctr", "containerd")]);
        common::require_kvm();
        let scratch = Scratch::new(&format!("shim-{name}"));
        let bin = install_with_shim(&scratch.join("prefix"));
        let namespace = format!("runvm-shim-e2e-{}", std::process::id());
        let daemon = Daemon::start(&scratch, &namespace, Some(&bin));
        Containerd {
            daemon,
            namespace,
            scratch,
        }
    }

    fn log(&self) -> String {
        self.daemon.log()
    }

    fn command(&self, args: &[&str]) -> Command {
        self.daemon.command(args)
    }

    #[track_caller]
    fn ctr(&self, args: &[&str]) -> Output {
        self.daemon.ctr(args)
    }

    /// `ctr run --runtime io.containerd.runvm.v2 OPTIONS IMAGE ID COMMAND`.
    #[track_caller]
    fn run_container(&self, options: &[&str], id: &str, command: &[&str]) -> Output {
        let fifos = self.scratch.join("fifo").display().to_string();
        let mut args = vec!["run", "--runtime", RUNTIME, "--fifo-dir", &fifos];
        args.extend(options);
        args.push(IMAGE);
        args.push(id);
        args.extend(command);
        self.ctr(&args)
    }

    /// `ctr task exec --exec-id EXEC_ID OPTIONS ID COMMAND`, stdio through
    /// FIFOs in the scratch dir.
    #[track_caller]
    fn exec(&self, options: &[&str], exec_id: &str, id: &str, command: &[&str]) -> Output {
        let fifos = self.scratch.join("fifo").display().to_string();
        let mut args = vec!["tasks", "exec", "--exec-id", exec_id, "--fifo-dir", &fifos];
        args.extend(options);
        args.push(id);
        args.extend(command);
        self.ctr(&args)
    }

    #[track_caller]
    fn tasks(&self) -> Vec<(String, u32, String)> {
        self.daemon.tasks()
    }

    /// The test's shim processes: (pid, command line).
    fn shims(&self) -> Vec<(u32, String)> {
        harness::processes_referencing(std::slice::from_ref(&self.namespace))
            .into_iter()
            .filter(|(_, cmdline)| cmdline.contains(SHIM))
            .collect()
    }

    fn shim_state(&self) -> PathBuf {
        Path::new(SHIM_STATE).join(&self.namespace)
    }

    /// ctr's cgroupsPath for container `id`: `/<namespace>/<id>`.
    fn cgroup_path(&self, id: &str) -> String {
        format!("/{}/{id}", self.namespace)
    }

    /// The VMM and virtiofsd of the test's only pod (with their children:
    /// the jailed VMM, virtiofsd's sandbox) are in the host cgroup of
    /// container `id` in every hierarchy; the shim is not.
    #[track_caller]
    fn assert_vm_in_cgroup(&self, id: &str) {
        let processes = harness::processes_referencing(std::slice::from_ref(&self.namespace));
        cgroup_view::assert_vm_in(&self.cgroup_path(id), &processes);
    }

    /// No container, task, shim, VMM, virtiofsd, mount or shim state left.
    #[track_caller]
    fn assert_nothing_left(&self) {
        let containers = self.ctr(&["containers", "ls", "--quiet"]).ok();
        assert!(containers.stdout.trim().is_empty(), "{containers}");
        assert!(self.tasks().is_empty(), "tasks left");
        wait_for("no shim, VMM or virtiofsd of the test is left", || {
            let left = harness::processes_referencing(std::slice::from_ref(&self.namespace));
            left.is_empty().then_some(()).ok_or(format!("{left:?}"))
        });
        let state = self.shim_state();
        let left: Vec<String> = std::fs::read_dir(&state)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|entry| entry.path().display().to_string())
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "the shim's state is left: {left:?}");
        assert_no_mounts_below(self.scratch.path());
        assert_no_mounts_below(&state);
        wait_for("no cgroup of the namespace is left", || {
            let left: Vec<PathBuf> = harness::cgroup_roots()
                .into_iter()
                .map(|root| root.join(&self.namespace))
                .filter(|dir| dir.exists())
                .collect();
            left.is_empty().then_some(()).ok_or(format!("{left:?}"))
        });
    }

    #[track_caller]
    fn stop_and_assert_clean(mut self) {
        self.ctr(&["images", "rm", IMAGE]).ok();
        self.daemon.stop();
        assert_no_process_references(&[self.scratch.display(), self.namespace.clone()]);
        assert_no_mounts_below(self.scratch.path());
        let _ = std::fs::remove_dir(self.shim_state());
    }
}

impl Drop for Containerd {
    /// Best effort, also after a failure: tasks and containers removed,
    /// containerd stopped, then what refers to the namespace killed.
    fn drop(&mut self) {
        self.daemon.remove_all_and_stop();
        harness::clean_up(&self.shim_state(), std::slice::from_ref(&self.namespace));
        harness::remove_cgroup(&self.namespace);
    }
}

/// `ctr run --rm` with the runvm shim: the container's stdout, stderr and
/// exit status are ctr's, and nothing of it stays, also after a program
/// that does not exist.
#[test]
fn ctr_run_rm_gives_output_and_exit_status() {
    let _one = one_at_a_time();
    let containerd = Containerd::start("rm");
    let output = containerd
        .run_container(
            &["--rm"],
            "s1",
            &["sh", "-c", "echo hi; echo oops >&2; exit 3"],
        )
        .exits(3);
    assert_eq!(output.stdout, "hi\n", "{output}\n{}", containerd.log());
    assert_eq!(output.stderr, "oops\n", "{output}");
    // A logging binary (`--log-uri binary://`, as nerdctl uses): started
    // with the URI's query as arguments, the container's id and
    // namespace, and its output on descriptors 3 and 4.
    let logger = containerd.scratch.join("logger");
    let logged = containerd.scratch.join("logged");
    std::fs::write(
        &logger,
        format!(
            "#!/bin/sh\nexec 5>&-\n{{ echo \"args: $*\"; echo \"id: $CONTAINER_ID\"; \
             echo \"ns: $CONTAINER_NAMESPACE\"; cat <&3; cat <&4; }} > {0}.part\n\
             mv {0}.part {0}\n",
            logged.display()
        ),
    )
    .expect("write the logger");
    std::fs::set_permissions(&logger, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("make the logger executable");
    let uri = format!("binary://{}?--tag=t1&-v", logger.display());
    containerd
        .run_container(
            &["--rm", "--log-uri", &uri],
            "s3",
            &["sh", "-c", "echo to-stdout; echo to-stderr >&2"],
        )
        .ok();
    let text = wait_for("the logger's output", || {
        std::fs::read_to_string(&logged).map_err(|e| e.to_string())
    });
    assert_eq!(
        text,
        format!(
            "args: --tag t1 -v\nid: s3\nns: {}\nto-stdout\nto-stderr\n",
            containerd.namespace
        )
    );
    // A program that is not there: ctr fails naming it, and nothing of
    // the container (its shim, VM or state) stays.
    let missing = containerd
        .run_container(&["--rm"], "s9", &["/no/such/binary"])
        .fails();
    assert!(missing.stderr.contains("/no/such/binary"), "{missing}");
    // The host's network cannot be a guest's: refused before any VM boots.
    let host = containerd
        .run_container(&["--rm", "--net-host"], "s8", &["true"])
        .fails();
    assert!(host.stderr.contains("host networking"), "{host}");
    containerd.assert_nothing_left();
    containerd.stop_and_assert_clean();
}

/// A detached task: `ctr task exec` gives its output and exit status,
/// `ctr task ps` lists the task's processes, containerd restarts and
/// finds the task again (see [`restart_containerd_while_running`]), `ctr
/// task kill` sends SIGTERM (trapped: exit 7), `ctr task delete` reports
/// it, and then the shim, its VM and its state are gone.
#[test]
fn detached_task_exec_kill_and_delete_leave_nothing() {
    let _one = one_at_a_time();
    let mut containerd = Containerd::start("d");
    let (ns, _peer) = pod_namespace("shim-d");
    let script = "trap 'exit 7' TERM; sleep 1000000 & wait";
    containerd
        .run_container(
            &["--detach", "--with-ns", &with_netns(&ns)],
            "s2",
            &["sh", "-c", script],
        )
        .ok();
    assert!(
        in_namespace(&ns, "ip", &["-o", "link"]).contains("rvtap0"),
        "runvm's tap for eth0"
    );
    let tasks = containerd.tasks();
    assert!(
        matches!(tasks.as_slice(), [(id, pid, status)] if id == "s2" && *pid > 0 && status == "RUNNING"),
        "{tasks:?}"
    );
    containerd.assert_vm_in_cgroup("s2");
    let exec = containerd
        .exec(
            &["--cwd", "/etc"],
            "e1",
            "s2",
            &["sh", "-c", "echo from exec; pwd; echo exec err >&2; exit 4"],
        )
        .exits(4);
    assert_eq!(exec.stdout, "from exec\n/etc\n", "{exec}");
    assert_eq!(exec.stderr, "exec err\n", "{exec}");
    let address = containerd
        .exec(&[], "e2", "s2", &["ip", "-o", "-4", "addr", "show", "eth0"])
        .ok();
    assert!(
        address.stdout.contains(&format!("inet {POD_ADDRESS}")),
        "the namespace's eth0 and address in the guest: {address}"
    );
    let ps = containerd.ctr(&["tasks", "ps", "s2"]).ok();
    assert!(
        ps.stdout.lines().skip(1).count() >= 2,
        "`ctr task ps` lists the shell and its sleep: {ps}"
    );
    let events = restart_containerd_while_running(&mut containerd, "s2");
    containerd.ctr(&["tasks", "kill", "s2"]).ok();
    containerd.daemon.wait_until_stopped("s2", false);
    let deleted = containerd.ctr(&["tasks", "delete", "s2"]).ok();
    assert!(
        deleted.stdout.contains("exit code 7") || deleted.stderr.contains("exit code 7"),
        "`ctr task delete` reports the exit status: {deleted}"
    );
    // The shim's events reach the restarted containerd.
    events.wait_for_line("the exec's start after the restart", |line| {
        line.contains("/tasks/exec-started") && line.contains(r#""exec_id":"after-restart""#)
    });
    events.wait_for_line("the task's exit status after the restart", |line| {
        line.contains("/tasks/exit")
            && line.contains(r#""id":"s2""#)
            && line.contains(r#""exit_status":7"#)
    });
    drop(events);
    containerd.ctr(&["containers", "rm", "s2"]).ok();
    containerd.assert_nothing_left();
    let left = runvm_leftovers(&ns);
    assert!(left.is_empty(), "runvm's taps or filters are left: {left}");
    containerd.stop_and_assert_clean();
}

/// The shim SIGKILLed while its task runs: containerd sees the task end
/// and runs `containerd-shim-runvm-v2 delete`, after which no VMM,
/// virtiofsd, rootfs mount, pod state, tap or TC filter is left.
#[test]
fn a_killed_shim_is_cleaned_up_by_shim_delete() {
    let _one = one_at_a_time();
    let containerd = Containerd::start("k");
    let (ns, _peer) = pod_namespace("shim-k");
    containerd
        .run_container(
            &["--detach", "--with-ns", &with_netns(&ns)],
            "s3",
            &["sleep", "1000000"],
        )
        .ok();
    assert!(
        !runvm_leftovers(&ns).is_empty(),
        "runvm's tap and filters while the task runs"
    );
    let shims = containerd.shims();
    assert_eq!(shims.len(), 1, "one shim for the task: {shims:?}");
    let pod_dir = containerd.shim_state().join("s3");
    assert!(pod_dir.is_dir(), "the pod's state {}", pod_dir.display());
    containerd.assert_vm_in_cgroup("s3");
    // SAFETY: kill(2) on the shim this test's containerd started.
    unsafe { libc::kill(shims[0].0 as libc::pid_t, libc::SIGKILL) };
    containerd.daemon.wait_until_stopped("s3", true);
    wait_for("the pod's state is removed", || {
        (!pod_dir.exists())
            .then_some(())
            .ok_or(format!("{} is left", pod_dir.display()))
    });
    let _ = containerd.command(&["tasks", "delete", "s3"]).output();
    containerd.ctr(&["containers", "rm", "s3"]).ok();
    containerd.assert_nothing_left();
    let left = runvm_leftovers(&ns);
    assert!(left.is_empty(), "runvm's taps or filters are left: {left}");
    containerd.stop_and_assert_clean();
}

/// containerd stopped (SIGTERM) and started again while task `id` runs,
/// as a node's containerd upgrade does: it reconnects to the running shim
/// (Connect; the same shim, no new one), lists the task running with its
/// pid, and `ctr task exec` works. Returns a watch on containerd's event
/// stream (subscribed before the exec) for the caller's checks that the
/// shim's events reach the new containerd.
fn restart_containerd_while_running(containerd: &mut Containerd, id: &str) -> EventWatch {
    let shims = containerd.shims();
    assert_eq!(shims.len(), 1, "one shim for the task: {shims:?}");
    let before = containerd.tasks();
    containerd.daemon.restart();
    let after = containerd.tasks();
    assert!(
        matches!(after.as_slice(), [(task, _, status)] if task == id && status == "RUNNING"),
        "after the restart: {after:?}\n{}",
        containerd.log()
    );
    assert_eq!(
        after, before,
        "the task's pid and status across the restart"
    );
    assert_eq!(containerd.shims(), shims, "the same shim serves the task");
    let events = EventWatch::start(containerd);
    let exec = containerd
        .exec(
            &[],
            "after-restart",
            id,
            &["sh", "-c", "echo after restart; exit 5"],
        )
        .exits(5);
    assert_eq!(exec.stdout, "after restart\n", "{exec}");
    events
}

/// `ctr events` running, its lines in a file; killed when dropped.
struct EventWatch {
    child: std::process::Child,
    output: PathBuf,
}

impl EventWatch {
    /// Subscribed once an event the test makes (a namespace label) shows.
    fn start(containerd: &Containerd) -> EventWatch {
        let output = containerd.scratch.join("events.txt");
        let file = std::fs::File::create(&output).expect("the events file");
        let child = containerd
            .command(&["events"])
            .stdout(file)
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("cannot start `ctr events`");
        let watch = EventWatch { child, output };
        let mut probe = 0;
        wait_for("`ctr events` is subscribed", || {
            probe += 1;
            let label = format!("runvm-e2e-probe={probe}");
            containerd
                .ctr(&["namespaces", "label", &containerd.namespace, &label])
                .ok();
            let text = harness::read_text(&watch.output);
            text.contains("/namespaces/update")
                .then_some(())
                .ok_or(text)
        });
        watch
    }

    /// Waits until a line of the stream satisfies `wanted`.
    #[track_caller]
    fn wait_for_line(&self, what: &str, wanted: impl Fn(&str) -> bool) {
        wait_for(what, || {
            let text = harness::read_text(&self.output);
            text.lines().any(&wanted).then_some(()).ok_or(text)
        });
    }
}

impl Drop for EventWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
