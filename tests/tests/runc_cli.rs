//! runc's command line, driven directly the way conmon and containerd's
//! shim drive it, on busybox bundles made here: `spec`, `create
//! --pid-file`, `state`, `start`, `exec` (foreground, and `--detach
//! --process --pid-file`), `ps`, `list`, `kill`, `delete [--force]`,
//! `run [--detach]`, hooks on the host, and nothing left behind (not in
//! `--root`, no process, no mount), also after a kill -9 of the pid-file
//! process.
//!
//! The runtime under test is `$RUNVM_TEST_RUNTIME` or the runvm build (see
//! `common/harness.rs`); with `RUNVM_TEST_RUNTIME=/usr/sbin/runc` these
//! tests check themselves against runc. Each test is one container (for
//! runvm, one microVM); they run one at a time.
//!
//! Like conmon and the shim, this test process is a child subreaper: the
//! process named by `--pid-file` must become its child when `create` (or
//! `run --detach`, `exec --detach`) returns, live as long as the
//! container's process and end with its status.

#[path = "common/cgroup_view.rs"]
mod cgroup_view;
mod common;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/jail_view.rs"]
mod jail_view;
#[path = "runc_cli/pods.rs"]
mod pods;
#[path = "common/runtime_cli.rs"]
mod runtime_cli;
#[path = "runc_cli/templates.rs"]
mod templates;

use std::path::{Path, PathBuf};

use cgroup_view::CgroupView;
use harness::{
    assert_empty_dir, assert_no_mounts_below, assert_no_process_references, busybox_rootfs,
    processes_referencing, read_text, run, run_to_files, wait_for,
};
use runtime_cli::{one_at_a_time, unique, Cli};
use serde_json::{json, Value};

impl Cli {
    /// `state ID` as JSON.
    #[track_caller]
    fn state(&self, id: &str) -> Value {
        let output = self.run(&["state", id]).ok();
        serde_json::from_str(&output.stdout)
            .unwrap_or_else(|e| panic!("`state {id}` is not JSON ({e}): {output}"))
    }

    #[track_caller]
    fn status(&self, id: &str) -> String {
        self.state(id)["status"]
            .as_str()
            .unwrap_or_else(|| panic!("no status in the state of {id}"))
            .to_string()
    }

    /// A bundle `scratch/name`: a busybox rootfs and the config.json that
    /// `<runtime> spec` writes, with no terminal, `args` as the process, a
    /// tmpfs on /tmp (the rootfs stays read-only), then `edit` applied.
    fn bundle(&self, name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> PathBuf {
        let dir = self.scratch.join(name);
        busybox_rootfs(&dir.join("rootfs"));
        let mut spec = self.command(&["spec"]);
        spec.current_dir(&dir);
        run(&mut spec).ok();
        let path = dir.join("config.json");
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(&path).expect("spec wrote config.json"))
                .expect("config.json is JSON");
        config["process"]["terminal"] = json!(false);
        config["process"]["args"] = json!(args);
        config["mounts"]
            .as_array_mut()
            .expect("spec has mounts")
            .push(
                json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                         "options": ["nosuid", "nodev", "mode=1777"]}),
            );
        edit(&mut config);
        std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write");
        dir
    }

    /// The ids `list` shows, checking that `list --format json` agrees.
    #[track_caller]
    fn listed(&self) -> Vec<String> {
        let quiet = self.run(&["list", "-q"]).ok();
        let mut ids: Vec<String> = quiet.stdout.split_whitespace().map(String::from).collect();
        ids.sort();
        let table = self.run(&["list"]).ok();
        let header = table.stdout.lines().next().unwrap_or("");
        for column in ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"] {
            assert!(
                header.contains(column),
                "`list` header lacks {column}: {table}"
            );
        }
        let json = self.run(&["list", "--format", "json"]).ok();
        let parsed: Value = serde_json::from_str(&json.stdout)
            .unwrap_or_else(|e| panic!("`list --format json` is not JSON ({e}): {json}"));
        let mut json_ids: Vec<String> = match &parsed {
            // runc prints `null` when there is no container.
            Value::Null => Vec::new(),
            Value::Array(entries) => entries
                .iter()
                .map(|e| e["id"].as_str().expect("an id").to_string())
                .collect(),
            other => panic!("`list --format json` is not a list: {other}"),
        };
        json_ids.sort();
        assert_eq!(ids, json_ids, "`list -q` and `list --format json` differ");
        ids
    }

    /// Nothing of the container is left: not listed, `state` fails,
    /// `--root` empty, no process or mount refers to the scratch dir.
    #[track_caller]
    fn assert_gone(&self, id: &str) {
        self.run(&["state", id]).fails();
        assert!(self.listed().is_empty(), "containers still listed");
        assert_empty_dir(&self.root);
        assert_no_process_references(&[self.scratch.display()]);
        assert_no_mounts_below(self.scratch.path());
    }
}

