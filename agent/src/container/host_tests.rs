//! Containers for real, on the host: the agent's server (as in
//! `server_tests`) creates containers from a busybox root filesystem in a
//! temporary directory. They need root and namespaces and fail, saying so,
//! without them. The host's cgroups are v1 here, so these run without
//! cgroups; cgroup limits, stats and OOM events are tested in the VM
//! (tests/tests/containers.rs).

use std::path::{Path, PathBuf};

use runvm_agent_api::oci::{LinuxNamespaceType, Process, Spec};
use runvm_agent_api::{
    AgentError, ContainerStatus, CreateContainerRequest, ErrorKind, ExecInContainerRequest,
    ExitStatus, PodPlacement, RequestBody, ResponseBody, SharedNamespace,
};
use serde_json::json;

use crate::server::tests::{kind, limits, read_all, run, Client, Guest};

const BUSYBOX: &str = "/bin/busybox";

fn require_root() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "the container tests create namespaces and mounts: run them as root"
    );
    assert!(
        Path::new(BUSYBOX).exists(),
        "the container tests need {BUSYBOX} (Debian's busybox-static)"
    );
}

/// A root filesystem of busybox and its applets, removed on drop.
struct Rootfs {
    dir: PathBuf,
}

impl Rootfs {
    fn new(name: &str) -> Rootfs {
        require_root();
        let dir = std::env::temp_dir().join(format!("runvm-ctr-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
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
        ] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        // As in images: a tmpfs mounted there takes this mode, as with runc.
        std::fs::set_permissions(
            rootfs.join("tmp"),
            std::os::unix::fs::PermissionsExt::from_mode(0o1777),
        )
        .unwrap();
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in [
            "sh", "echo", "cat", "id", "hostname", "ls", "sleep", "touch", "env", "pwd", "grep",
            "mkdir", "readlink", "stat", "true", "false", "wc", "head", "ps", "tr", "stty",
            "uname", "cut",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        std::fs::write(
            rootfs.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
        )
        .unwrap();
        // Escapes the rootfs if followed on the host.
        std::os::unix::fs::symlink("/", rootfs.join("hostroot")).unwrap();
        Rootfs { dir }
    }

    fn path(&self) -> String {
        self.dir.join("rootfs").to_string_lossy().into_owned()
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A runc-like spec running `script` with sh, as uid 1000.
fn spec(script: &str) -> serde_json::Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [27]},
            "args": ["sh", "-c", script],
            "env": ["PATH=/bin", "FOO=bar"],
            "cwd": "/home/user",
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_KILL"],
                "permitted": ["CAP_KILL"],
                "inheritable": ["CAP_KILL"],
                "ambient": ["CAP_KILL"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 512, "soft": 256}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "boxy",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
            {"destination": "/hostroot/escape", "type": "tmpfs", "source": "tmpfs"}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"},
                           {"type": "mount"}, {"type": "network"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys"]
        }
    })
}

fn create_request(id: &str, rootfs: &Rootfs, spec: serde_json::Value) -> RequestBody {
    let spec: Spec = serde_json::from_value(spec).unwrap();
    RequestBody::CreateContainer(Box::new(CreateContainerRequest {
        id: id.into(),
        spec,
        rootfs: rootfs.path(),
        stdin: None,
        stdout: Some(100),
        stderr: Some(101),
        network: None,
        pod: None,
        program: None,
    }))
}

async fn created(client: &mut Client, body: RequestBody) -> (u64, i32) {
    match client.call(body).await {
        Ok(ResponseBody::Started { process, pid }) => (process, pid),
        other => panic!("create failed: {other:?}"),
    }
}

async fn status(client: &mut Client, id: &str) -> ContainerStatus {
    match client
        .call(RequestBody::ContainerState { id: id.into() })
        .await
    {
        Ok(ResponseBody::ContainerState(state)) => state.status,
        other => panic!("state failed: {other:?}"),
    }
}

