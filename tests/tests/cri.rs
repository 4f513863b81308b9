//! Pods through Kubernetes' CRI: Debian's containerd (1.6) with its CRI
//! plugin, started by the test on a private socket, root and state, inside
//! a network namespace of the test's (its CRI stream server and the pods'
//! CNI never touch the host's interfaces), with the runtime under test as
//! the `runvm` runtime handler (`io.containerd.runc.v2`, `BinaryName`).
//! The test is the kubelet: a Rust CRI v1 client (`common/cri_client.rs`)
//! runs a pod, two containers in it, ExecSync, reads their CRI logs, then
//! stops and removes everything, and checks nothing is left. For runvm the
//! pod is one VM: both containers see one guest kernel and one VMM runs,
//! and they share the pod's hostname, network and IPC namespaces. The same
//! scenario runs with runvm's own shim as the handler.
//!
//! CNI is Debian's `bridge` plugin with `host-local` addresses, in the
//! test's namespace; the pod's IP (PodSandboxStatus) must be on `eth0` in
//! its containers, and a server in the pod must answer the test (for
//! runvm the pod's `eth0` is carried into its VM by a tap); a second pod
//! and the first reach each other by IP, and once removed its namespace,
//! and runvm's tap and filters with it, are gone. The
//! sandbox ("pause") image is the busybox test image with a sleeping
//! command: there is no registry to pull from.
//!
//! Under runvm's shim the same pod also shows the task service's Stats
//! (ContainerStats' memory and CPU figures), Update (a new memory limit
//! in the container's guest cgroup), an ExecSync past its timeout, a
//! container that ignores SIGTERM stopped by SIGKILL after its grace
//! period, and one killed by the guest's OOM killer reported with reason
//! `OOMKilled`: more containers of the one VM; then containerd restarts
//! (SIGTERM, started again on the same root and state) and finds the pod
//! and its shim again, and the rest of the scenario (ExecSync, logs,
//! stop, removal) runs on the restarted containerd. Its VMM and virtiofsd
//! run in the sandbox's host cgroup (and the shim does not), the app
//! containers have none, and the pod's goes with the pod (checked for
//! both handlers).

#[path = "common/cgroup_view.rs"]
mod cgroup_view;
mod common;
#[path = "common/containerd_config.rs"]
mod containerd_config;
#[path = "common/cri_client.rs"]
mod cri_client;
#[path = "cri/env.rs"]
mod env;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/pod_netns.rs"]
mod pod_netns;
#[path = "common/podman_env.rs"]
mod podman_env;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cri_client::cri;
use env::{container_config, one_at_a_time, CriEnv, HANDLER, SHIM_HANDLER};
use harness::{read_text, wait_for};
use pod_netns::PodNetns;

/// A pod with two busybox containers: one VM (one guest kernel) for both,
/// ExecSync's output and exit code, the CRI logs, a second pod (a second
/// VM) that the first reaches by IP and back, then stop and remove each
/// container and the pods; nothing is left.
#[test]
fn pod_with_two_containers_in_one_vm() {
    let _one = one_at_a_time();
    two_containers_in_one_vm(CriEnv::start("pod"), HANDLER);
}

/// [`pod_with_two_containers_in_one_vm`] with runvm's own shim as the
/// handler: one shim process owns the pod's VM, no runc shim or `runvm`
/// process takes part.
#[test]
fn pod_with_two_containers_under_the_runvm_shim() {
    let _one = one_at_a_time();
    two_containers_in_one_vm(CriEnv::start_with_shim("shim"), SHIM_HANDLER);
}

