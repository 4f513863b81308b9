//! OCI bundles from the host in a microVM: busybox root filesystems built
//! in temporary directories, bound into the VM's share and served by its
//! virtiofsd, run as containers by the agent. One VM runs every scenario
//! (hostname and env, read-only rootfs, writes that reach the host, uid
//! and gid, masked paths, exec in the pid namespace, host changes to a
//! file seen at its next open, escapes through symlinks and `..`, no
//! vsock path from a container to the agent, the guest's defaults
//! (nosuid,nodev roots, device rules, sysctls), a pids limit, an OOM kill
//! with its event), then shuts down with a rootfs still bound: nothing
//! may be left (mounts, virtiofsd, directories). A second VM loses its
//! virtiofsd and must say so.

mod common;

use common::Captured;

use std::os::unix::fs::{chown, symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use runvm::agent_client::AgentClient;
use runvm::container_client::ContainerClient;
use runvm::guest_process::{self, HostStdio, ProcessSpec};
use runvm::share;
use runvm::vm::{MicroVm, VmError, VmSpec};
use runvm_agent_api::oci::{Process, Spec};
use runvm_agent_api::{ContainerEvent, ExitStatus};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(480);
const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "id", "hostname", "ls", "sleep", "touch", "env", "pwd", "grep", "mkdir",
    "readlink", "stat", "true", "false", "wc", "head", "tr", "ln", "rm", "test", "dd", "kill",
    "mknod",
];

fn virtiofsd() -> PathBuf {
    share::find_virtiofsd().expect(
        "virtiofsd not found (RUNVM_VIRTIOFSD, PATH, ~/.cargo/bin, /usr/libexec): \
         `make setup` installs it",
    )
}

fn require_root_and_busybox() {
    // SAFETY: geteuid(2) cannot fail.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "these tests bind bundle root filesystems and start virtiofsd: run them as root"
    );
    assert!(
        Path::new(BUSYBOX).exists(),
        "{BUSYBOX} (Debian's busybox-static) is needed for the bundles"
    );
}

/// A bundle: `config.json` and a busybox `rootfs/` under `dir`.
struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    fn new(base: &Path, name: &str, config: serde_json::Value) -> Bundle {
        let dir = base.join(name);
        let rootfs = dir.join("rootfs");
        for sub in [
            "bin",
            "etc",
            "proc",
            "sys",
            "dev",
            "tmp",
            "root",
            "home/user",
            "secret-dir",
        ] {
            std::fs::create_dir_all(rootfs.join(sub)).expect("rootfs dirs");
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
        for applet in APPLETS {
            symlink("busybox", rootfs.join("bin").join(applet)).expect("applet link");
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )
        .expect("passwd");
        std::fs::write(rootfs.join("etc/group"), "root:x:0:\nuser:x:1000:\n").expect("group");
        std::fs::write(rootfs.join("etc/secret"), "top secret\n").expect("secret");
        std::fs::write(rootfs.join("secret-dir/key"), "hidden\n").expect("secret dir");
        std::fs::write(rootfs.join("etc/hostname"), "from-the-bundle\n").expect("hostname");
        chown(rootfs.join("home/user"), Some(1000), Some(1000)).expect("chown home");
        // Escape attempts: links that would leave the rootfs if followed
        // on the host (or from the guest's root).
        symlink("/", rootfs.join("hostroot")).expect("hostroot link");
        symlink("/etc", rootfs.join("hostetc")).expect("hostetc link");
        symlink("../../../../../..", rootfs.join("up")).expect("up link");
        std::fs::write(
            dir.join("config.json"),
            serde_json::to_vec_pretty(&config).expect("json"),
        )
        .expect("config.json");
        Bundle { dir }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// The bundle's config.json, as a runtime reads it.
    fn spec(&self) -> Spec {
        let text = std::fs::read(self.dir.join("config.json")).expect("config.json");
        serde_json::from_slice(&text).expect("a valid runtime spec")
    }
}

/// What `runc spec` writes, with the process, hostname, root and extra
/// mounts of the scenario (no network namespace: the guest has no
/// network to hide, and a new one costs emulated kernel time).
fn runc_spec(
    script: &str,
    hostname: &str,
    readonly: bool,
    uid: u32,
    extra_mounts: &[serde_json::Value],
) -> serde_json::Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
               "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
               "options": ["nosuid", "noexec", "nodev", "ro"]}),
    ];
    mounts.extend(extra_mounts.iter().cloned());
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": uid, "additionalGids": [27]},
            "args": ["sh", "-c", script],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "TERM=xterm", "FOO=bar from the bundle"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": readonly},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                           {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                            "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                            "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
                            "/etc/secret", "/secret-dir"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                              "/proc/sysrq-trigger"]
        }
    })
}

