//! Pods through the runc command line: a sandbox and its members created
//! from containerd's CRI annotations run in one VM, members come and go
//! while the sandbox runs, a member that names the sandbox's namespaces by
//! `/proc/<pid>/ns` paths (as podman does) joins its VM and shares them,
//! killing the sandbox stops its members, and a member naming a sandbox
//! that is not there is refused leaving nothing.
//! These are runvm's pods (runc knows no sandboxes: it runs members as
//! plain containers), so they are skipped under `RUNVM_TEST_RUNTIME`.

use super::*;

const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

impl Cli {
    /// A bundle marked the way containerd's CRI plugin marks a pod's
    /// sandbox (`sandbox == None`) or one of its containers.
    fn pod_bundle(&self, name: &str, args: &[&str], kind: &str, sandbox: &str) -> PathBuf {
        self.bundle(name, args, |config| {
            config["annotations"] = json!({CONTAINER_TYPE: kind, SANDBOX_ID: sandbox});
        })
    }

    /// Runs `exec id cmd...`, its stdout.
    #[track_caller]
    fn exec_out(&self, id: &str, args: &[&str]) -> String {
        let mut full = vec!["exec", id];
        full.extend_from_slice(args);
        self.run(&full).ok().stdout
    }

    /// Creates and starts `id` from `bundle` as conmon does; its pid-file
    /// process and its stdout file once it printed `ready`.
    #[track_caller]
    fn start_printing(&self, bundle: &Path, id: &str, ready: &str) -> (u32, PathBuf) {
        let out = self.scratch.join(format!("{id}.out"));
        let err = self.scratch.join(format!("{id}.err"));
        let pid_path = self.scratch.join(format!("{id}.pid"));
        self.create_to_files(bundle, &pid_path, id, &out, &err).ok();
        self.run(&["start", id]).ok();
        let pid = pid_file(&pid_path);
        assert_our_live_child(pid, &format!("{id} after create and start"));
        wait_for(&format!("{id} prints {ready:?}"), || {
            let text = read_text(&out);
            if text.contains(ready) {
                Ok(())
            } else {
                Err(format!("{text:?}, stderr {:?}", read_text(&err)))
            }
        });
        (pid, out)
    }

    /// The VMMs this test's containers run (a jailed VMM is a child of
    /// its supervisor, which is counted).
    fn vmm_count(&self) -> usize {
        let root = self.root.display().to_string();
        let vmms: Vec<u32> = processes_referencing(std::slice::from_ref(&root))
            .into_iter()
            // Booted (--kernel) or restored from a template (--restore).
            .filter(|(_, line)| line.contains("runvm-vmm") && line.contains("--vsock-socket"))
            .map(|(pid, _)| pid)
            .collect();
        vmms.iter()
            .filter(|pid| !harness::parent_of(**pid).is_some_and(|parent| vmms.contains(&parent)))
            .count()
    }
}

const SLEEPER: &str = "cat /proc/sys/kernel/random/boot_id; echo up; exec sleep 1000000";