fn two_containers_in_one_vm(mut env: CriEnv, handler: &str) {
    let is_runvm = env.runtime.is_runvm || handler == SHIM_HANDLER;
    let config = env.pod_config("runvm-pod");
    let started = Instant::now();
    let pod = env
        .client
        .run_pod(&config, handler)
        .unwrap_or_else(|e| env.fail(&e.0));
    eprintln!("RunPodSandbox took {:?}", started.elapsed());
    let status = env
        .client
        .pod_status(&pod)
        .unwrap_or_else(|e| env.fail(&e.0));
    assert_eq!(
        status.state,
        cri::PodSandboxState::SandboxReady as i32,
        "{status:?}"
    );
    let started = Instant::now();
    let app1 = env.start_container(&pod, &config, "app1");
    eprintln!("app1 created and started in {:?}", started.elapsed());
    let started = Instant::now();
    let app2 = env.start_container(&pod, &config, "app2");
    eprintln!("app2 created and started in {:?}", started.elapsed());

    let boot_id = |env: &CriEnv, id: &str| {
        let (code, out, err) = env.exec(id, &["cat", "/proc/sys/kernel/random/boot_id"]);
        assert_eq!(code, 0, "boot_id in {id}: {out} {err}");
        out.trim().to_string()
    };
    let (boot1, boot2) = (boot_id(&env, &app1), boot_id(&env, &app2));
    assert_eq!(boot1.len(), 36, "a boot_id: {boot1:?}");
    if is_runvm {
        assert_eq!(boot1, boot2, "both containers run on the pod VM's kernel");
        let (vmms, virtiofsds) = env.vmm_and_virtiofsd_count();
        assert_eq!(vmms, 1, "one VMM for the pod");
        // (Also shows that the final check would see one left behind.)
        assert!(virtiofsds >= 1, "the pod's virtiofsd runs");
    }
    if env.runtime.is_runvm && handler == HANDLER {
        // The pod works although its sockets' paths do not fit a socket
        // address, as with containerd's default root.
        let control = env.runtime_root().join(&pod).join("sandbox.sock");
        assert!(control.exists(), "{} exists", control.display());
        assert!(control.as_os_str().len() > 108, "{}", control.display());
    }

    // The pod's network: the IP CNI gave the pod is on eth0 in both
    // containers, and a server in the pod answers the node (the test's
    // namespace, where the bridge is).
    assert_pod_network(&env, &status, [&app1, &app2]);
    assert_shared_namespaces(&env, "runvm-pod", [&app1, &app2]);
    if handler == SHIM_HANDLER {
        assert_shim_task_service(&env, &pod, &config, [&app1, &app2]);
        restart_containerd_under_the_pod(&mut env, &pod, [&app1, &app2]);
    }

    let (code, out, err) = env.exec(&app1, &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (3, "out\n", "err\n"),
        "ExecSync's exit code, stdout and stderr"
    );

    if handler == HANDLER {
        a_second_pod_reaches_the_first(&env, &status, &app1);
    }

    // The kubelet's log format: "<RFC 3339 time> <stream> <F|P> <text>".
    let log = read_text(&env.log_path("app1"));
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.splitn(4, ' ').collect()).collect();
    for line in &lines {
        assert!(
            line.len() == 4
                && line[0].contains('T')
                && ["stdout", "stderr"].contains(&line[1])
                && ["F", "P"].contains(&line[2]),
            "a CRI log line: {line:?} in\n{log}"
        );
    }
    let entries: Vec<(&str, &str)> = lines.iter().map(|l| (l[1], l[3])).collect();
    assert!(entries.contains(&("stdout", "started")), "{log}");
    assert!(entries.contains(&("stderr", "to-stderr")), "{log}");

    env.stop_and_remove(&app1);
    assert!(
        read_text(&env.log_path("app1")).contains(" stdout F stopping"),
        "app1 logged its SIGTERM"
    );
    // The pod and its other container run on.
    let (code, out, _) = env.exec(&app2, &["echo", "still"]);
    assert_eq!((code, out.as_str()), (0, "still\n"));
    if is_runvm {
        assert_eq!(
            boot_id(&env, &app2),
            boot2,
            "app2 still runs in the pod's VM"
        );
    }
    env.stop_and_remove(&app2);
    env.remove_pod_and_assert_clean(&pod);
}

/// The IP CNI gave the pod is on eth0 in `containers`, and a server in
/// the first answers the node.
#[track_caller]
fn assert_pod_network(env: &CriEnv, status: &cri::PodSandboxStatus, containers: [&String; 2]) {
    let pod_ip = status
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    assert!(
        !pod_ip.is_empty(),
        "PodSandboxStatus has the pod's IP: {status:?}"
    );
    for id in containers {
        let (code, out, err) = env.exec(id, &["ip", "-o", "-4", "addr", "show", "eth0"]);
        assert!(
            code == 0 && out.contains(&format!("eth0    inet {pod_ip}/24")),
            "the pod's IP {pod_ip} on eth0 in {id}: {out} {err}"
        );
    }
    let serve = "mkdir -p /www && echo pod-says-hello > /www/index.html && httpd -p 8080 -h /www";
    let (code, _, err) = env.exec(containers[0], &["sh", "-c", serve]);
    assert_eq!(code, 0, "httpd in app1: {err}");
    let answer = env.http_get(format!("{pod_ip}:8080").parse().expect("the pod's IP"));
    assert!(
        answer.starts_with("HTTP/1.") && answer.ends_with("\r\n\r\npod-says-hello\n"),
        "the pod's httpd answered: {answer}"
    );
}