fn pid_file(path: &Path) -> u32 {
    let text = read_text(path);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{} holds {text:?}, not a pid", path.display()))
}

/// How a process ended, as its parent sees it.
#[derive(Debug, PartialEq)]
enum Ended {
    Code(i32),
    Signal(i32),
}

/// Asserts `pid` (named by a pid file) is alive and a child of this
/// process: conmon and containerd's shim, child subreapers like this test,
/// wait for it with waitpid(2).
#[track_caller]
fn assert_our_live_child(pid: u32, what: &str) {
    assert!(
        harness::alive(pid),
        "{what}: pid {pid} is not a live process"
    );
    let me = std::process::id();
    assert!(
        harness::descends_from(pid, me),
        "{what}: pid {pid} does not descend from the caller {me}"
    );
    assert_eq!(
        harness::parent_of(pid),
        Some(me),
        "{what}: pid {pid} is not a child of the caller (a subreaper) once the command returned"
    );
}

/// Waits for our child `pid` to end and reaps it.
#[track_caller]
fn reap(pid: u32) -> Ended {
    wait_for(&format!("pid {pid} ends"), || {
        let mut status = 0;
        // SAFETY: waitpid(2) on one pid, with a valid status pointer.
        let got = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        if got == pid as libc::pid_t {
            Ok(if libc::WIFSIGNALED(status) {
                Ended::Signal(libc::WTERMSIG(status))
            } else {
                Ended::Code(libc::WEXITSTATUS(status))
            })
        } else if got == 0 {
            Err("still running".into())
        } else {
            panic!(
                "waitpid({pid}): {}: the pid-file process is not our child",
                std::io::Error::last_os_error()
            )
        }
    })
}

/// The state JSON has runc's fields with this container's values.
#[track_caller]
fn assert_state_fields(state: &Value, id: &str, pid: u32, status: &str, bundle: &Path) {
    let text = state.to_string();
    assert!(
        state["ociVersion"].as_str().is_some_and(|v| !v.is_empty()),
        "ociVersion: {text}"
    );
    assert_eq!(state["id"], json!(id), "id: {text}");
    assert_eq!(state["pid"], json!(pid), "pid (the pid file's): {text}");
    assert_eq!(state["status"], json!(status), "status: {text}");
    assert_eq!(
        state["bundle"],
        json!(bundle.display().to_string()),
        "bundle: {text}"
    );
    assert_eq!(
        state["rootfs"],
        json!(bundle.join("rootfs").display().to_string()),
        "rootfs: {text}"
    );
    let created = state["created"].as_str().unwrap_or("");
    let year_ok = created.get(..4).is_some_and(|y| y.parse::<u32>().is_ok());
    assert!(
        year_ok && created.contains('T'),
        "created is not an RFC 3339 time: {text}"
    );
    assert!(state["owner"].is_string(), "owner: {text}");
}

fn hook(dir: &Path, name: &str) -> Value {
    json!({"path": "/bin/sh",
           "args": ["sh", "-c", format!("cat > {}/{name}.json", dir.display())]})
}