async fn wait(client: &mut Client, id: &str) -> ExitStatus {
    match client
        .call(RequestBody::WaitContainer { id: id.into() })
        .await
    {
        Ok(ResponseBody::Exited { status, .. }) => status,
        other => panic!("wait failed: {other:?}"),
    }
}

fn done(result: Result<ResponseBody, AgentError>) {
    assert_eq!(result, Ok(ResponseBody::Done));
}

#[test]
fn a_container_is_isolated_as_its_spec_says() {
    let rootfs = Rootfs::new("isolated");
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut out = guest.stream(100).await;
        let mut err = guest.stream(101).await;
        let script = "echo host=$(hostname) uid=$(id -u) gid=$(id -g) groups=$(id -G) \
             foo=$FOO home=$HOME pwd=$(pwd) pid=$$; \
             touch /rootfile 2>/dev/null && echo rootfs-writable || echo rootfs-readonly; \
             touch /tmp/ok && echo tmp-writable; \
             echo kcore=$(wc -c </proc/kcore); \
             grep -q ' /proc/sys proc ro,' /proc/mounts && echo sys-readonly || echo sys-writable; \
             echo nofile=$(ulimit -n); \
             grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/1/status | tr -d '\\t' | tr '\\n' ' '; echo; \
             ls /dev | tr '\\n' ' '; echo; \
             echo $(readlink /dev/ptmx) $(readlink /dev/stdout); \
             ls /hostroot/escape | wc -l; \
             echo etc=$(cat /etc/profile.d/x.sh) $(readlink /etc/mtab) $(stat -c %a /etc); \
             touch /etc/new 2>/dev/null && echo etc-writable || echo etc-readonly; \
             stat -c %a /tmp; \
             uname -m; cut -d' ' -f19 /proc/self/stat";
        // A read-only tmpfs over /etc with the image's content copied up,
        // and tmpcopyup of an empty /tmp.
        let etc = rootfs.dir.join("rootfs/etc");
        std::fs::create_dir(etc.join("profile.d")).unwrap();
        std::fs::write(etc.join("profile.d/x.sh"), "copied").unwrap();
        std::os::unix::fs::symlink("/proc/mounts", etc.join("mtab")).unwrap();
        std::fs::set_permissions(&etc, std::os::unix::fs::PermissionsExt::from_mode(0o751))
            .unwrap();
        let mut spec = spec(script);
        spec["mounts"][6]["options"] = json!(["nosuid", "tmpcopyup"]);
        // Scheduling attributes, taken on before the user changes.
        spec["linux"]["personality"] = json!({"domain": "LINUX32"});
        spec["process"]["scheduler"] = json!({"policy": "SCHED_BATCH", "nice": 3});
        spec["process"]["ioPriority"] = json!({"class": "IOPRIO_CLASS_BE", "priority": 2});
        spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/etc", "type": "tmpfs", "source": "tmpfs",
            "options": ["ro", "nosuid", "tmpcopyup"]
        }));
        let (process, pid) = created(&mut client, create_request("iso", &rootfs, spec)).await;
        assert!(pid > 0 && process > 0);
        assert_eq!(status(&mut client, "iso").await, ContainerStatus::Created);
        // Held before the program: nothing written yet.
        done(
            client
                .call(RequestBody::StartContainer { id: "iso".into() })
                .await,
        );
        let out = String::from_utf8(read_all(&mut out).await).unwrap();
        let err = String::from_utf8(read_all(&mut err).await).unwrap();
        assert_eq!(
            wait(&mut client, "iso").await,
            ExitStatus::Code(0),
            "{out}{err}"
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "host=boxy uid=1000 gid=1000 groups=1000 27 foo=bar home=/home/user pwd=/home/user pid=1",
            "{out}{err}"
        );
        assert_eq!(lines[1], "rootfs-readonly");
        assert_eq!(lines[2], "tmp-writable");
        if Path::new("/proc/kcore").exists() {
            assert_eq!(lines[3], "kcore=0");
        }
        assert_eq!(lines[4], "sys-readonly");
        assert_eq!(lines[5], "nofile=256");
        assert_eq!(
            lines[6].trim(),
            // Kept across exec by a non-root user through the ambient set.
            "CapEff:0000000000000020 CapBnd:0000000000000420 NoNewPrivs:1"
        );
        for dev in [
            "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue", "fd",
            "stdin", "ptmx",
        ] {
            assert!(
                lines[7].split(' ').any(|d| d == dev),
                "no /dev/{dev}: {}",
                lines[7]
            );
        }
        assert_eq!(lines[8].trim(), "pts/ptmx /proc/self/fd/1");
        // The tmpfs went onto rootfs/escape (the symlink resolved in the
        // root), not onto the host's /escape.
        assert!(!Path::new("/escape").exists());
        assert_eq!(lines[10], "etc=copied /proc/mounts 751");
        assert_eq!(lines[11], "etc-readonly");
        assert_eq!(lines[12], "1777");
        assert_eq!(lines[13], "i686");
        assert_eq!(lines[14], "3");
        assert_eq!(status(&mut client, "iso").await, ContainerStatus::Stopped);
        done(
            client
                .call(RequestBody::DeleteContainer {
                    id: "iso".into(),
                    force: false,
                })
                .await,
        );
        assert_eq!(
            kind(
                client
                    .call(RequestBody::ContainerState { id: "iso".into() })
                    .await
            ),
            ErrorKind::NotFound
        );
    });
}

