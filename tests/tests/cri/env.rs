//! The test's kubelet side: containerd with its CRI plugin in a network
//! namespace of the test's, the runtime under test (or runvm's shim) as a
//! runtime handler, images imported, and the checks that nothing is left.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};

use super::cri_client::{cri, image_spec, CriClient};
use super::harness::{
    self, assert_empty_dir, assert_no_mounts_below, assert_no_process_references,
    processes_referencing, read_text, run, wait_for, RuntimeUnderTest, Scratch,
};
use super::netns::NetNs;
use super::podman_env::{PodmanEnv, IMAGE};
use super::{common, containerd_config};

/// The sandbox image: busybox whose command sleeps (a pause container).
pub(super) const PAUSE_IMAGE: &str = "localhost/runvm-e2e/pause:latest";
/// containerd's namespace for CRI's containers and images.
pub(super) const K8S_NAMESPACE: &str = "k8s.io";
/// The runtime handler the pods ask for.
pub(super) const HANDLER: &str = "runvm";
/// The handler of runvm's own shim (`containerd-shim-runvm-v2`), whatever
/// the runtime under test: configured by [`CriEnv::start_with_shim`].
pub(super) const SHIM_HANDLER: &str = "runvm-shim";
pub(super) const SHIM: &str = "containerd-shim-runvm-v2";
/// Where runvm's shim keeps the pods of CRI's namespace.
pub(super) const SHIM_STATE: &str = "/run/runvm-shim/k8s.io";
pub(super) const CNI_PLUGINS: &str = "/usr/lib/cni";
/// A container's command: says it is up on stdout and stderr, then sleeps
/// until SIGTERM, on which it exits 0.
pub(super) const SLEEPER: &str =
    "echo started; echo to-stderr >&2; trap 'echo stopping; exit 0' TERM; sleep 1000000 & wait";

/// Everything of the runtime's for this test run, removed afterwards.
pub(super) fn runtime_root_base() -> PathBuf {
    PathBuf::from(format!("/run/containerd-test-{:x}", std::process::id()))
}

/// The shim's `Root` option, laid out like containerd's default
/// (`/run/containerd/runc`); the shim adds the namespace. With 64-hex
/// container ids, the VM's sockets below it
/// (`<root>/k8s.io/<id>/vm/jail/vsock.sock_1023`) are longer than a
/// socket address holds (108 bytes), as they are with the default.
pub(super) fn shim_root() -> PathBuf {
    runtime_root_base().join("runc")
}

/// One pod (one VM for runvm) at a time: the host has two cores.
pub(super) static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub(super) fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// containerd with its CRI plugin and a client. Field order matters: the
/// client goes first, the daemon is stopped (in `drop`) before the
/// namespace and the scratch dir go.
pub(super) struct CriEnv {
    pub(super) client: CriClient,
    pub(super) daemon: Option<Child>,
    /// The PATH containerd runs with, when the shim is first on it.
    path: Option<String>,
    pub(super) runtime: RuntimeUnderTest,
    /// The pods' cgroup parent, removed afterwards.
    pub(super) cgroup_parent: String,
    /// Held for containerd's lifetime; deleted after it. The pods' bridge
    /// is here: the test reaches the pods from this namespace.
    pub(super) netns: NetNs,
    pub(super) scratch: Scratch,
}

impl CriEnv {
    pub(super) fn start(name: &str) -> CriEnv {
        CriEnv::start_with(name, false)
    }

    /// [`Self::start`], with the runvm build and its shim installed first
    /// on containerd's PATH and configured as handler [`SHIM_HANDLER`].
    pub(super) fn start_with_shim(name: &str) -> CriEnv {
        common::require_kvm();
        CriEnv::start_with(name, true)
    }