/// A command in the guest itself (outside any container): its stdout.
async fn guest_sh(agent: &AgentClient, script: &str) -> String {
    let out = Captured::default();
    let spec = ProcessSpec {
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: vec!["PATH=/bin".into()],
        ..ProcessSpec::default()
    };
    let stdio = HostStdio {
        stdout: out.writer(),
        stderr: out.writer(),
        ..HostStdio::default()
    };
    let relay = guest_process::spawn(agent, &spec, stdio)
        .await
        .expect("guest exec");
    let status = relay.finish(agent).await.expect("guest wait");
    assert_eq!(status, ExitStatus::Code(0), "{script}: {}", out.text());
    out.text()
}

/// Binds the bundle into the share, runs its container to the end and
/// deletes it; returns (status, stdout and stderr). The rootfs stays
/// bound (the caller unshares it).
async fn run_bundle(
    vm: &mut MicroVm,
    agent: &AgentClient,
    id: &str,
    bundle: &Bundle,
) -> (ExitStatus, String) {
    let spec = bundle.spec();
    let readonly = spec
        .root
        .as_ref()
        .and_then(|root| root.readonly)
        .unwrap_or(false);
    let rootfs = vm
        .share_rootfs(agent, id, &bundle.rootfs(), readonly)
        .await
        .expect("share the rootfs");
    assert_eq!(rootfs, format!("/run/runvm/share/{id}/rootfs"));
    let containers = ContainerClient::new(agent);
    let out = Captured::default();
    // The program as `runvm create` finds it on the host, when it can.
    let program = runvm::program_path::resolve(&spec, &bundle.rootfs());
    let init = containers
        .create(
            id,
            spec,
            &rootfs,
            program,
            HostStdio {
                stdout: out.writer(),
                stderr: out.writer(),
                ..HostStdio::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e}"));
    containers.start(id).await.expect("start");
    let status = containers.wait(id).await.expect("wait");
    init.drain().await;
    containers.delete(id, false).await.expect("delete");
    (status, out.text())
}

/// Options of the mount whose mount point ends with `suffix`, in a
/// mountinfo text.
fn options_in(mountinfo: &str, suffix: &str) -> Option<String> {
    mountinfo
        .lines()
        .find(|line| line.split(' ').nth(4).is_some_and(|p| p.ends_with(suffix)))
        .and_then(|line| line.split(' ').nth(5))
        .map(str::to_owned)
}

/// ... in the mount namespace of process `pid`.
fn mount_options(pid: u32, suffix: &str) -> Option<String> {
    options_in(
        &std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?,
        suffix,
    )
}

/// ... in the share's mount namespace.
fn share_options(vm: &MicroVm, suffix: &str) -> Option<String> {
    options_in(
        &vm.share_mountinfo().expect("the share's mountinfo"),
        suffix,
    )
}

/// The share's mounts never show in the runtime's mount namespace.
fn assert_host_mounts_clean(vm: &MicroVm) {
    let base = vm.share_dir();
    assert!(
        share::mounts_below(base.parent().expect("the VM dir")).is_empty(),
        "the share's mounts leaked into the host's namespace: {:?}",
        share::mounts_below(&base)
    );
}

fn unshare(vm: &mut MicroVm, id: &str) {
    vm.unshare_rootfs(id).expect("unshare the rootfs");
    assert!(!vm.share_dir().join(id).exists(), "share/{id} is left");
    let mountinfo = vm.share_mountinfo().expect("mountinfo");
    let left = share::mounts_below_in(&mountinfo, &vm.share_dir());
    assert_eq!(
        left,
        vec![vm.share_dir()],
        "only the share itself stays mounted"
    );
    assert_host_mounts_clean(vm);
}

async fn scenario_readonly_identity_masks(vm: &mut MicroVm, agent: &AgentClient, base: &Path) {
    let script = "echo host=$(hostname) foo=\"$FOO\" uid=$(id -u) gid=$(id -g) groups=$(id -G); \
                  touch /new 2>/dev/null && echo root-writable || echo root-readonly; \
                  touch /home/user/new 2>/dev/null && echo home-writable || echo home-readonly; \
                  echo secret=$(cat /etc/secret 2>&1 | wc -c) dir=$(ls /secret-dir | wc -l); \
                  echo etc-hostname=$(cat /etc/hostname) home=$HOME; \
                  echo timer_list=$(wc -c < /proc/timer_list) acpi=$(test -e /proc/acpi && echo there || echo absent) \
                  proc-sys=$(awk '$5 == \"/proc/sys\" {split($6, o, \",\"); print o[1]}' /proc/self/mountinfo)";
    let bundle = Bundle::new(base, "ro", runc_spec(script, "bundle-ro", true, 1000, &[]));
    let pids = vm.virtiofsd_pids();
    assert_eq!(pids.len(), 2, "virtiofsd and its sandboxed child: {pids:?}");
    let (status, out) = run_bundle(vm, agent, "ro1", &bundle).await;
    assert_eq!(status, ExitStatus::Code(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "host=bundle-ro foo=bar from the bundle uid=1000 gid=1000 groups=1000 27",
            "root-readonly",
            "home-readonly",
            "secret=0 dir=0",
            // The agent's own lookup (this test sends the spec as is).
            "etc-hostname=from-the-bundle home=/home/user",
            // Masked (/dev/null over it), absent in this kernel (so never
            // looked for, but not there either), read-only.
            "timer_list=0 acpi=absent proc-sys=ro",
        ],
        "{out}"
    );
    // The host's bind is read-only too, and so is virtiofsd's copy of it
    // (mount flags do not propagate: they must be set before attaching).
    let host = share_options(vm, "/share/ro1/rootfs").expect("bound on the host");
    assert!(host.starts_with("ro,nosuid,nodev"), "host: {host}");
    assert_host_mounts_clean(vm);
    let server = *pids.last().expect("a pid");
    let served = mount_options(server, "/ro1/rootfs").expect("bound in virtiofsd's namespace");
    assert!(served.starts_with("ro,nosuid,nodev"), "virtiofsd: {served}");
    assert!(!bundle.rootfs().join("new").exists());
    unshare(vm, "ro1");
    // virtiofsd's copy went with it.
    assert_eq!(mount_options(server, "/ro1/rootfs"), None);
}

async fn scenario_writable_reaches_the_host(vm: &mut MicroVm, agent: &AgentClient, base: &Path) {
    let script = "echo hello from the guest > /home/user/greeting && \
                  mkdir /home/user/made && \
                  stat -c '%u:%g' /home/user/greeting && \
                  touch /rootfile 2>/dev/null && echo root-writable-for-1000 || echo root-refused-for-1000";
    let bundle = Bundle::new(base, "rw", runc_spec(script, "bundle-rw", false, 1000, &[]));
    let (status, out) = run_bundle(vm, agent, "rw1", &bundle).await;
    assert_eq!(status, ExitStatus::Code(0), "{out}");
    assert_eq!(out, "1000:1000\nroot-refused-for-1000\n");
    let greeting = bundle.rootfs().join("home/user/greeting");
    assert_eq!(
        std::fs::read_to_string(&greeting).expect("the file reached the host"),
        "hello from the guest\n"
    );
    let meta = std::fs::metadata(&greeting).expect("stat");
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "owner on the host");
    let made = std::fs::metadata(bundle.rootfs().join("home/user/made")).expect("dir made");
    assert_eq!((made.uid(), made.gid()), (1000, 1000));
    assert!(!bundle.rootfs().join("rootfile").exists());
    let host = share_options(vm, "/share/rw1/rootfs").expect("bound");
    assert!(host.starts_with("rw,nosuid,nodev"), "host: {host}");
    unshare(vm, "rw1");
}