#[test]
fn exec_joins_the_running_container() {
    let rootfs = Rootfs::new("exec");
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let _out = guest.stream(100).await;
        let _err = guest.stream(101).await;
        created(
            &mut client,
            create_request("ex", &rootfs, spec("exec sleep 100")),
        )
        .await;
        done(
            client
                .call(RequestBody::StartContainer { id: "ex".into() })
                .await,
        );
        assert_eq!(status(&mut client, "ex").await, ContainerStatus::Running);

        let mut out = guest.stream(200).await;
        let process: Process = serde_json::from_value(json!({
            "user": {"uid": 0, "gid": 0},
            // The container's init may still be the shell that execs
            // sleep: wait for the exec (a loaded host is slow).
            "args": ["sh", "-c", "for i in $(seq 200); do c=$(tr '\\0' ' ' < /proc/1/cmdline); \
                [ \"${c%% *}\" = sh ] || break; sleep 0.05; done; echo $(hostname) $c $(id -u) $MINE"],
            "env": ["PATH=/bin", "MINE=exec"],
            "cwd": "/"
        }))
        .unwrap();
        let exec = RequestBody::ExecInContainer(Box::new(ExecInContainerRequest {
            id: "ex".into(),
            process,
            stdin: None,
            stdout: Some(200),
            stderr: None,
        }));
        let (exec_process, _) = created(&mut client, exec).await;
        let text = String::from_utf8(read_all(&mut out).await).unwrap();
        assert_eq!(text, "boxy sleep 100 0 exec\n");
        assert_eq!(
            client
                .call(RequestBody::Wait {
                    process: exec_process
                })
                .await,
            Ok(ResponseBody::Exited {
                process: exec_process,
                status: ExitStatus::Code(0)
            })
        );

        // A missing program is an error of the exec itself.
        let process: Process = serde_json::from_value(json!({
            "user": {"uid": 0, "gid": 0}, "args": ["no-such-thing"], "env": ["PATH=/bin"], "cwd": "/"
        }))
        .unwrap();
        let missing = RequestBody::ExecInContainer(Box::new(ExecInContainerRequest {
            id: "ex".into(),
            process,
            ..ExecInContainerRequest::default()
        }));
        let err = client.call(missing).await.unwrap_err();
        assert!(err.message.contains("not found"), "{err}");

        // Running: delete needs force. SIGTERM to a pid-namespace init
        // without a handler does nothing; SIGKILL ends it.
        assert_eq!(
            kind(
                client
                    .call(RequestBody::DeleteContainer {
                        id: "ex".into(),
                        force: false
                    })
                    .await
            ),
            ErrorKind::Conflict
        );
        done(
            client
                .call(RequestBody::SignalContainer {
                    id: "ex".into(),
                    signal: 9,
                    all: true,
                })
                .await,
        );
        assert_eq!(wait(&mut client, "ex").await, ExitStatus::Signal(9));
        done(
            client
                .call(RequestBody::DeleteContainer {
                    id: "ex".into(),
                    force: false,
                })
                .await,
        );
    });
}