    pub(super) fn start_with(name: &str, shim: bool) -> CriEnv {
        harness::require_root();
        harness::require_programs(&[
            ("containerd", "containerd"),
            ("ctr", "containerd"),
            ("containerd-shim-runc-v2", "containerd"),
            ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        ]);
        let scratch = Scratch::new(&format!("cri-{name}"));
        harness::clean_up(&runtime_root_base(), &[]);
        let runtime = RuntimeUnderTest::resolve(&scratch);
        let netns = NetNs::new(&format!("rvcri-{name}"));
        write_config(&scratch, &runtime, shim);
        let path = shim.then(|| {
            let bin = install_shim(&scratch.join("shim-prefix"));
            let path = std::env::var("PATH").unwrap_or_default();
            format!("{}:{path}", bin.display())
        });
        let (daemon, client) = spawn_daemon(&scratch, &netns, path.as_deref());
        let env = CriEnv {
            client,
            daemon: Some(daemon),
            path,
            runtime,
            cgroup_parent: format!("/runvm-e2e-cri-{}", std::process::id()),
            netns,
            scratch,
        };
        env.import_images();
        wait_for("the CRI runtime and network are ready", || {
            let status = env.client.status().map_err(|e| e.0)?;
            let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
            let ready = conditions.iter().all(|c| c.status) && conditions.len() >= 2;
            ready.then_some(()).ok_or(format!("{conditions:?}"))
        });
        env
    }

    /// containerd stopped (SIGTERM, waited for) and started again on the
    /// same config, root and state, as a node's containerd upgrade does;
    /// the shims and pods it started run on.
    pub(super) fn restart_containerd(&mut self) {
        self.stop_daemon();
        let (daemon, client) = spawn_daemon(&self.scratch, &self.netns, self.path.as_deref());
        self.daemon = Some(daemon);
        self.client = client;
    }

    pub(super) fn ctr(&self, args: &[&str]) -> harness::Output {
        run(Command::new("ctr")
            .arg("--address")
            .arg(self.scratch.join("containerd.sock"))
            .arg("--namespace")
            .arg(K8S_NAMESPACE)
            .args(args))
    }

    /// podman makes the busybox image and the pause image (the same files
    /// with a sleeping command) and saves them as OCI archives; ctr imports
    /// them into CRI's namespace.
    pub(super) fn import_images(&self) {
        let dir = self.scratch.join("pm");
        let podman = PodmanEnv::new(&dir, None);
        podman.import_busybox();
        let tar = dir.join("busybox.tar").display().to_string();
        podman
            .run(&[
                "import",
                "--quiet",
                "--change",
                r#"CMD ["/bin/sleep", "1000000000"]"#,
                &tar,
                PAUSE_IMAGE,
            ])
            .ok();
        for (image, file) in [(IMAGE, "busybox-oci.tar"), (PAUSE_IMAGE, "pause-oci.tar")] {
            let archive = self.scratch.join(file).display().to_string();
            podman
                .run(&["save", "--format", "oci-archive", "-o", &archive, image])
                .ok();
            self.ctr(&["images", "import", &archive]).ok();
            wait_for(&format!("CRI sees {image}"), || {
                let status = self.client.image_status(image).map_err(|e| e.0)?;
                status.map(drop).ok_or("not yet".to_string())
            });
        }
    }

    /// runvm's `--root`: the shim's `Root` option, per containerd namespace.
    pub(super) fn runtime_root(&self) -> PathBuf {
        shim_root().join(K8S_NAMESPACE)
    }