/// The pod's network, UTS and IPC namespaces are shared (the kubelet's
/// defaults): both containers have the pod's hostname and the same
/// network and IPC namespaces, one reaches a server of the other on
/// 127.0.0.1, and a file in /dev/shm of one is seen by the other; each
/// has its own mount namespace.
#[track_caller]
fn assert_shared_namespaces(env: &CriEnv, hostname: &str, [app1, app2]: [&String; 2]) {
    for id in [app1, app2] {
        let (code, out, err) = env.exec(id, &["hostname"]);
        assert_eq!(
            (code, out.trim()),
            (0, hostname),
            "the pod's hostname in {id}: {err}"
        );
    }
    let namespace = |id: &str, name: &str| {
        let (code, out, err) = env.exec(id, &["readlink", &format!("/proc/self/ns/{name}")]);
        assert_eq!(code, 0, "the {name} namespace of {id}: {err}");
        out.trim().to_string()
    };
    for shared in ["net", "ipc", "uts"] {
        assert_eq!(
            namespace(app1, shared),
            namespace(app2, shared),
            "the pod's {shared} namespace"
        );
    }
    assert_ne!(
        namespace(app1, "mnt"),
        namespace(app2, "mnt"),
        "each container has its own mount namespace"
    );
    // localhost is the pod's: app2 reaches a server of app1 on 127.0.0.1.
    let (code, _, err) = env.exec(
        app1,
        &[
            "sh",
            "-c",
            "nc -l -p 7777 > /tmp/from-app2 2>&1 < /dev/null &",
        ],
    );
    assert_eq!(code, 0, "a listener in app1: {err}");
    let (code, out, err) = env.exec(
        app2,
        &[
            "sh",
            "-c",
            "for i in $(seq 30); do echo over-localhost | nc 127.0.0.1 7777 && exit 0; \
             sleep 1; done; exit 1",
        ],
    );
    assert_eq!(code, 0, "app2 reaches app1 on 127.0.0.1: {out} {err}");
    wait_for("app1's listener got app2's line", || {
        let (_, out, _) = env.exec(app1, &["cat", "/tmp/from-app2"]);
        (out == "over-localhost\n").then_some(()).ok_or(out)
    });
    let (code, _, err) = env.exec(app1, &["sh", "-c", "echo shared > /dev/shm/from-app1"]);
    assert_eq!(code, 0, "writing /dev/shm in app1: {err}");
    let (code, out, err) = env.exec(app2, &["cat", "/dev/shm/from-app1"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "shared\n"),
        "app2 sees app1's /dev/shm: {err}"
    );
}

