//! Containers through the agent API in one microVM (the test image, with
//! busybox): cgroup v2 limits inside the guest, the cgroup namespace,
//! stats, exec, signals, delete, and the OOM event. The container's root
//! is an empty guest directory with the guest's /bin bound into it.

mod common;

use common::Captured;

use std::time::Duration;

use runvm::agent_client::AgentClient;
use runvm::container_client::ContainerClient;
use runvm::guest_process::{self, HostStdio, ProcessSpec};
use runvm::vm::{MicroVm, VmSpec};
use runvm_agent_api::oci::{Process, Spec};
use runvm_agent_api::{ContainerEvent, ContainerStatus, ExitStatus};
use serde_json::json;

const PATIENCE: Duration = Duration::from_secs(180);

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
        ..HostStdio::default()
    };
    let relay = guest_process::spawn(agent, &spec, stdio)
        .await
        .expect("guest exec");
    let status = relay.finish(agent).await.expect("guest wait");
    assert_eq!(status, ExitStatus::Code(0), "{script}: {}", out.text());
    out.text()
}

fn spec(script: &str, hostname: &str, resources: serde_json::Value) -> Spec {
    serde_json::from_value(json!({
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", script],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=1024k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/bin", "source": "/bin", "options": ["rbind", "ro"]}
        ],
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"},
                           {"type": "ipc"}, {"type": "cgroup"}],
            "resources": resources,
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"]
        }
    }))
    .expect("a valid spec")
}

async fn scenario_limits(agent: &AgentClient) {
    let containers = ContainerClient::new(agent);
    guest_sh(agent, "mkdir -p /run/ctr/a").await;
    let out = Captured::default();
    let script = "echo $(hostname) $$ $(cat /sys/fs/cgroup/memory.max) \
                  $(cat /sys/fs/cgroup/pids.max) $(cat /sys/fs/cgroup/cpu.max) \
                  $(cat /proc/self/cgroup)";
    let resources = json!({
        "memory": {"limit": 67108864},
        "pids": {"limit": 20},
        "cpu": {"quota": 50000, "period": 100000}
    });
    let init = containers
        .create(
            "a",
            spec(script, "ctr-a", resources),
            "/run/ctr/a",
            None,
            HostStdio {
                stdout: out.writer(),
                stderr: out.writer(),
                ..HostStdio::default()
            },
        )
        .await
        .expect("create a");
    assert_eq!(
        containers.state("a").await.expect("state").status,
        ContainerStatus::Created
    );
    assert!(
        !guest_sh(agent, "cat /sys/fs/cgroup/a/cgroup.procs")
            .await
            .trim()
            .is_empty(),
        "the held init is in the container's cgroup"
    );
    containers.start("a").await.expect("start a");
    assert_eq!(
        containers.wait("a").await.expect("wait a"),
        ExitStatus::Code(0)
    );
    init.drain().await;
    assert_eq!(out.text(), "ctr-a 1 67108864 20 50000 100000 0::/\n");
    containers.delete("a", false).await.expect("delete a");
    assert_eq!(
        guest_sh(agent, "test -e /sys/fs/cgroup/a && echo left || echo gone").await,
        "gone\n"
    );
}

async fn scenario_stats_exec_kill(agent: &AgentClient) {
    let containers = ContainerClient::new(agent);
    guest_sh(agent, "mkdir -p /run/ctr/b").await;
    let resources = json!({"memory": {"limit": 33554432}, "pids": {"limit": 10}});
    containers
        .create(
            "b",
            spec("exec sleep 600", "ctr-b", resources),
            "/run/ctr/b",
            None,
            HostStdio::default(),
        )
        .await
        .expect("create b");
    containers.start("b").await.expect("start b");
    let stats = containers.stats("b").await.expect("stats");
    assert_eq!(stats.memory_limit, Some(33554432), "{stats:?}");
    assert_eq!(stats.pids_limit, Some(10), "{stats:?}");
    assert!(stats.pids_current >= 1, "{stats:?}");
    assert!(stats.memory_usage > 0, "{stats:?}");

    let out = Captured::default();
    let process: Process = serde_json::from_value(json!({
        "user": {"uid": 0, "gid": 0},
        "args": ["sh", "-c", "echo $(cat /proc/self/cgroup) $(hostname) $(cat /proc/1/cmdline | tr '\\0' ' ')"],
        "env": ["PATH=/bin"],
        "cwd": "/"
    }))
    .expect("process");
    let exec = containers
        .exec(
            "b",
            process,
            HostStdio {
                stdout: out.writer(),
                ..HostStdio::default()
            },
        )
        .await
        .expect("exec in b");
    let status = guest_process::wait(agent, exec.started.process)
        .await
        .expect("wait exec");
    exec.drain().await;
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(out.text(), "0::/ ctr-b sleep 600\n");

    assert!(
        containers.delete("b", false).await.is_err(),
        "running: force needed"
    );
    containers.signal("b", 9, true).await.expect("kill all");
    assert_eq!(
        containers.wait("b").await.expect("wait b"),
        ExitStatus::Signal(9)
    );
    containers.delete("b", false).await.expect("delete b");
}