/// `tests/probes/vsock-probe.c`, built static for the guest.
fn vsock_probe(base: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("probes/vsock-probe.c");
    let binary = base.join("vsock-probe");
    let built = std::process::Command::new("gcc")
        .args(["-static", "-O2", "-o"])
        .arg(&binary)
        .arg(&source)
        .status()
        .expect("run gcc (build-essential) to build the vsock probe");
    assert!(built.success(), "gcc could not build {}", source.display());
    binary
}

async fn scenario_no_path_to_the_agent(vm: &mut MicroVm, agent: &AgentClient, base: &Path) {
    // Root in the container with a plain `runc spec` set of capabilities:
    // no CID (the guest's loopback, the host, the guest's own, any) may
    // lead to the agent's control or stream port, nor to the host's
    // readiness port once the VM is up. By default the container cannot
    // even make a vsock socket; with the annotation it can, and the agent
    // still refuses it.
    let probe = vsock_probe(base);
    for (id, annotation) in [("vsock1", None), ("vsock2", Some("allow"))] {
        let mut config = runc_spec("/bin/vsock-probe", "bundle-vsock", true, 0, &[]);
        if let Some(value) = annotation {
            config["annotations"] = json!({ "io.runvm.vsock": value });
        }
        let bundle = Bundle::new(base, id, config);
        std::fs::copy(&probe, bundle.rootfs().join("bin/vsock-probe")).expect("probe");
        let (status, out) = run_bundle(vm, agent, id, &bundle).await;
        assert_eq!(status, ExitStatus::Code(0), "{out}");
        // The guest kernel's prctl takes vsock away: no filter of the
        // agent's shows in a spec without seccomp.
        assert_eq!(
            out.lines().last(),
            Some("seccomp 0"),
            "the container has a seccomp filter it did not ask for:\n{out}"
        );
        // The bounding set is the spec's (the guest kernel narrows it in
        // one prctl: runvm's patch 0016): CAP_KILL (5), CAP_NET_BIND_SERVICE
        // (10) and CAP_AUDIT_WRITE (29).
        assert!(
            out.lines().any(|l| l == "capbnd 0000000020000420"),
            "the container's bounding set is not the spec's:\n{out}"
        );
        // ... in one prctl, which a process without CAP_SETPCAP is
        // refused (a kernel without the patch would not know it: EINVAL).
        assert!(
            out.lines()
                .any(|l| l == "keep-only Operation not permitted"),
            "the guest kernel has no PR_CAPBSET_KEEP_ONLY:\n{out}"
        );
        let out: String = out
            .lines()
            .filter(|l| {
                !l.starts_with("seccomp ")
                    && !l.starts_with("capbnd ")
                    && !l.starts_with("keep-only ")
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(out.lines().count(), 18, "one line per CID and port:\n{out}");
        assert!(
            !out.contains("connected"),
            "a container process reached a vsock port it must not:\n{out}"
        );
        let no_socket = "no-socket: Address family not supported by protocol";
        if annotation.is_none() {
            assert!(
                out.lines().all(|line| line.ends_with(no_socket)),
                "socket(AF_VSOCK) worked in a container that did not ask:\n{out}"
            );
        } else {
            assert!(
                out.lines().all(|line| line.contains(" refused: ")),
                "the annotation did not give the container vsock sockets:\n{out}"
            );
        }
        unshare(vm, id);
    }
}

/// The guest's own defaults for a container: its root from the share is
/// nosuid,nodev (a device node made on the host opens nothing), device
/// rules hold (runc's list plus the spec's rule: other devices are EPERM
/// even after mknod), its IPC sysctl is its own, and a sysctl of the
/// whole guest is refused by name.
async fn scenario_guest_defaults(vm: &mut MicroVm, agent: &AgentClient, base: &Path) {
    let script = "while read -r _ _ _ _ point opts _; do \
                      [ \"$point\" = / ] && echo root=$opts; done < /proc/self/mountinfo; \
                  cat /hostnull 2>/dev/null && echo hostnull-opened || echo hostnull-refused; \
                  mknod /dev/copy c 1 3 && echo x > /dev/copy && echo copy-of-null-ok; \
                  mknod /dev/listed c 42 42 && mknod /dev/unlisted c 42 43 && echo made; \
                  cat /dev/listed 2>&1; cat /dev/unlisted 2>&1; (echo x > /dev/listed) 2>&1; \
                  echo shmmax=$(cat /proc/sys/kernel/shmmax)";
    let mut config = runc_spec(script, "bundle-defaults", true, 0, &[]);
    let caps = json!([
        "CAP_AUDIT_WRITE",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_MKNOD"
    ]);
    for set in ["bounding", "effective", "permitted"] {
        config["process"]["capabilities"][set] = caps.clone();
    }
    config["linux"]["resources"]["devices"] = json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": 42, "minor": 42, "access": "r"}
    ]);
    config["linux"]["sysctl"] = json!({"kernel.shmmax": "12345678"});
    let bundle = Bundle::new(base, "defaults", config);
    let node = std::ffi::CString::new(
        bundle
            .rootfs()
            .join("hostnull")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .expect("a path");
    // SAFETY: mknod(2) with a C string.
    let made = unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    assert_eq!(
        made,
        0,
        "mknod on the host: {}",
        std::io::Error::last_os_error()
    );
    let (status, out) = run_bundle(vm, agent, "def1", &bundle).await;
    assert_eq!(status, ExitStatus::Code(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    let root = lines[0].strip_prefix("root=").expect("the root's options");
    assert!(
        root.split(',').any(|o| o == "nosuid") && root.split(',').any(|o| o == "nodev"),
        "the rootfs from the share is not nosuid,nodev: {root}"
    );
    assert_eq!(
        &lines[1..4],
        ["hostnull-refused", "copy-of-null-ok", "made"],
        "{out}"
    );
    // Allowed for reading by the spec's rule: the open reaches the kernel,
    // which has no such device. Not listed, or not for writing: EPERM.
    assert!(lines[4].ends_with("No such device or address"), "{out}");
    assert!(lines[5].ends_with("Operation not permitted"), "{out}");
    assert!(lines[6].ends_with("Operation not permitted"), "{out}");
    assert_eq!(lines[7], "shmmax=12345678", "{out}");
    assert_ne!(
        guest_sh(agent, "cat /proc/sys/kernel/shmmax").await,
        "12345678\n",
        "the container's IPC sysctl reached the guest's namespace"
    );
    unshare(vm, "def1");

    // A sysctl of the whole guest kernel.
    let mut config = runc_spec("true", "bundle-sysctl", true, 0, &[]);
    config["linux"]["sysctl"] = json!({"vm.overcommit_memory": "1"});
    let bundle = Bundle::new(base, "sysctl", config);
    let rootfs = vm
        .share_rootfs(agent, "sys1", &bundle.rootfs(), true)
        .await
        .expect("share the rootfs");
    let refused = ContainerClient::new(agent)
        .create("sys1", bundle.spec(), &rootfs, None, HostStdio::default())
        .await
        .err()
        .expect("a spec that sets vm.overcommit_memory is refused");
    let message = refused.to_string();
    assert!(
        message.contains("vm.overcommit_memory") && message.contains("not namespaced"),
        "{message}"
    );
    assert_eq!(
        guest_sh(agent, "cat /proc/sys/vm/overcommit_memory").await,
        "0\n"
    );
    unshare(vm, "sys1");
}

async fn scenario_escapes_stay_inside(vm: &mut MicroVm, agent: &AgentClient, base: &Path) {
    // Root in the container, writable rootfs: writes through absolute and
    // relative links and `..`, and mounts whose destinations go through
    // links or climb with `..`. All of them must land in the rootfs.
    let marker = format!("runvm-escape-{}", std::process::id());
    let script = format!(
        "echo via-hostetc > /hostetc/{marker} && \
         echo via-up > /up/{marker}-up && \
         echo via-dotdot > /../../../../{marker}-dotdot && \
         ls /hostroot/ | grep -c {marker} && \
         cat /up/up/etc/hostname && \
         echo tmp1 > /escape1/file && echo tmp2 > /escape2/file && echo tmp3 > /escape3/file && \
         grep -c ' /escape[123] ' /proc/mounts"
    );
    let mounts = [
        json!({"destination": "/hostroot/escape1", "type": "tmpfs", "source": "tmpfs"}),
        json!({"destination": "/../../../../escape2", "type": "tmpfs", "source": "tmpfs"}),
        json!({"destination": "/up/escape3", "type": "tmpfs", "source": "tmpfs"}),
    ];
    let bundle = Bundle::new(
        base,
        "esc",
        runc_spec(&script, "bundle-esc", false, 0, &mounts),
    );
    let (status, out) = run_bundle(vm, agent, "esc1", &bundle).await;
    assert_eq!(status, ExitStatus::Code(0), "{out}");
    assert_eq!(out, "2\nfrom-the-bundle\n3\n");
    let rootfs = bundle.rootfs();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("etc").join(&marker)).expect("written in the rootfs"),
        "via-hostetc\n"
    );
    assert!(rootfs.join(format!("{marker}-up")).exists());
    assert!(rootfs.join(format!("{marker}-dotdot")).exists());
    for host in [
        PathBuf::from("/etc").join(&marker),
        PathBuf::from("/").join(format!("{marker}-up")),
        PathBuf::from("/").join(format!("{marker}-dotdot")),
    ] {
        assert!(!host.exists(), "{} was written on the host", host.display());
    }
    // The mount points were made in the rootfs (and the tmpfs files died
    // with the container's mount namespace).
    for point in ["escape1", "escape2", "escape3"] {
        assert!(rootfs.join(point).is_dir(), "{point} not in the rootfs");
        assert!(!rootfs.join(point).join("file").exists());
    }
    // Nor did anything reach the guest's own root, or the top of the
    // share (read-only for the guest).
    assert_eq!(
        guest_sh(agent, "ls / /run/runvm/share | grep -c escape || true").await,
        "0\n"
    );
    assert!(
        guest_sh(agent, "touch /run/runvm/share/planted 2>&1 || echo refused")
            .await
            .ends_with("refused\n")
    );
    unshare(vm, "esc1");
}

/// Runs `script` with `sh -c` in the running container `id` as root:
/// its status and output.
async fn exec_sh(
    containers: &ContainerClient<'_>,
    agent: &AgentClient,
    id: &str,
    script: &str,
) -> (ExitStatus, String) {
    let out = Captured::default();
    let process: Process = serde_json::from_value(json!({
        "user": {"uid": 0, "gid": 0},
        "args": ["sh", "-c", script],
        "env": ["PATH=/bin"],
        "cwd": "/"
    }))
    .expect("process");
    let exec = containers
        .exec(
            id,
            process,
            HostStdio {
                stdout: out.writer(),
                stderr: out.writer(),
                ..HostStdio::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("exec in {id}: {e}"));
    let status = guest_process::wait(agent, exec.started.process)
        .await
        .expect("wait exec");
    exec.drain().await;
    (status, out.text())
}

async fn scenario_exec_in_pid_namespace(vm: &mut MicroVm, agent: &AgentClient, base: &Path) {
    let bundle = Bundle::new(
        base,
        "ex",
        runc_spec("exec sleep 600", "bundle-ex", true, 0, &[]),
    );
    let note = bundle.rootfs().join("etc/note");
    std::fs::write(&note, "one\n").expect("note");
    let spec = bundle.spec();
    let rootfs = vm
        .share_rootfs(agent, "ex1", &bundle.rootfs(), true)
        .await
        .expect("share");
    let containers = ContainerClient::new(agent);
    containers
        .create("ex1", spec, &rootfs, None, HostStdio::default())
        .await
        .expect("create ex1");
    containers.start("ex1").await.expect("start ex1");
    let (status, text) = exec_sh(
        &containers,
        agent,
        "ex1",
        "echo self=$$ host=$(hostname); \
         for p in /proc/[0-9]*; do echo ${p#/proc/}: $(tr '\\0' ' ' < $p/cmdline); done",
    )
    .await;
    assert_eq!(status, ExitStatus::Code(0), "{text}");
    let mut lines = text.lines();
    let first = lines.next().expect("a first line");
    assert!(
        first.starts_with("self=") && first.ends_with(" host=bundle-ex"),
        "{text}"
    );
    assert_ne!(first, "self=1 host=bundle-ex", "{text}");
    let procs: Vec<&str> = lines.collect();
    assert!(procs.contains(&"1: sleep 600"), "{text}");
    assert!(
        procs
            .iter()
            .all(|p| !p.contains("init") && !p.contains("runvm")),
        "the guest's processes are visible: {text}"
    );
    // The guest keeps an unchanged file's pages across opens (execs of
    // busybox), but a file the host changes is read afresh at its next
    // open: same size (only the mtime differs), then a new size.
    let read_note = "cat /etc/note; cat /etc/note";
    let (status, text) = exec_sh(&containers, agent, "ex1", read_note).await;
    assert_eq!((status, text.as_str()), (ExitStatus::Code(0), "one\none\n"));
    std::fs::write(&note, "two\n").expect("note, same size");
    let (status, text) = exec_sh(&containers, agent, "ex1", read_note).await;
    assert_eq!((status, text.as_str()), (ExitStatus::Code(0), "two\ntwo\n"));
    std::fs::write(&note, "three, longer\n").expect("note, longer");
    let (status, text) = exec_sh(&containers, agent, "ex1", read_note).await;
    assert_eq!(
        (status, text.as_str()),
        (ExitStatus::Code(0), "three, longer\nthree, longer\n")
    );
    containers.signal("ex1", 9, true).await.expect("kill");
    assert_eq!(
        containers.wait("ex1").await.expect("wait"),
        ExitStatus::Signal(9)
    );
    containers.delete("ex1", false).await.expect("delete ex1");
    // Left bound on purpose: shutdown must undo it.
}

async fn scenario_cgroup_limits(vm: &mut MicroVm, agent: &AgentClient, base: &Path) {
    // pids.max 4: sh, the subshell and two sleeps; the third sleep cannot
    // be forked.
    let script = "( for i in 1 2 3 4 5; do sleep 60 & done ) 2>&1; echo subshell=$?";
    let mut config = runc_spec(script, "bundle-pids", true, 0, &[]);
    config["linux"]["resources"]["pids"] = json!({"limit": 4});
    let bundle = Bundle::new(base, "pids", config);
    let (status, out) = run_bundle(vm, agent, "pids1", &bundle).await;
    assert_eq!(status, ExitStatus::Code(0), "{out}");
    assert!(
        out.contains("can't fork"),
        "the pids limit did not hold: {out}"
    );
    assert!(out.ends_with("subshell=2\n"), "{out}");
    unshare(vm, "pids1");

    // 48 MiB read into memory under a 16 MiB limit.
    let script = "exec dd if=/dev/zero of=/dev/null bs=48M count=1";
    let mut config = runc_spec(script, "bundle-oom", true, 0, &[]);
    config["linux"]["resources"]["memory"] = json!({"limit": 16777216});
    let bundle = Bundle::new(base, "oom", config);
    let (status, out) = run_bundle(vm, agent, "oom1", &bundle).await;
    assert_eq!(status.shell_code(), 137, "dd should be OOM-killed: {out}");
    let containers = ContainerClient::new(agent);
    let mut after = 0;
    loop {
        let (seq, event) =
            tokio::time::timeout(Duration::from_secs(30), containers.next_event(after))
                .await
                .expect("an OOM event in time")
                .expect("event");
        after = seq;
        if let ContainerEvent::Oom { id, oom_kills } = event {
            assert_eq!(id, "oom1");
            assert!(oom_kills >= 1);
            break;
        }
    }
    unshare(vm, "oom1");
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn vm_spec() -> VmSpec {
    VmSpec {
        vmm: common::vmm_binary(),
        kernel: common::kernel(),
        image: common::tools_image(),
        memory_mib: 128,
        vcpus: 1,
        virtiofsd: Some(virtiofsd()),
    }
}

fn alive(pid: u32) -> bool {
    // Zombies count as gone: they hold no mount or socket.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn assert_nothing_left(base: &Path, vm_dir: &Path, pids: &[u32]) {
    assert!(!vm_dir.exists(), "{} was left behind", vm_dir.display());
    assert!(
        share::mounts_below(base).is_empty(),
        "mounts left: {:?}",
        share::mounts_below(base)
    );
    // The sandboxed child is reparented when virtiofsd goes; give it a
    // moment to be reaped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|pid| alive(*pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for pid in pids {
        assert!(!alive(*pid), "virtiofsd pid {pid} is still running");
    }
}

#[test]
fn bundles_over_virtio_fs() {
    common::require_kvm();
    require_root_and_busybox();
    let base = std::env::temp_dir().join(format!("runvm-e2e-bundle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("base dir");
    let vm_dir = base.join("vm");
    runtime().block_on(async {
        let mut vm = MicroVm::boot(&vm_spec(), &vm_dir).expect("boot the VM");
        let agent = vm
            .connect_agent(common::BOOT_TIMEOUT)
            .await
            .expect("the agent answers");
        let pids = vm.virtiofsd_pids();
        let result = tokio::time::timeout(PATIENCE, async {
            scenario_readonly_identity_masks(&mut vm, &agent, &base).await;
            scenario_writable_reaches_the_host(&mut vm, &agent, &base).await;
            scenario_escapes_stay_inside(&mut vm, &agent, &base).await;
            scenario_no_path_to_the_agent(&mut vm, &agent, &base).await;
            scenario_guest_defaults(&mut vm, &agent, &base).await;
            scenario_cgroup_limits(&mut vm, &agent, &base).await;
            // Last: it leaves its rootfs bound for shutdown to undo.
            scenario_exec_in_pid_namespace(&mut vm, &agent, &base).await;
        })
        .await;
        let console = vm.console_tail();
        assert!(
            result.is_ok(),
            "the scenarios did not finish; console:\n{console}"
        );
        let status = vm.shutdown(&agent).await.expect("shutdown");
        assert!(status.success(), "VMM exit {status}; console:\n{console}");
        assert_nothing_left(&base, &vm_dir, &pids);
    });
    std::fs::remove_dir_all(&base).expect("remove the bundles");
}

#[test]
fn a_lost_virtiofsd_ends_the_vm_with_its_error() {
    common::require_kvm();
    require_root_and_busybox();
    let base = std::env::temp_dir().join(format!("runvm-e2e-lostfs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("base dir");
    let vm_dir = base.join("vm");
    runtime().block_on(async {
        let mut vm = MicroVm::boot(&vm_spec(), &vm_dir).expect("boot the VM");
        let agent = vm
            .connect_agent(common::BOOT_TIMEOUT)
            .await
            .expect("the agent answers");
        let bundle = Bundle::new(&base, "b", runc_spec("true", "b", true, 0, &[]));
        vm.share_rootfs(&agent, "b1", &bundle.rootfs(), true)
            .await
            .expect("share");
        assert_eq!(
            guest_sh(&agent, "cat /run/runvm/share/b1/rootfs/etc/hostname").await,
            "from-the-bundle\n"
        );
        let pids = vm.virtiofsd_pids();
        let server = *pids.last().expect("virtiofsd runs");
        // A crash of the process that serves the guest.
        // SAFETY: kill(2) on a process of this test.
        unsafe { libc::kill(server as libc::pid_t, libc::SIGKILL) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let error = loop {
            match vm.poll_exit() {
                Err(e) => break e,
                Ok(Some(status)) => panic!("the VM ended with {status}, not as a share failure"),
                Ok(None) if Instant::now() > deadline => panic!("the VM runs on without virtiofsd"),
                Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        let message = error.to_string();
        assert!(matches!(error, VmError::ShareLost { .. }), "{message}");
        assert!(message.contains("went away"), "{message}");
        assert!(message.contains("virtiofsd exited"), "{message}");
        // Stopping it says the same; dropping it cleans up.
        let again = vm.stop().await.expect_err("the share's failure again");
        assert!(matches!(again, VmError::ShareLost { .. }), "{again}");
        eprintln!("reported as: {again}");
        assert_nothing_left(&base, &vm_dir, &pids);
    });
    std::fs::remove_dir_all(&base).expect("remove the bundle");
}