/// Stats, Update, ExecSync's timeout, StopContainer's SIGKILL after the
/// grace period and OOM kills through runvm's shim, in `pod`'s VM.
#[track_caller]
fn assert_shim_task_service(
    env: &CriEnv,
    pod: &str,
    pod_config: &cri::PodSandboxConfig,
    [app1, app2]: [&String; 2],
) {
    // The pod's host cgroup is its sandbox's cgroupsPath (<cgroup parent>/
    // <pod id>): the VMM and virtiofsd run there, the shim does not. The
    // app containers get none: their processes are all in the guest.
    let processes: Vec<(u32, String)> = harness::processes_referencing(&env.needles())
        .into_iter()
        .filter(|(_, line)| {
            ["runvm-vmm", "virtiofsd", "containerd-shim"]
                .iter()
                .any(|program| line.contains(program))
        })
        .collect();
    cgroup_view::assert_vm_in(&format!("{}/{pod}", env.cgroup_parent), &processes);
    for app in [app1, app2] {
        let view = cgroup_view::CgroupView::of(&format!("{}/{app}", env.cgroup_parent));
        assert!(
            !view.exists(),
            "a host cgroup for {app}: {}",
            view.dir.display()
        );
    }

    // Stats: the figures of app1's guest cgroup.
    let stats = env
        .client
        .container_stats(app1)
        .unwrap_or_else(|e| env.fail(&e.0));
    let figure = |value: Option<&cri::UInt64Value>| value.map_or(0, |v| v.value);
    let memory = stats.memory.as_ref();
    let working_set = figure(memory.and_then(|m| m.working_set_bytes.as_ref()));
    let cpu = figure(
        stats
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref()),
    );
    assert!(
        working_set > 0 && cpu > 0,
        "app1's memory and CPU figures: {stats:?}"
    );

    // Update: a memory limit lands in app2's guest cgroup.
    let limit: i64 = 96 << 20;
    let resources = cri::LinuxContainerResources {
        memory_limit_in_bytes: limit,
        ..Default::default()
    };
    env.client
        .update_resources(app2, resources)
        .unwrap_or_else(|e| env.fail(&e.0));
    let (code, out, err) = env.exec(app2, &["cat", "/sys/fs/cgroup/memory.max"]);
    assert_eq!(
        (code, out.trim()),
        (0, limit.to_string().as_str()),
        "app2's memory.max after UpdateContainerResources: {err}"
    );

    // ExecSync past its timeout: an error, well before the command ends.
    let started = Instant::now();
    let timed_out = env
        .client
        .exec_sync_within(app2, &["sleep", "60"], Duration::from_secs(2));
    assert!(
        matches!(&timed_out, Err(e) if e.0.contains("timeout")),
        "ExecSync past its timeout: {timed_out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );

    // A container that ignores SIGTERM: SIGKILL after the grace period.
    let stubborn = env.start_script(
        pod,
        pod_config,
        "stubborn",
        "trap '' TERM; echo started; while :; do sleep 1; done",
    );
    let started = Instant::now();
    env.client
        .stop_container(&stubborn, 2)
        .unwrap_or_else(|e| env.fail(&e.0));
    let status = env
        .client
        .container_status(&stubborn)
        .unwrap_or_else(|e| env.fail(&e.0));
    assert_eq!(
        (status.state, status.exit_code),
        (cri::ContainerState::ContainerExited as i32, 128 + 9),
        "the stubborn container after StopContainer: {status:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(30),
        "killed after its 2 s grace period: {took:?}"
    );
    env.client
        .remove_container(&stubborn)
        .unwrap_or_else(|e| env.fail(&e.0));

    // A container over its memory limit: killed in the guest, OOMKilled.
    let mut hungry = container_config("hungry", "dd if=/dev/zero of=/dev/null bs=64M count=1");
    hungry.linux = Some(cri::LinuxContainerConfig {
        resources: Some(cri::LinuxContainerResources {
            memory_limit_in_bytes: 16 << 20,
            ..Default::default()
        }),
        ..Default::default()
    });
    let hungry = env.create_and_start(pod, pod_config, hungry);
    wait_for("the hungry container is OOMKilled", || {
        let status = env
            .client
            .container_status(&hungry)
            .unwrap_or_else(|e| env.fail(&e.0));
        (status.state == cri::ContainerState::ContainerExited as i32
            && status.reason == "OOMKilled"
            && status.exit_code != 0)
            .then_some(())
            .ok_or(format!("{status:?}"))
    });
    env.client
        .remove_container(&hungry)
        .unwrap_or_else(|e| env.fail(&e.0));
}

/// containerd restarted (SIGTERM, started again on the same root and
/// state) while the pod runs under runvm's shim: its CRI plugin finds the
/// pod ready and both containers running again, served by the same shim
/// and VM (Connect). What follows in the scenario runs on the restarted
/// containerd: ExecSync, the CRI log of a container's last words (its
/// stdio re-attached), StopContainer (which waits for the shim's TaskExit
/// event) and the pod's removal with nothing left.
#[track_caller]
fn restart_containerd_under_the_pod(env: &mut CriEnv, pod: &str, apps: [&String; 2]) {
    let shims = |env: &CriEnv| -> Vec<u32> {
        harness::processes_referencing(&env.needles())
            .into_iter()
            .filter(|(_, line)| line.contains(env::SHIM))
            .map(|(pid, _)| pid)
            .collect()
    };
    let before = shims(env);
    assert_eq!(before.len(), 1, "one shim for the pod: {before:?}");
    let started = Instant::now();
    env.restart_containerd();
    wait_for("the pod is ready after containerd's restart", || {
        let status = env.client.pod_status(pod).map_err(|e| e.0)?;
        (status.state == cri::PodSandboxState::SandboxReady as i32)
            .then_some(())
            .ok_or(format!("{status:?}"))
    });
    for app in apps {
        let status = env
            .client
            .container_status(app)
            .unwrap_or_else(|e| env.fail(&e.0));
        assert_eq!(
            status.state,
            cri::ContainerState::ContainerRunning as i32,
            "{app} after containerd's restart: {status:?}"
        );
    }
    eprintln!("containerd restarted, pod found in {:?}", started.elapsed());
    let after = shims(env);
    assert_eq!(after, before, "the same shim serves the pod");
    assert_eq!(env.vmm_and_virtiofsd_count().0, 1, "the pod's one VMM");
}