    pub(super) fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_string(),
                uid: format!("uid-{name}-{}", std::process::id()),
                namespace: "runvm-e2e".to_string(),
                attempt: 0,
            }),
            hostname: name.to_string(),
            log_directory: self.scratch.join("pod-logs").display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent.clone(),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Creates and starts a busybox container `name` in `pod` running
    /// [`SLEEPER`]; its id once it logged `started`.
    pub(super) fn start_container(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        name: &str,
    ) -> String {
        self.start_script(pod, pod_config, name, SLEEPER)
    }

    /// [`Self::start_container`] running `script`, which must log `started`.
    pub(super) fn start_script(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        name: &str,
        script: &str,
    ) -> String {
        let id = self.create_and_start(pod, pod_config, container_config(name, script));
        let log = self.log_path(name);
        wait_for(&format!("{name} logs `started`"), || {
            let text = read_text(&log);
            text.contains(" stdout F started").then_some(()).ok_or(text)
        });
        id
    }

    /// Creates container `config` in `pod` and starts it: its id.
    #[track_caller]
    pub(super) fn create_and_start(
        &self,
        pod: &str,
        pod_config: &cri::PodSandboxConfig,
        config: cri::ContainerConfig,
    ) -> String {
        let id = self
            .client
            .create_container(pod, &config, pod_config)
            .unwrap_or_else(|e| self.fail(&e.0));
        self.client
            .start_container(&id)
            .unwrap_or_else(|e| self.fail(&e.0));
        id
    }

    pub(super) fn log_path(&self, name: &str) -> PathBuf {
        self.scratch.join("pod-logs").join(format!("{name}.log"))
    }

    /// An HTTP/1.0 GET of `/` at `address` from the test's namespace, as
    /// the node reaches its pods: the whole answer.
    pub(super) fn http_get(&self, address: SocketAddr) -> String {
        let netns = std::fs::File::open(self.netns.path()).expect("open the test's namespace");
        let get = move || -> Result<String, String> {
            // SAFETY: setns(2) of this thread (a network namespace is per
            // thread until a fork).
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            Ok(wait_for(&format!("{address} answers"), || {
                harness::http_get(address)
            }))
        };
        std::thread::spawn(get)
            .join()
            .expect("the client thread")
            .unwrap_or_else(|e| self.fail(&e))
    }

    /// ExecSync `command` in `id`: (exit code, stdout, stderr).
    #[track_caller]
    pub(super) fn exec(&self, id: &str, command: &[&str]) -> (i32, String, String) {
        self.client
            .exec_sync(id, command)
            .unwrap_or_else(|e| self.fail(&e.0))
    }

    /// Fails the test with `what` and containerd's log.
    #[track_caller]
    pub(super) fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n--- containerd's log ---\n{}",
            read_text(&self.scratch.join("containerd.log"))
        )
    }

    /// What this test's processes (shims, runtime, VMMs) refer to.
    pub(super) fn needles(&self) -> [String; 3] {
        [
            self.scratch.display(),
            runtime_root_base().display().to_string(),
            SHIM_STATE.to_string(),
        ]
    }

    /// The VMMs that run for this test (a jailed VMM is a child of its
    /// supervisor, which is counted) and the virtiofsd processes.
    pub(super) fn vmm_and_virtiofsd_count(&self) -> (usize, usize) {
        let ours = processes_referencing(&self.needles());
        let vmms: Vec<u32> = ours
            .iter()
            .filter(|(_, line)| line.contains("runvm-vmm") && line.contains("--vsock-socket"))
            .map(|(pid, _)| *pid)
            .collect();
        let top_vmms = vmms
            .iter()
            .filter(|pid| !harness::parent_of(**pid).is_some_and(|parent| vmms.contains(&parent)))
            .count();
        let virtiofsds = ours
            .iter()
            .filter(|(_, line)| line.contains("virtiofsd"))
            .count();
        (top_vmms, virtiofsds)
    }

    /// Stops `id` (SIGTERM, trapped: exit 0) and removes it.
    #[track_caller]
    pub(super) fn stop_and_remove(&self, id: &str) {
        self.client
            .stop_container(id, 60)
            .unwrap_or_else(|e| self.fail(&e.0));
        let status = self
            .client
            .container_status(id)
            .unwrap_or_else(|e| self.fail(&e.0));
        assert_eq!(
            (status.state, status.exit_code),
            (cri::ContainerState::ContainerExited as i32, 0),
            "container {id} after StopContainer: {status:?}"
        );
        self.client
            .remove_container(id)
            .unwrap_or_else(|e| self.fail(&e.0));
    }

    /// Stops and removes `pod`, then checks that CRI, the runtime's root,
    /// the process table and the mount table hold nothing of it, and that
    /// the pods' cgroups can go.
    #[track_caller]
    pub(super) fn remove_pod_and_assert_clean(mut self, pod: &str) {
        self.client
            .stop_pod(pod)
            .unwrap_or_else(|e| self.fail(&e.0));
        let status = self
            .client
            .pod_status(pod)
            .unwrap_or_else(|e| self.fail(&e.0));
        assert_eq!(
            status.state,
            cri::PodSandboxState::SandboxNotready as i32,
            "the pod after StopPodSandbox: {status:?}"
        );
        self.client
            .remove_pod(pod)
            .unwrap_or_else(|e| self.fail(&e.0));
        let pods = self.client.list_pods().unwrap_or_else(|e| self.fail(&e.0));
        assert!(pods.is_empty(), "pods left: {pods:?}");
        let containers = self
            .client
            .list_containers()
            .unwrap_or_else(|e| self.fail(&e.0));
        assert!(containers.is_empty(), "containers left: {containers:?}");
        // The shim exits once the pod's last container is deleted; with it
        // every VMM and virtiofsd of the pod must be gone.
        let needles = self.needles();
        let shims_and_vms_gone = || {
            let left: Vec<String> = processes_referencing(&needles)
                .into_iter()
                .filter(|(pid, _)| Some(*pid) != self.daemon.as_ref().map(Child::id))
                .map(|(_, what)| what)
                .collect();
            left.is_empty().then_some(()).ok_or(left.join("\n"))
        };
        if let Err(left) = harness::try_wait_for(shims_and_vms_gone) {
            self.fail(&format!(
                "the pod's shim, VMM and virtiofsd did not end: {left}\n{}",
                harness::thread_states(&left)
            ));
        }
        assert_empty_dir(&self.runtime_root());
        assert_empty_dir(Path::new(SHIM_STATE));
        // The pod's host cgroup (its sandbox's cgroupsPath) went with it.
        let pod_cgroup = format!("{}/{pod}", self.cgroup_parent.trim_start_matches('/'));
        let left: Vec<PathBuf> = harness::cgroup_roots()
            .into_iter()
            .map(|root| root.join(&pod_cgroup))
            .filter(|dir| dir.exists())
            .collect();
        assert!(left.is_empty(), "the pod's host cgroup is left: {left:?}");
        self.stop_daemon();
        assert_no_process_references(&needles);
        assert_no_mounts_below(self.scratch.path());
        assert_no_mounts_below(&runtime_root_base());
        let stuck = harness::remove_cgroup(&self.cgroup_parent);
        assert!(stuck.is_empty(), "cgroups that cannot go: {stuck:?}");
    }

    pub(super) fn stop_daemon(&mut self) {
        if let Some(daemon) = self.daemon.take() {
            harness::terminate(daemon);
        }
    }
}

