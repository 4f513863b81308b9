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
//! microVM); they run one at a time.

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

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};

use harness::{
    assert_no_mounts_below, assert_no_process_references, read_text, wait_for, Output,
    RuntimeUnderTest, Scratch,
};
use netns::NetNs;
use pod_netns::PodNetns;
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

/// Busybox's httpd serving `text` on `port` of a namespace of the test's,
/// until dropped: something on the bridge's host side to reach.
struct HostServer(Option<Child>);

impl HostServer {
    fn start(netns: &NetNs, dir: &Path, text: &str, port: u16) -> HostServer {
        std::fs::create_dir_all(dir).expect("the server's directory");
        std::fs::write(dir.join("index.html"), format!("{text}\n")).expect("index.html");
        let mut command = Command::new(harness::BUSYBOX);
        command
            .args(["httpd", "-f", "-p", &port.to_string(), "-h"])
            .arg(dir);
        netns.enter(&mut command);
        HostServer(Some(command.spawn().expect("busybox httpd")))
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        if let Some(server) = self.0.take() {
            harness::terminate(server);
        }
    }
}

/// The shell command of a container serving `text` with httpd on port 80.
fn serve(text: &str) -> String {
    format!("mkdir /www && echo {text} > /www/index.html && httpd -p 80 -h /www")
}

/// HTTP GETs of `addresses` from the namespace at `netns`: the answers.
fn answers_in(netns: &Path, addresses: Vec<String>) -> Vec<String> {
    let ns = std::fs::File::open(netns).expect("open the test's namespace");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: setns(2) of this thread only.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        addresses
            .iter()
            .map(|address| {
                let address = address.parse().expect("an address");
                wait_for(&format!("{address} answers"), || harness::http_get(address))
            })
            .collect()
    })
    .join()
    .expect("the client thread")
}

impl Podman {
    /// The IP and the network namespace (`SandboxKey`) of container `name`.
    #[track_caller]
    fn network_of(&self, name: &str) -> (String, PathBuf) {
        let inspect = self
            .podman(&[
                "inspect",
                "--format",
                "{{.NetworkSettings.IPAddress}} {{.NetworkSettings.SandboxKey}}",
                name,
            ])
            .ok();
        match inspect.stdout.split_whitespace().collect::<Vec<_>>()[..] {
            [ip, sandbox] => (ip.to_string(), PathBuf::from(sandbox)),
            _ => panic!("the IP and namespace of {name}: {inspect}"),
        }
    }

    /// The answer (status line, headers, body) to an HTTP/1.0 GET of `/`
    /// at `host port` from container `name`, once it answers. (Through
    /// `nc`: the static busybox's `wget` crashes in glibc's resolver.)
    #[track_caller]
    fn fetch_in(&self, name: &str, host: &str, port: u16) -> String {
        let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {host} {port}");
        wait_for(&format!("{name} fetches http://{host}:{port}/"), || {
            let got = harness::run(&mut self.env.command(&["exec", name, "sh", "-c", &get]));
            (got.status.success() && got.stdout.starts_with("HTTP/1."))
                .then(|| got.stdout.clone())
                .ok_or(got.to_string())
        })
    }

    /// The gateway of container `name`'s default route.
    #[track_caller]
    fn gateway_of(&self, name: &str) -> String {
        let route = self
            .podman(&["exec", name, "ip", "route", "show", "default"])
            .ok();
        match route.stdout.split_whitespace().collect::<Vec<_>>()[..] {
            ["default", "via", gateway, ..] => gateway.to_string(),
            _ => panic!("{name}'s default route: {route}"),
        }
    }
}