#[test]
fn pod_members_share_the_sandboxs_namespaces() {
    let rootfs = Rootfs::new("pod");
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let _out = guest.stream(100).await;
        let _err = guest.stream(101).await;
        let (_, sandbox_pid) = created(
            &mut client,
            create_request("sb", &rootfs, spec("exec sleep 100")),
        )
        .await;
        done(
            client
                .call(RequestBody::StartContainer { id: "sb".into() })
                .await,
        );
        let member = |id: &str, shared: &[(LinuxNamespaceType, &str)], out: u64| {
            let mut spec = spec(
                "echo $(hostname) $(readlink /proc/self/ns/ipc) $(readlink /proc/self/ns/uts) \
                 $(readlink /proc/self/ns/mnt) $(readlink /proc/self/ns/pid)",
            );
            spec["hostname"] = json!("");
            let spec: Spec = serde_json::from_value(spec).unwrap();
            RequestBody::CreateContainer(Box::new(CreateContainerRequest {
                id: id.into(),
                spec,
                rootfs: rootfs.path(),
                stdout: Some(out),
                pod: Some(PodPlacement {
                    id: "sb".into(),
                    shared_namespaces: shared
                        .iter()
                        .map(|(typ, container)| SharedNamespace {
                            typ: *typ,
                            container: container.to_string(),
                        })
                        .collect(),
                    ..PodPlacement::default()
                }),
                ..CreateContainerRequest::default()
            }))
        };
        let shared = [
            (LinuxNamespaceType::Ipc, "sb"),
            (LinuxNamespaceType::Uts, "sb"),
        ];
        let mut out = guest.stream(300).await;
        created(&mut client, member("m1", &shared, 300)).await;
        done(
            client
                .call(RequestBody::StartContainer { id: "m1".into() })
                .await,
        );
        let text = String::from_utf8(read_all(&mut out).await).unwrap();
        assert_eq!(wait(&mut client, "m1").await, ExitStatus::Code(0), "{text}");
        let ns = |pid: i32, name: &str| {
            std::fs::read_link(format!("/proc/{pid}/ns/{name}"))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        // The sandbox's hostname, IPC and UTS; a mount and PID namespace
        // of its own.
        assert_eq!(words[0], "boxy", "{text}");
        assert_eq!(words[1], ns(sandbox_pid, "ipc"), "{text}");
        assert_eq!(words[2], ns(sandbox_pid, "uts"), "{text}");
        assert_ne!(words[3], ns(sandbox_pid, "mnt"), "{text}");
        assert_ne!(words[4], ns(sandbox_pid, "pid"), "{text}");

        // A container that does not exist, or has stopped, lends nothing.
        let unknown = client
            .call(member("m2", &[(LinuxNamespaceType::Ipc, "nobody")], 301))
            .await
            .unwrap_err();
        assert_eq!(unknown.kind, ErrorKind::NotFound, "{unknown}");
        assert!(unknown.message.contains("\"nobody\""), "{unknown}");
        let stopped = client
            .call(member("m2", &[(LinuxNamespaceType::Uts, "m1")], 301))
            .await
            .unwrap_err();
        assert_eq!(stopped.kind, ErrorKind::Conflict, "{stopped}");
        assert!(stopped.message.contains("stopped"), "{stopped}");
        for id in ["m1", "sb"] {
            done(
                client
                    .call(RequestBody::DeleteContainer {
                        id: id.into(),
                        force: true,
                    })
                    .await,
            );
        }
    });
}