impl Drop for CriEnv {
    /// Best effort (also after a failure): every pod stopped and removed
    /// through CRI, containerd stopped, the cgroups removed; the namespace
    /// and the scratch dir (killing what is left) go next.
    fn drop(&mut self) {
        if self.daemon.is_some() {
            for pod in self.client.list_pods().unwrap_or_default() {
                let _ = self.client.stop_pod(&pod.id);
                let _ = self.client.remove_pod(&pod.id);
            }
            self.stop_daemon();
        }
        harness::remove_cgroup(&self.cgroup_parent);
        harness::clean_up(&runtime_root_base(), &[]);
    }
}

/// Starts containerd on the scratch dir's config in `netns` (with `path`
/// as its PATH if given), appending to its log; it and a client once its
/// CRI answers.
fn spawn_daemon(scratch: &Scratch, netns: &NetNs, path: Option<&str>) -> (Child, CriClient) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(scratch.join("containerd.log"))
        .expect("log");
    let mut command = Command::new("containerd");
    command
        .arg("--config")
        .arg(scratch.join("config.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup"))
        .stderr(log);
    if let Some(path) = path {
        command.env("PATH", path);
    }
    netns.enter(&mut command);
    let mut daemon = command.spawn().expect("cannot start containerd");
    let socket = scratch.join("containerd.sock");
    let client = wait_for("containerd's CRI answers", || {
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!(
                "containerd exited ({status}):\n{}",
                read_text(&scratch.join("containerd.log"))
            );
        }
        let client = CriClient::connect(&socket).map_err(|e| e.0)?;
        client.version().map_err(|e| e.0)?;
        Ok(client)
    });
    (daemon, client)
}