/// podman's default bridge network (netavark), podman itself in a network
/// namespace of the test's, with a container `web` (`run -p`) and a pod
/// `p1` (`pod create -p`: its infra container, running catatonit, and two
/// `run --pod` members) on it at once. Each has its IP on `eth0` and its
/// server answers the test at that IP and through the published port;
/// `web` and the pod reach each other and a server on the bridge's
/// gateway. The pod's members run in one VM (the same boot_id) and share
/// localhost and /dev/shm. For runvm the namespaces of `web` and of the
/// pod hold runvm's tap, joined to `eth0` by TC; after `rm --force` (and
/// `pod rm --force`) each namespace is gone, and all of that with it.
#[test]
fn bridge_network_with_a_container_and_a_pod() {
    let _one = one_at_a_time();
    harness::require_programs(&[("/usr/bin/catatonit", "catatonit")]);
    let netns = NetNs::new("rvpm-net");
    let mut podman = Podman::new("net");
    podman.env.run_in_netns(&netns.path());
    let host = HostServer::start(
        &netns,
        &podman.scratch.join("host-www"),
        "host-says-hello",
        18090,
    );
    let cgroup_parent = podman.env.cgroup_parent.clone();

    let cidfile = podman.scratch.join("cid-web");
    podman.cidfiles.push(cidfile.clone());
    let cidfile = cidfile.display().to_string();
    let web_server = format!("{} -f", serve("web-says-hello"));
    podman
        .podman(&[
            "run",
            "--detach",
            "--pull",
            "never",
            "--cgroup-parent",
            &cgroup_parent,
            "--cidfile",
            &cidfile,
            "--name",
            "web",
            "--publish",
            "127.0.0.1:18080:80",
            podman.image,
            "sh",
            "-c",
            &web_server,
        ])
        .ok();

    podman
        .podman(&[
            "pod",
            "create",
            "--name",
            "p1",
            "--publish",
            "127.0.0.1:18081:80",
            "--cgroup-parent",
            &cgroup_parent,
        ])
        .ok();
    let infra = podman
        .podman(&["pod", "inspect", "--format", "{{.InfraContainerID}}", "p1"])
        .ok();
    let infra = infra.stdout.trim().to_string();
    // The infra container's id, for the final check.
    let infra_file = podman.scratch.join("cid-infra");
    std::fs::write(&infra_file, &infra).expect("infra id");
    podman.cidfiles.push(infra_file);
    let server = format!(
        "{}; cat /proc/sys/kernel/random/boot_id; echo listening; \
         nc -l -p 7777; echo served; exec sleep 1000000",
        serve("pod-says-hello")
    );
    podman.run_in_pod("p1", "a1", &server).ok();
    podman.wait_for_log("a1", "listening");
    podman
        .run_in_pod(
            "p1",
            "a2",
            "cat /proc/sys/kernel/random/boot_id; \
             for i in $(seq 100); do echo over-localhost | nc 127.0.0.1 7777 && break; \
             sleep 0.2; done; echo sent; exec sleep 1000000",
        )
        .ok();
    podman.wait_for_log("a2", "sent");
    podman.wait_for_log("a1", "served");

    // The pod: one VM, one localhost, one /dev/shm.
    let boot_id = |name: &str| {
        let logs = podman.podman(&["logs", name]).ok();
        logs.stdout.lines().next().unwrap_or("").to_string()
    };
    let (boot1, boot2) = (boot_id("a1"), boot_id("a2"));
    assert_eq!(boot1.len(), 36, "a boot_id: {boot1:?}");
    assert_eq!(boot1, boot2, "both containers run on the pod's kernel");
    let a1_logs = podman.podman(&["logs", "a1"]).ok();
    assert!(
        a1_logs.stdout.contains("over-localhost\nserved"),
        "a1's server got a2's line over 127.0.0.1: {a1_logs}"
    );
    podman
        .podman(&["exec", "a1", "sh", "-c", "echo shared > /dev/shm/from-a1"])
        .ok();
    let shm = podman
        .podman(&["exec", "a2", "cat", "/dev/shm/from-a1"])
        .ok();
    assert_eq!(shm.stdout, "shared\n", "a2 sees a1's /dev/shm: {shm}");

    // The bridge network: IPs on eth0, answers at the IPs and through the
    // published ports, the gateway and each other reached from inside.
    let (web_ip, web_netns) = podman.network_of("web");
    let (pod_ip, pod_netns) = podman.network_of(&infra);
    for (name, ip) in [("web", &web_ip), ("a1", &pod_ip), ("a2", &pod_ip)] {
        let shown = podman
            .podman(&["exec", name, "ip", "-o", "-4", "addr", "show", "eth0"])
            .ok();
        assert!(
            shown.stdout.contains(&format!("eth0    inet {ip}/16")),
            "{name}'s IP on eth0: {shown}"
        );
    }
    let expected = [
        (format!("{web_ip}:80"), "web-says-hello"),
        ("127.0.0.1:18080".to_string(), "web-says-hello"),
        (format!("{pod_ip}:80"), "pod-says-hello"),
        ("127.0.0.1:18081".to_string(), "pod-says-hello"),
    ];
    let addresses = expected.iter().map(|(address, _)| address.clone());
    let answers = answers_in(&netns.path(), addresses.collect());
    for ((address, text), answer) in expected.iter().zip(answers) {
        assert!(
            answer.starts_with("HTTP/1.") && answer.ends_with(&format!("\r\n\r\n{text}\n")),
            "{address} answered: {answer}"
        );
    }
    for (name, peer, text) in [("web", &pod_ip, "pod"), ("a2", &web_ip, "web")] {
        let gateway = podman.gateway_of(name);
        let answer = podman.fetch_in(name, &gateway, 18090);
        assert!(
            answer.ends_with("\r\n\r\nhost-says-hello\n"),
            "{name} reaches a server on the gateway {gateway}: {answer}"
        );
        let answer = podman.fetch_in(name, peer, 80);
        assert!(
            answer.ends_with(&format!("\r\n\r\n{text}-says-hello\n")),
            "{name} reaches {text} at {peer}: {answer}"
        );
    }

    // Removal: each namespace goes, and runvm's tap and filters with it.
    let web_netns = PodNetns::inspect(&web_netns, podman.runtime.is_runvm);
    let pod_netns = PodNetns::inspect(&pod_netns, podman.runtime.is_runvm);
    podman.podman(&["rm", "--force", "--time", "0", "web"]).ok();
    web_netns.assert_gone(&netns.path());
    podman.podman(&["pod", "rm", "--force", "p1"]).ok();
    pod_netns.assert_gone(&netns.path());
    let pods = podman.podman(&["pod", "ps", "--quiet"]).ok();
    assert!(pods.stdout.trim().is_empty(), "pods left: {pods}");
    drop(host);
    podman.assert_clean();
}