/// A second pod (a second VM for runvm) on the same CNI bridge: its
/// container and `app1` of the first pod (whose httpd
/// [`assert_pod_network`] started) reach each other's servers by pod IP.
/// Once it is removed its namespace is gone, and with it runvm's tap and
/// filters; the first pod runs on.
#[track_caller]
fn a_second_pod_reaches_the_first(env: &CriEnv, first: &cri::PodSandboxStatus, app1: &str) {
    let started = Instant::now();
    let config = env.pod_config("runvm-peer");
    let peer_pod = env
        .client
        .run_pod(&config, HANDLER)
        .unwrap_or_else(|e| env.fail(&e.0));
    let peer_status = env
        .client
        .pod_status(&peer_pod)
        .unwrap_or_else(|e| env.fail(&e.0));
    let peer = env.start_container(&peer_pod, &config, "peer");
    if env.runtime.is_runvm {
        assert_eq!(env.vmm_and_virtiofsd_count().0, 2, "a VMM per pod");
    }
    let netns = PodNetns::inspect(&pod_netns_path(env, &peer_pod), env.runtime.is_runvm);
    let ip_of = |status: &cri::PodSandboxStatus| status.network.as_ref().map(|n| n.ip.clone());
    let (first_ip, peer_ip) = (ip_of(first).unwrap_or_default(), ip_of(&peer_status));
    let peer_ip = peer_ip.unwrap_or_else(|| panic!("the second pod's IP: {peer_status:?}"));
    assert_ne!(first_ip, peer_ip, "each pod has its own IP");

    let serve = "mkdir -p /www && echo peer-says-hello > /www/index.html && httpd -p 8080 -h /www";
    let (code, _, err) = env.exec(&peer, &["sh", "-c", serve]);
    assert_eq!(code, 0, "httpd in the second pod: {err}");
    for (from, to, text) in [(app1, &peer_ip, "peer"), (&peer, &first_ip, "pod")] {
        let get = format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {to} 8080");
        let answer = wait_for(&format!("{from} reaches {to}:8080"), || {
            let (code, out, err) = env.exec(from, &["sh", "-c", &get]);
            (code == 0 && out.starts_with("HTTP/1."))
                .then_some(out.clone())
                .ok_or(format!("exit {code}: {out} {err}"))
        });
        assert!(
            answer.ends_with(&format!("\r\n\r\n{text}-says-hello\n")),
            "{to}:8080 answered {from}: {answer}"
        );
    }

    env.stop_and_remove(&peer);
    env.client
        .stop_pod(&peer_pod)
        .unwrap_or_else(|e| env.fail(&e.0));
    env.client
        .remove_pod(&peer_pod)
        .unwrap_or_else(|e| env.fail(&e.0));
    netns.assert_gone(&env.netns.path());
    if env.runtime.is_runvm {
        wait_for("the second pod's VMM ends", || {
            let (vmms, _) = env.vmm_and_virtiofsd_count();
            (vmms == 1).then_some(()).ok_or(format!("{vmms} VMMs"))
        });
    }
    eprintln!(
        "the second pod came, was reached and went in {:?}",
        started.elapsed()
    );
}

/// The network namespace CNI made for `pod`, as its sandbox's config.json
/// (in containerd's state) names it.
fn pod_netns_path(env: &CriEnv, pod: &str) -> PathBuf {
    let bundle = env
        .scratch
        .join("state/io.containerd.runtime.v2.task")
        .join(env::K8S_NAMESPACE)
        .join(pod);
    let spec: serde_json::Value = serde_json::from_str(&read_text(&bundle.join("config.json")))
        .unwrap_or_else(|e| panic!("the sandbox's config.json in {}: {e}", bundle.display()));
    let namespaces = spec["linux"]["namespaces"].as_array().cloned();
    namespaces
        .unwrap_or_default()
        .iter()
        .find(|ns| ns["type"] == "network")
        .and_then(|ns| ns["path"].as_str())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no network namespace path in {}", bundle.display()))
}