#[test]
fn pod_sandbox_and_members_share_one_vm() {
    let _one = one_at_a_time();
    let cli = Cli::new("cli", "pod");
    if !cli.runtime.is_runvm {
        return;
    }
    let pod: &str = &unique("pod");
    let (app1, app2): (&str, &str) = (&unique("app1"), &unique("app2"));
    let sandbox = cli.bundle("pod", &["sh", "-c", SLEEPER], |config| {
        config["annotations"] = json!({CONTAINER_TYPE: "sandbox", SANDBOX_ID: pod});
        config["hostname"] = json!("podhost");
    });
    let (pod_pid, pod_out) = cli.start_printing(&sandbox, pod, "up");
    let boot_id = read_text(&pod_out).lines().next().unwrap_or("").to_owned();
    assert_eq!(boot_id.len(), 36, "a boot_id: {boot_id:?}");

    // A member naming a sandbox that is not there: refused, naming it,
    // and nothing of it is left.
    let nosuch: &str = &unique("nosuch");
    let stray = cli.pod_bundle("stray", &["true"], "container", nosuch);
    let bad: &str = &unique("bad");
    let refused = cli
        .run(&["create", "--bundle", &stray.display().to_string(), bad])
        .fails();
    assert!(
        refused.stderr.contains(nosuch),
        "the error names the sandbox id: {refused}"
    );
    cli.run(&["state", bad]).fails();
    assert!(!cli.root.join(bad).exists(), "{bad} left state behind");

    // Members share the sandbox's VM (its kernel: the same boot_id).
    let member = cli.pod_bundle("app1", &["sh", "-c", SLEEPER], "container", pod);
    let (app1_pid, app1_out) = cli.start_printing(&member, app1, "up");
    assert_eq!(
        read_text(&app1_out).lines().next().unwrap_or(""),
        boot_id,
        "the member runs in the sandbox's VM"
    );
    assert_eq!(
        cli.exec_out(app1, &["cat", "/proc/sys/kernel/random/boot_id"])
            .trim(),
        boot_id
    );
    assert_eq!(cli.vmm_count(), 1, "one VM for the pod");
    assert_eq!(cli.status(app1), "running");

    // A member that does not fit the pod's VM is refused at create.
    let big: &str = &unique("big");
    let huge = cli.bundle("big", &["true"], |config| {
        config["annotations"] = json!({CONTAINER_TYPE: "container", SANDBOX_ID: pod});
        config["linux"]["resources"]["memory"] = json!({"limit": 64i64 << 30});
    });
    let refused = cli
        .run(&["create", "--bundle", &huge.display().to_string(), big])
        .fails();
    assert!(refused.stderr.contains("memory limit"), "{refused}");
    assert!(!cli.root.join(big).exists(), "{big} left state behind");

    // The member goes while the sandbox runs.
    cli.run(&["kill", app1, "KILL"]).ok();
    assert_eq!(reap(app1_pid), Ended::Code(128 + libc::SIGKILL));
    assert_eq!(cli.status(app1), "stopped");
    cli.run(&["delete", app1]).ok();
    cli.run(&["state", app1]).fails();
    assert_eq!(cli.status(pod), "running");
    assert_eq!(
        cli.exec_out(pod, &["cat", "/proc/sys/kernel/random/boot_id"])
            .trim(),
        boot_id
    );

    // Another member, unmarked, naming the sandbox's network, IPC and UTS
    // namespaces by the paths of its pid-file process, as podman does: it
    // joins the VM and shares them; its mount namespace is its own.
    let member2 = cli.bundle("app2", &["sh", "-c", SLEEPER], |config| {
        config.as_object_mut().map(|c| c.remove("hostname"));
        config["linux"]["namespaces"] = json!([
            {"type": "pid"}, {"type": "mount"},
            {"type": "network", "path": format!("/proc/{pod_pid}/ns/net")},
            {"type": "ipc", "path": format!("/proc/{pod_pid}/ns/ipc")},
            {"type": "uts", "path": format!("/proc/{pod_pid}/ns/uts")}
        ]);
    });
    let (app2_pid, app2_out) = cli.start_printing(&member2, app2, "up");
    assert_eq!(
        read_text(&app2_out).lines().next().unwrap_or(""),
        boot_id,
        "the member named by namespace paths runs in the sandbox's VM"
    );
    assert_eq!(cli.exec_out(app2, &["hostname"]).trim(), "podhost");
    let namespace =
        |id: &str, name: &str| cli.exec_out(id, &["readlink", &format!("/proc/self/ns/{name}")]);
    for shared in ["net", "ipc", "uts"] {
        assert_eq!(
            namespace(app2, shared),
            namespace(pod, shared),
            "the sandbox's {shared} namespace"
        );
    }
    assert_ne!(namespace(app2, "mnt"), namespace(pod, "mnt"));
    assert_eq!(cli.vmm_count(), 1, "still one VM for the pod");

    // The sandbox is killed under the member: the member stops, its
    // pid-file process ending with a status.
    cli.run(&["kill", pod, "KILL"]).ok();
    assert_eq!(reap(pod_pid), Ended::Code(128 + libc::SIGKILL));
    assert!(
        matches!(reap(app2_pid), Ended::Code(_)),
        "the member's pid-file process ends with a status"
    );
    assert_eq!(cli.status(app2), "stopped");
    assert_eq!(cli.status(pod), "stopped");
    cli.run(&["delete", app2]).ok();
    cli.run(&["delete", pod]).ok();
    cli.assert_gone(pod);
}

/// runvm only: kill -9 of the sandbox's monitor stops every member, and
/// deleting each leaves nothing (no VMM, virtiofsd, mount or state).
#[test]
fn runvm_kill_9_of_the_sandbox_monitor_stops_its_members() {
    let _one = one_at_a_time();
    let cli = Cli::new("cli", "pod9");
    if !cli.runtime.is_runvm {
        return;
    }
    let pod: &str = &unique("pod9");
    let app: &str = &unique("app9");
    let sandbox = cli.pod_bundle("pod", &["sh", "-c", SLEEPER], "sandbox", pod);
    let (pod_pid, _) = cli.start_printing(&sandbox, pod, "up");
    let member = cli.pod_bundle("app", &["sh", "-c", SLEEPER], "container", pod);
    let (app_pid, _) = cli.start_printing(&member, app, "up");
    // SAFETY: kill(2) on the sandbox's pid-file process this test started.
    unsafe { libc::kill(pod_pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(reap(pod_pid), Ended::Signal(libc::SIGKILL));
    assert!(matches!(reap(app_pid), Ended::Code(_)));
    assert_eq!(cli.status(app), "stopped");
    assert_eq!(cli.status(pod), "stopped");
    cli.run(&["delete", app]).ok();
    cli.run(&["delete", pod]).ok();
    cli.assert_gone(pod);
}

/// `delete --force` of a running sandbox stops its members first: their
/// pid-file processes end with the members' status (SIGKILL), and the
/// members' own deletes leave nothing. Under a `--root` whose socket paths
/// (the VM's, the sandbox's control socket) do not fit a socket address.
#[test]
fn delete_force_of_the_sandbox_stops_its_members() {
    let _one = one_at_a_time();
    let cli = Cli::new("cli", "podrm").with_deep_root();
    if !cli.runtime.is_runvm {
        return;
    }
    let pod: &str = &unique("podrm");
    let app: &str = &unique("apprm");
    let sandbox = cli.pod_bundle("pod", &["sh", "-c", SLEEPER], "sandbox", pod);
    let (pod_pid, _) = cli.start_printing(&sandbox, pod, "up");
    let member = cli.pod_bundle("app", &["sh", "-c", SLEEPER], "container", pod);
    let (app_pid, _) = cli.start_printing(&member, app, "up");
    assert!(cli.root.join(pod).join("sandbox.sock").exists());
    cli.run(&["delete", "--force", pod]).ok();
    assert_eq!(reap(app_pid), Ended::Code(128 + libc::SIGKILL));
    reap(pod_pid);
    assert_eq!(cli.status(app), "stopped");
    cli.run(&["delete", app]).ok();
    cli.assert_gone(app);
}