/// The state a hook received on its stdin, if it ran.
fn hook_state(dir: &Path, name: &str) -> Option<Value> {
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).ok()?;
    Some(
        serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("the {name} hook got no state JSON on stdin ({e}): {text:?}")
        }),
    )
}

#[track_caller]
fn assert_hook_ran(dir: &Path, name: &str, id: &str, bundle: &Path) {
    let state = hook_state(dir, name).unwrap_or_else(|| panic!("the {name} hook did not run"));
    assert_eq!(state["id"], json!(id), "{name} hook state: {state}");
    assert_eq!(
        state["bundle"],
        json!(bundle.display().to_string()),
        "{name} hook state: {state}"
    );
}

/// create → created → start → running, with the state, list, hooks,
/// exec (foreground and detached), ps, the refused delete, kill, the
/// refused kill of a stopped container, delete and its poststop hook.
#[test]
fn create_start_exec_ps_kill_delete_with_hooks() {
    let _one = one_at_a_time();
    let cli = Cli::new("cli", "life");
    let id: &str = &unique("life");
    let hooks = cli.scratch.join("hooks");
    std::fs::create_dir_all(&hooks).expect("hooks dir");
    // `wait` is interrupted by a trapped signal (a foreground command
    // would hold the trap back until it ends, in any shell); the loop
    // waits again after each USR1.
    let script = "n=0; trap 'n=$((n+1)); echo got USR1 $n' USR1; \
                  trap 'echo got TERM; exit 7' TERM; \
                  echo started; sleep 1000000 & while :; do wait; done";
    // The host cgroup that containerd's shim or podman would name.
    let cgroups_path = format!("{}/life", cli.cgroup_parent);
    let bundle = cli.bundle("bundle", &["sh", "-c", script], |config| {
        config["hooks"] = json!({
            "createRuntime": [hook(&hooks, "createRuntime")],
            "poststart": [hook(&hooks, "poststart")],
            "poststop": [hook(&hooks, "poststop")],
        });
        config["linux"]["cgroupsPath"] = json!(cgroups_path);
        config["linux"]["resources"]["memory"] = json!({"limit": BUNDLE_MEMORY_LIMIT});
    });
    let (out, err) = (cli.scratch.join("life.out"), cli.scratch.join("life.err"));
    let pid_path = cli.scratch.join("life.pid");

    cli.create_to_files(&bundle, &pid_path, id, &out, &err).ok();
    let pid = pid_file(&pid_path);
    assert_our_live_child(pid, "after create");
    assert_state_fields(&cli.state(id), id, pid, "created", &bundle);
    assert_eq!(cli.listed(), vec![id.to_string()]);
    let listed = cli.run(&["list", "--format", "json"]).ok();
    let entry = &serde_json::from_str::<Value>(&listed.stdout).expect("json")[0];
    assert_state_fields(entry, id, pid, "created", &bundle);
    assert_hook_ran(&hooks, "createRuntime", id, &bundle);
    let cgroup = CgroupView::of(&cgroups_path);
    assert_host_cgroup(&cli, &cgroup, pid);
    if cli.runtime.is_runvm {
        let root = cli.root.display().to_string();
        let vmm = jail_view::vmm_processes(&processes_referencing(&[root]));
        let jail = cli.root.join(id).join("vm").join("jail");
        jail_view::assert_jailed(vmm.jailed, &jail, &["vsock.sock", "virtiofs.sock"]);
    }
    // Not asserted: that poststart has not run yet (runc 1.1 runs it in
    // `create`; the runtime spec says after the process starts).
    assert!(
        !read_text(&out).contains("started"),
        "the process ran before start: {}",
        read_text(&out)
    );

    cli.run(&["start", id]).ok();
    // Poststart hooks run before `start` returns.
    assert_hook_ran(&hooks, "poststart", id, &bundle);
    wait_for("the process prints `started`", || {
        let text = read_text(&out);
        if text.contains("started") {
            Ok(())
        } else {
            Err(format!("{text:?}, stderr {:?}", read_text(&err)))
        }
    });
    assert_state_fields(&cli.state(id), id, pid, "running", &bundle);
    assert!(harness::alive(pid), "pid {pid} died at start");

    // Every signal reaches the trapping process, in order: 50 USR1, each
    // answered before the next is sent (two of a kind pending at once
    // merge into one, on any kernel).
    for n in 1..=50 {
        cli.run(&["kill", id, "USR1"]).ok();
        let answer = format!("got USR1 {n}\n");
        wait_for(&format!("the trap answers USR1 number {n}"), || {
            let text = read_text(&out);
            if text.contains(&answer) {
                Ok(())
            } else {
                Err(text.lines().last().unwrap_or_default().to_string())
            }
        });
    }

    // A detached exec, as containerd's shim and conmon do it.
    let mut process = cli_config(&bundle)["process"].clone();
    process["args"] = json!([
        "sh",
        "-c",
        "while [ ! -e /tmp/go ]; do sleep 1; done; echo detached exec done; exit 6"
    ]);
    let process_path = cli.scratch.join("process.json");
    std::fs::write(&process_path, process.to_string()).expect("process.json");
    let exec_pid_path = cli.scratch.join("exec.pid");
    let (exec_out, exec_err) = (cli.scratch.join("exec.out"), cli.scratch.join("exec.err"));
    run_to_files(
        &mut cli.command(&[
            "exec",
            "--detach",
            "--pid-file",
            &exec_pid_path.display().to_string(),
            "--process",
            &process_path.display().to_string(),
            id,
        ]),
        &exec_out,
        &exec_err,
    )
    .ok();
    let exec_pid = pid_file(&exec_pid_path);
    assert_our_live_child(exec_pid, "after exec --detach");
    cgroup.assert_holds(exec_pid, "the detached exec's pid-file process");

    let ps = cli.run(&["ps", "--format", "json", id]).ok();
    let pids: Vec<Value> = serde_json::from_str(&ps.stdout)
        .unwrap_or_else(|e| panic!("`ps --format json` is not a JSON list ({e}): {ps}"));
    // Every process of the container, as runc lists its cgroup: the init,
    // its `sleep`, the exec'd shell (and its `sleep` when one runs).
    assert!(
        pids.len() >= 3 && pids.iter().all(|p| p.as_u64().is_some_and(|p| p > 0)),
        "`ps --format json` should list the init, its child and the exec'd process: {ps}"
    );
    let table = cli.run(&["ps", id]).ok();
    assert!(
        table
            .stdout
            .lines()
            .next()
            .is_some_and(|h| h.contains("PID")),
        "`ps` prints a table with a PID column: {table}"
    );
    assert!(
        table.stdout.contains("sleep 1000000"),
        "`ps` shows the init's child with its arguments: {table}"
    );

    // A foreground exec: its output, environment, cwd and exit code.
    let exec = cli
        .run(&[
            "exec",
            "--env",
            "GREETING=hello",
            "--cwd",
            "/etc",
            id,
            "sh",
            "-c",
            "echo \"greeting=$GREETING\"; pwd; echo to stderr >&2; touch /tmp/go; exit 5",
        ])
        .exits(5);
    assert_eq!(exec.stdout, "greeting=hello\n/etc\n", "{exec}");
    assert_eq!(exec.stderr, "to stderr\n", "{exec}");
    assert_eq!(reap(exec_pid), Ended::Code(6), "the detached exec's status");
    assert!(
        read_text(&exec_out).contains("detached exec done"),
        "detached exec output: {:?}",
        read_text(&exec_out)
    );

    // A running container is not deleted without --force.
    cli.run(&["delete", id]).fails();
    assert_eq!(cli.status(id), "running");

    // pause freezes it (twice is an error), resume thaws it.
    cli.run(&["pause", id]).ok();
    assert_eq!(cli.status(id), "paused");
    cli.run(&["pause", id]).fails();
    cli.run(&["resume", id]).ok();
    assert_eq!(cli.status(id), "running");
    // update changes the limits; events --stats shows them. The CPU quota
    // also bounds the host cgroup (for runvm: the whole VM).
    cli.run(&[
        "update",
        "--memory",
        "64m",
        "--pids-limit",
        "20",
        "--cpu-quota",
        "50000",
        "--cpu-period",
        "100000",
        id,
    ])
    .ok();
    assert_eq!(
        cgroup.cpu_quota(),
        Some(50000),
        "host CPU quota after update"
    );
    let events = cli.run(&["events", "--stats", id]).ok();
    let stats: Value = serde_json::from_str(events.stdout.trim())
        .unwrap_or_else(|e| panic!("`events --stats` is not JSON ({e}): {events}"));
    assert_eq!(stats["type"], "stats", "{events}");
    assert_eq!(
        stats["data"]["memory"]["usage"]["limit"],
        64 << 20,
        "{events}"
    );
    assert_eq!(stats["data"]["pids"]["limit"], 20, "{events}");
    assert!(
        stats["data"]["pids"]["current"].as_u64() >= Some(1),
        "{events}"
    );

    cli.run(&["kill", id, "TERM"]).ok();
    wait_for("the container stops", || match cli.status(id).as_str() {
        "stopped" => Ok(()),
        other => Err(other.to_string()),
    });
    assert_eq!(reap(pid), Ended::Code(7), "the pid-file process's status");
    assert!(read_text(&out).contains("got TERM"), "{}", read_text(&out));
    cli.run(&["kill", id, "KILL"]).fails();

    assert!(
        hook_state(&hooks, "poststop").is_none(),
        "poststop ran before delete"
    );
    cli.run(&["delete", id]).ok();
    assert_hook_ran(&hooks, "poststop", id, &bundle);
    cli.assert_gone(id);
    assert!(
        !cgroup.exists(),
        "delete left the cgroup {}",
        cgroup.dir.display()
    );
}