/// A busybox container `name` running `script`, logging to `<name>.log`.
pub(super) fn container_config(name: &str, script: &str) -> cri::ContainerConfig {
    cri::ContainerConfig {
        metadata: Some(cri::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(image_spec(IMAGE)),
        command: vec!["sh".into(), "-c".into(), script.into()],
        // The imported image sets no PATH; ExecSync inherits this one.
        envs: vec![cri::KeyValue {
            key: "PATH".into(),
            value: "/bin".into(),
        }],
        log_path: format!("{name}.log"),
        linux: Some(cri::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// The runvm build as `make install` lays it out in `prefix`, with the
/// shim; the `bin` directory.
pub(super) fn install_shim(prefix: &Path) -> PathBuf {
    harness::install_runvm(prefix);
    let built = harness::workspace_root().join("target/release").join(SHIM);
    let bin = prefix.join("bin");
    std::fs::copy(&built, bin.join(SHIM))
        .unwrap_or_else(|e| panic!("cannot install {} (run `make build`): {e}", built.display()));
    bin
}

/// containerd's config: only what the CRI plugin needs, everything under
/// the scratch dir, the runtime under test as handler [`HANDLER`]. The
/// sandbox's oom_score_adj (-998) is kept no lower than containerd's: a
/// root without CAP_SYS_RESOURCE (as in CI's sandbox) cannot lower it.
pub(super) fn write_config(scratch: &Scratch, runtime: &RuntimeUnderTest, shim: bool) {
    let s = scratch.display();
    let root = shim_root();
    let root = root.display();
    let binary = runtime.path.display();
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    let shim_runtime = if shim {
        format!(
            r#"
    [{cri}.containerd.runtimes.{SHIM_HANDLER}]
      runtime_type = "io.containerd.runvm.v2""#
        )
    } else {
        String::new()
    };
    std::fs::create_dir_all(scratch.join("cni")).expect("cni conf dir");
    std::fs::write(
        scratch.join("cni/10-runvm-bridge.conflist"),
        format!(
            r#"{{
  "cniVersion": "1.0.0",
  "name": "runvm-e2e",
  "plugins": [{{
    "type": "bridge",
    "bridge": "rvcri0",
    "isGateway": true,
    "ipam": {{
      "type": "host-local",
      "ranges": [[{{"subnet": "10.88.77.0/24"}}]],
      "dataDir": "{s}/cni-ipam"
    }}
  }}]
}}
"#
        ),
    )
    .expect("cni conf");
    std::fs::write(
        scratch.join("config.toml"),
        containerd_config::base(&s, true)
            + &format!(
                r#"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "{HANDLER}"
    [{cri}.containerd.runtimes.{HANDLER}]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.{HANDLER}.options]
        BinaryName = "{binary}"
        Root = "{root}"{shim_runtime}
  [{cri}.cni]
    bin_dir = "{CNI_PLUGINS}"
    conf_dir = "{s}/cni"
    max_conf_num = 1
"#
            ),
    )
    .expect("config.toml");
}