async fn scenario_oom_event(agent: &AgentClient) {
    let containers = ContainerClient::new(agent);
    guest_sh(agent, "mkdir -p /run/ctr/c").await;
    let resources = json!({"memory": {"limit": 16777216}});
    containers
        .create(
            "c",
            spec(
                "dd if=/dev/zero of=/dev/null bs=48M count=1",
                "ctr-c",
                resources,
            ),
            "/run/ctr/c",
            None,
            HostStdio::default(),
        )
        .await
        .expect("create c");
    containers.start("c").await.expect("start c");
    let status = containers.wait("c").await.expect("wait c");
    assert_eq!(
        status.shell_code(),
        137,
        "dd should be OOM-killed: {status:?}"
    );
    let mut after = 0;
    loop {
        let (seq, event) =
            tokio::time::timeout(Duration::from_secs(30), containers.next_event(after))
                .await
                .expect("an OOM event in time")
                .expect("event");
        after = seq;
        if let ContainerEvent::Oom { id, oom_kills } = event {
            assert_eq!(id, "c");
            assert!(oom_kills >= 1);
            break;
        }
    }
    assert!(containers.stats("c").await.expect("stats").oom_kills >= 1);
    containers.delete("c", false).await.expect("delete c");
}

/// A container process with CAP_SYS_CHROOT (podman grants it) tries the
/// classic chroot escape: chroot into a subdirectory while keeping its
/// working directory outside it (busybox nsenter -r/-w does exactly that),
/// climb with `..` and chroot there. It gets out of the subdirectory but
/// no further than the container's root (`..` at the root of a mount that
/// sits on its parent's root goes nowhere), and never sees the guest's
/// own root (the agent is its /init).
async fn scenario_chroot_escape(agent: &AgentClient) {
    let containers = ContainerClient::new(agent);
    guest_sh(agent, "mkdir -p /run/ctr/e").await;
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETFCAP",
        "CAP_SETGID",
        "CAP_SETPCAP",
        "CAP_SETUID",
        "CAP_SYS_CHROOT"
    ]);
    let script = "cd / && nsenter -r/x -w/ /bin/sh -c '\
                  cd -P ../../../../.. && echo seen: * && \
                  if test -e init; then echo ESCAPED; fi && \
                  chroot . /bin/sh -c \"test -e /init && echo ESCAPED-CHROOT || echo stayed\"'";
    let mut config: serde_json::Value =
        serde_json::to_value(spec(script, "ctr-e", json!({}))).expect("spec as json");
    config["process"]["capabilities"] =
        json!({"bounding": caps, "effective": caps, "permitted": caps});
    config["mounts"]
        .as_array_mut()
        .expect("mounts")
        .push(json!({"destination": "/x/bin", "source": "/bin", "options": ["rbind", "ro"]}));
    let out = Captured::default();
    containers
        .create(
            "e",
            serde_json::from_value(config).expect("spec"),
            "/run/ctr/e",
            None,
            HostStdio {
                stdout: out.writer(),
                stderr: out.writer(),
                ..HostStdio::default()
            },
        )
        .await
        .expect("create e");
    containers.start("e").await.expect("start e");
    let status = containers.wait("e").await.expect("wait e");
    let text = out.text();
    assert_eq!(status, ExitStatus::Code(0), "{text}");
    // Out of /x (so it sees x), stopped at the container's root.
    let seen = text
        .lines()
        .find_map(|l| l.strip_prefix("seen: "))
        .unwrap_or_else(|| panic!("the escape attempt did not run: {text}"));
    assert!(
        seen.split(' ').any(|name| name == "x"),
        "not out of /x: {text}"
    );
    assert!(!text.contains("ESCAPED"), "out of the container: {text}");
    assert!(text.contains("stayed"), "{text}");
    containers.delete("e", false).await.expect("delete e");

    // The guest's own root is a mount with a parent (the agent moved off
    // the initramfs at boot), so containers enter theirs by pivot_root
    // and unmount the guest's. The initramfs (the kernel's rootfs) is the
    // one mount that is its own parent.
    let mountinfo = guest_sh(agent, "cat /proc/self/mountinfo").await;
    let root = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&"/"))
        .unwrap_or_else(|| panic!("no / in the guest's mountinfo:\n{mountinfo}"));
    assert_ne!(root[0], root[1], "/ is the initramfs:\n{mountinfo}");
}

#[test]
fn containers_in_a_microvm() {
    common::require_kvm();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let dir = std::env::temp_dir().join(format!("runvm-e2e-ctr-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spec = VmSpec {
            vmm: common::vmm_binary(),
            kernel: common::kernel(),
            image: common::tools_image(),
            memory_mib: 128,
            vcpus: 1,
            virtiofsd: None,
        };
        let mut vm = MicroVm::boot(&spec, &dir).expect("boot the VM");
        let agent = vm
            .connect_agent(common::BOOT_TIMEOUT)
            .await
            .expect("the agent answers");
        let result = tokio::time::timeout(PATIENCE, async {
            scenario_limits(&agent).await;
            scenario_stats_exec_kill(&agent).await;
            scenario_oom_event(&agent).await;
            scenario_chroot_escape(&agent).await;
        })
        .await;
        let console = vm.console_tail();
        let status = vm.shutdown(&agent).await.expect("shutdown");
        assert!(
            result.is_ok(),
            "the scenarios did not finish; console:\n{console}"
        );
        assert!(status.success(), "VMM exit {status}; console:\n{console}");
        assert!(!dir.exists(), "{} was left behind", dir.display());
    });
}