#[test]
fn a_created_container_can_be_deleted_unstarted() {
    let rootfs = Rootfs::new("unstarted");
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut out = guest.stream(100).await;
        let _err = guest.stream(101).await;
        let (_, pid) = created(
            &mut client,
            create_request("un", &rootfs, spec("echo never")),
        )
        .await;
        done(
            client
                .call(RequestBody::DeleteContainer {
                    id: "un".into(),
                    force: false,
                })
                .await,
        );
        assert!(read_all(&mut out).await.is_empty());
        // SAFETY: kill(2) with signal 0 only probes.
        assert!(unsafe { libc::kill(pid, 0) } < 0, "the init still exists");
    });
}

/// containerd asks for `rootfsPropagation: rshared` when a mount is
/// Bidirectional: the tree is made shared, and the mount holding the
/// rootfs must be made private again or pivot_root refuses (EINVAL).
#[test]
fn a_shared_rootfs_propagation_still_pivots() {
    let rootfs = Rootfs::new("rshared");
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut out = guest.stream(100).await;
        let mut err = guest.stream(101).await;
        let mut spec = spec("echo pivoted");
        spec["linux"]["rootfsPropagation"] = json!("rshared");
        created(&mut client, create_request("rsh", &rootfs, spec)).await;
        done(
            client
                .call(RequestBody::StartContainer { id: "rsh".into() })
                .await,
        );
        let out = String::from_utf8(read_all(&mut out).await).unwrap();
        let err = String::from_utf8(read_all(&mut err).await).unwrap();
        assert_eq!(wait(&mut client, "rsh").await, ExitStatus::Code(0), "{err}");
        assert_eq!(out, "pivoted\n", "{err}");
        done(
            client
                .call(RequestBody::DeleteContainer {
                    id: "rsh".into(),
                    force: false,
                })
                .await,
        );
    });
}

/// Opens /proc/<pid>/mem from a thread without CAP_SYS_PTRACE in its
/// effective set (capabilities are per thread): whether a process of the
/// same uid could reach into `pid`.
fn mem_without_ptrace(pid: i32) -> Result<(), i32> {
    std::thread::spawn(move || {
        caps::drop(
            None,
            caps::CapSet::Effective,
            caps::Capability::CAP_SYS_PTRACE,
        )
        .unwrap();
        std::fs::File::open(format!("/proc/{pid}/mem"))
            .map(|_| ())
            .map_err(|e| e.raw_os_error().unwrap_or(0))
    })
    .join()
    .unwrap()
}

#[test]
fn a_container_process_is_not_dumpable_while_set_up() {
    let rootfs = Rootfs::new("dumpable");
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let _out = guest.stream(100).await;
        let _err = guest.stream(101).await;
        // Root with the spec's few capabilities, which the init takes on
        // before it waits for start: a thread of ours without
        // CAP_SYS_PTRACE has all of them and the same uid, so only
        // dumpability stands in its way.
        let mut root_spec = spec("exec sleep 30");
        root_spec["process"]["user"] = json!({"uid": 0, "gid": 0});
        let (_, pid) = created(&mut client, create_request("nd", &rootfs, root_spec)).await;
        assert_eq!(mem_without_ptrace(pid), Err(libc::EACCES));
        // Once it has exec'd the program it is dumpable again.
        done(
            client
                .call(RequestBody::StartContainer { id: "nd".into() })
                .await,
        );
        assert_eq!(mem_without_ptrace(pid), Ok(()));
        done(
            client
                .call(RequestBody::DeleteContainer {
                    id: "nd".into(),
                    force: true,
                })
                .await,
        );
    });
}