/// The memory limit of the life-cycle test's bundle.
const BUNDLE_MEMORY_LIMIT: u64 = 32 << 20;

/// The container's host cgroup after create: it holds the pid-file
/// process and, for runvm, every process of the container's VM (the VMM
/// with all its threads, virtiofsd), and its memory limit covers the
/// bundle's (runvm's is the guest's RAM plus the host processes').
#[track_caller]
fn assert_host_cgroup(cli: &Cli, cgroup: &CgroupView, pid: u32) {
    cgroup.assert_holds(pid, "the pid-file process");
    if cli.runtime.is_runvm {
        let root = cli.root.display().to_string();
        let processes = processes_referencing(std::slice::from_ref(&root));
        for part in ["runvm-vmm", "virtiofsd"] {
            assert!(
                processes.iter().any(|(_, line)| line.contains(part)),
                "no {part} among the container's processes: {processes:?}"
            );
        }
        for (pid, line) in &processes {
            cgroup.assert_holds(*pid, line);
        }
    }
    let limit = cgroup.memory_limit();
    assert!(
        limit.is_some_and(|l| (BUNDLE_MEMORY_LIMIT..BUNDLE_MEMORY_LIMIT + (1 << 30)).contains(&l)),
        "memory limit of {}: {limit:?}, the bundle's is {BUNDLE_MEMORY_LIMIT}",
        cgroup.dir.display()
    );
}

fn cli_config(bundle: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(bundle.join("config.json")).expect("config.json"))
        .expect("json")
}

/// Whether the host's cgroups have the hugetlb controller (runc needs it
/// for any hugepage limit, even 0).
fn host_has_hugetlb_cgroup() -> bool {
    Path::new("/sys/fs/cgroup/hugetlb").exists()
        || std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers")
            .is_ok_and(|c| c.split_whitespace().any(|c| c == "hugetlb"))
}

/// `run` in the foreground: the container's stdout, stderr and exit code
/// are the command's, and the container is gone when it returns. The
/// bundle carries what kubelet and podman send: hugepage limits of 0 (for
/// runc only where the host has a hugetlb cgroup), a block I/O weight, a
/// tmpfs with tmpcopyup, a recursively read-only bind mount; `features`
/// lists those mount options. Also `--version`, and `state` of an unknown
/// container.
#[test]
fn run_in_the_foreground() {
    let _one = one_at_a_time();
    let cli = Cli::new("cli", "run");
    let version = cli.run(&["--version"]).ok();
    assert!(version.stdout.contains("version"), "{version}");
    cli.run(&["state", "no-such-container"]).fails();
    let features: Value =
        serde_json::from_str(&cli.run(&["features"]).ok().stdout).expect("features is JSON");
    for option in ["tmpcopyup", "rro", "rbind", "nosuid"] {
        assert!(
            features["mountOptions"]
                .as_array()
                .is_some_and(|list| list.iter().any(|o| o == option)),
            "features lacks {option}: {features}"
        );
    }

    let id: &str = &unique("fg");
    let data = cli.scratch.join("data");
    std::fs::create_dir_all(data.join("sub")).expect("data dir");
    let hugepages = cli.runtime.is_runvm || host_has_hugetlb_cgroup();
    // HOME comes from the rootfs's /etc/passwd (runvm reads it on the host).
    let script = "echo out home=$HOME; cat /run/link; \
        touch /run/new /data/new /data/sub/new 2>&1 | wc -l; echo err >&2; exit 3";
    let bundle = cli.bundle("bundle", &["sh", "-c", script], |config| {
        let resources = &mut config["linux"]["resources"];
        if hugepages {
            resources["hugepageLimits"] = json!([
                {"pageSize": "2MB", "limit": 0}, {"pageSize": "1GB", "limit": 0}
            ]);
        }
        resources["blockIO"] = json!({"weight": 500});
        let mounts = config["mounts"].as_array_mut().expect("mounts");
        mounts.push(
            json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                           "options": ["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]}),
        );
        mounts.push(json!({"destination": "/data", "type": "bind",
                           "source": data.display().to_string(),
                           "options": ["rbind", "rprivate", "rro"]}));
    });
    let output = cli
        .run(&["run", "--bundle", &bundle.display().to_string(), id])
        .exits(3);
    // /run is writable; /data and /data/sub are not.
    assert_eq!(
        output.stdout, "out home=/root\nrun from the image\n2\n",
        "{output}"
    );
    assert_eq!(output.stderr, "err\n", "{output}");
    assert!(!data.join("new").exists() && !data.join("sub/new").exists());
    cli.assert_gone(id);
}

/// `run --detach` then `delete --force` of the running container, under
/// a `--root` whose socket paths do not fit a socket address.
#[test]
fn delete_force_of_a_running_container() {
    let _one = one_at_a_time();
    let cli = Cli::new("cli", "force").with_deep_root();
    let id: &str = &unique("force");
    let bundle = cli.bundle(
        "bundle",
        &["sh", "-c", "echo up; exec sleep 1000000"],
        |_| {},
    );
    let (out, err) = (cli.scratch.join("out"), cli.scratch.join("err"));
    let pid_path = cli.scratch.join("pid");
    run_to_files(
        &mut cli.command(&[
            "run",
            "--detach",
            "--bundle",
            &bundle.display().to_string(),
            "--pid-file",
            &pid_path.display().to_string(),
            id,
        ]),
        &out,
        &err,
    )
    .ok();
    let pid = pid_file(&pid_path);
    assert_our_live_child(pid, "after run --detach");
    assert_state_fields(&cli.state(id), id, pid, "running", &bundle);
    wait_for("the process prints `up`", || {
        let text = read_text(&out);
        text.contains("up").then_some(()).ok_or(text)
    });
    cli.run(&["delete", id]).fails();
    cli.run(&["delete", "--force", id]).ok();
    reap(pid);
    cli.assert_gone(id);
}

/// kill -9 of the pid-file process of a running container (a crash of
/// what conmon or the shim waits for), then `delete --force`: nothing may
/// be left (for runvm: no VMM, no virtiofsd).
#[test]
fn kill_9_of_the_pid_file_process_then_delete() {
    let _one = one_at_a_time();
    let cli = Cli::new("cli", "kill9");
    let id: &str = &unique("kill9");
    let bundle = cli.bundle(
        "bundle",
        &["sh", "-c", "echo up; exec sleep 1000000"],
        |_| {},
    );
    let (out, err) = (cli.scratch.join("out"), cli.scratch.join("err"));
    let pid_path = cli.scratch.join("pid");
    cli.create_to_files(&bundle, &pid_path, id, &out, &err).ok();
    cli.run(&["start", id]).ok();
    let pid = pid_file(&pid_path);
    assert_our_live_child(pid, "after create and start");
    wait_for("the process prints `up`", || {
        let text = read_text(&out);
        text.contains("up").then_some(()).ok_or(text)
    });
    // SAFETY: kill(2) on the container's process this test started.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(reap(pid), Ended::Signal(libc::SIGKILL));
    cli.run(&["delete", "--force", id]).ok();
    cli.assert_gone(id);
}

/// runvm only: the pieces of a VM runtime can crash on their own. A VMM
/// killed with SIGKILL stops the container (its pid-file process ends,
/// state says stopped) and `delete` leaves nothing; a `create` killed
/// while the VM boots takes its VM along, and `delete` removes the rest.
#[test]
fn runvm_kill_9_of_the_vmm_or_of_a_create_in_progress() {
    let _one = one_at_a_time();
    let cli = Cli::new("cli", "vmm9");
    assert!(
        cli.runtime.is_runvm,
        "this test is about runvm's VMM; run it without RUNVM_TEST_RUNTIME"
    );
    let id: &str = &unique("vmm9");
    let bundle = cli.bundle("bundle", &["sh", "-c", "exec sleep 1000000"], |_| {});
    let pid_path = cli.scratch.join("pid");
    // The container's stdio is the create call's: files, not pipes.
    cli.create_to_files(
        &bundle,
        &pid_path,
        id,
        &cli.scratch.join("out"),
        &cli.scratch.join("err"),
    )
    .ok();
    cli.run(&["start", id]).ok();
    let pid = pid_file(&pid_path);
    let root = cli.root.display().to_string();
    // The jailed VMM, which takes its supervisor along.
    let vmm = jail_view::vmm_processes(&processes_referencing(std::slice::from_ref(&root)));
    // SAFETY: kill(2) on the VMM this test's container started.
    unsafe { libc::kill(vmm.jailed as libc::pid_t, libc::SIGKILL) };
    assert!(
        matches!(reap(pid), Ended::Code(_)),
        "the pid-file process ends with a status when its VM is gone"
    );
    assert_eq!(cli.status(id), "stopped");
    cli.run(&["kill", id, "KILL"]).fails();
    cli.run(&["delete", id]).ok();
    cli.assert_gone(id);

    // A create killed while its VM boots.
    let id2: &str = &unique("boot9");
    let mut create = cli.command(&["create", "--bundle", &bundle.display().to_string(), id2]);
    let mut child = create
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start create");
    wait_for("the VM of the second container boots", || {
        let found = processes_referencing(std::slice::from_ref(&root))
            .into_iter()
            .any(|(_, line)| line.contains("runvm-vmm"));
        found.then_some(()).ok_or_else(|| "no VMM yet".to_string())
    });
    child.kill().expect("SIGKILL create");
    child.wait().expect("reap create");
    // Its monitor, VMM and virtiofsd go by themselves.
    assert_no_process_references(std::slice::from_ref(&root));
    cli.run(&["delete", id2]).ok();
    cli.assert_gone(id2);
}