#[test]
fn seccomp_and_errors_in_the_spec() {
    let rootfs = Rootfs::new("seccomp");
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut out = guest.stream(100).await;
        let _err = guest.stream(101).await;
        let mut with_filter =
            spec("mkdir /tmp/d 2>/dev/null && echo made || echo refused; echo after");
        with_filter["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
        created(&mut client, create_request("sc", &rootfs, with_filter)).await;
        done(
            client
                .call(RequestBody::StartContainer { id: "sc".into() })
                .await,
        );
        assert_eq!(read_all(&mut out).await, b"refused\nafter\n");
        assert_eq!(wait(&mut client, "sc").await, ExitStatus::Code(0));
        done(
            client
                .call(RequestBody::DeleteContainer {
                    id: "sc".into(),
                    force: false,
                })
                .await,
        );

        // Refused before anything is made.
        let bad_id = create_request("../x", &rootfs, spec("true"));
        assert_eq!(kind(client.call(bad_id).await), ErrorKind::InvalidRequest);
        let mut no_mntns = spec("true");
        no_mntns["linux"]["namespaces"] = json!([{"type": "pid"}]);
        let err = client
            .call(create_request("nm", &rootfs, no_mntns))
            .await
            .unwrap_err();
        assert!(err.message.contains("mount namespace"), "{err}");
        // Found only by the init: reported by create, the streams stay unused.
        let _o = guest.stream(100).await;
        let _e = guest.stream(101).await;
        let mut missing = spec("true");
        missing["process"]["args"] = json!(["not-there"]);
        let err = client
            .call(create_request("mi", &rootfs, missing))
            .await
            .unwrap_err();
        assert!(err.message.contains("not found in $PATH"), "{err}");
        // The host's answer to the PATH search is what runs when this user
        // may run it (a script that exits 7 where the search finds /bin/sh);
        // otherwise the search runs.
        let script = Path::new(&rootfs.path()).join("home/user/sh");
        std::fs::write(&script, "#!/bin/busybox sh\nexit 7\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        for (id, hint, status) in [("h1", "/home/user/sh", 7), ("h2", "/nowhere/sh", 0)] {
            let RequestBody::CreateContainer(mut hinted) =
                create_request(id, &rootfs, spec("true"))
            else {
                unreachable!()
            };
            hinted.program = Some(hint.into());
            (hinted.stdout, hinted.stderr) = (None, None);
            created(&mut client, RequestBody::CreateContainer(hinted)).await;
            done(
                client
                    .call(RequestBody::StartContainer { id: id.into() })
                    .await,
            );
            assert_eq!(
                wait(&mut client, id).await,
                ExitStatus::Code(status),
                "{hint}"
            );
            done(
                client
                    .call(RequestBody::DeleteContainer {
                        id: id.into(),
                        force: false,
                    })
                    .await,
            );
        }
        assert_eq!(
            kind(
                client
                    .call(RequestBody::ContainerState { id: "mi".into() })
                    .await
            ),
            ErrorKind::NotFound
        );
    });
}

#[test]
fn a_terminal_container_has_its_console() {
    let rootfs = Rootfs::new("terminal");
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut term = guest.stream(300).await;
        let mut with_terminal = spec(
            "test -t 0 && echo is-a-tty; test -c /dev/console && echo has-console; \
             stty size; tty; ls /dev/pts",
        );
        with_terminal["process"]["terminal"] = json!(true);
        with_terminal["process"]["consoleSize"] = json!({"height": 33, "width": 101});
        let mut body = create_request("tty", &rootfs, with_terminal);
        if let RequestBody::CreateContainer(request) = &mut body {
            request.stdin = Some(300);
            request.stdout = None;
            request.stderr = None;
        }
        created(&mut client, body).await;
        done(
            client
                .call(RequestBody::StartContainer { id: "tty".into() })
                .await,
        );
        assert_eq!(wait(&mut client, "tty").await, ExitStatus::Code(0));
        let text = String::from_utf8(read_all(&mut term).await).unwrap();
        // The first pty of the container's own devpts, as under runc.
        assert_eq!(
            text,
            "is-a-tty\r\nhas-console\r\n33 101\r\n/dev/pts/0\r\n0     ptmx\r\n"
        );
        done(
            client
                .call(RequestBody::DeleteContainer {
                    id: "tty".into(),
                    force: false,
                })
                .await,
        );
    });
}
