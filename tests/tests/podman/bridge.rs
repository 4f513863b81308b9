//! podman's default bridge network (netavark) with a container and a pod
//! on it at once, podman itself in a network namespace of the test's: IPs
//! on `eth0`, published ports, the gateway and each other reached from
//! inside, and, after removal, nothing of runvm's left in any namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use super::harness::{self, wait_for};
use super::netns::NetNs;
use super::pod_netns::PodNetns;
use super::{one_at_a_time, Podman};

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

    /// What container `name` sees of the network, in one `exec` (each
    /// costs seconds with a VM): its `eth0` addresses, then the body of
    /// what a server on its default route's gateway (port 18090) and one
    /// at `peer` (port 80) answer, once all of them answer. (HTTP GETs
    /// through `nc`: the static busybox's `wget` segfaults.)
    #[track_caller]
    fn network_seen_by(&self, name: &str, peer: &str) -> String {
        let script = format!(
            "ip -o -4 addr show eth0; \
             gateway=$(ip route show default | cut -d' ' -f3); \
             get() {{ printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 10 \"$1\" \"$2\" | tail -n 1; }}; \
             echo \"gateway $gateway says $(get \"$gateway\" 18090)\"; \
             echo \"peer {peer} says $(get {peer} 80)\""
        );
        wait_for(&format!("{name} reaches its gateway and {peer}"), || {
            let seen = harness::run(&mut self.env.command(&["exec", name, "sh", "-c", &script]));
            let both_answered = seen.stdout.matches("-says-hello\n").count() == 2;
            (seen.status.success() && both_answered)
                .then(|| seen.stdout.clone())
                .ok_or(seen.to_string())
        })
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
    for (name, ip, peer, text) in [
        ("web", &web_ip, &pod_ip, "pod"),
        ("a2", &pod_ip, &web_ip, "web"),
    ] {
        let seen = podman.network_seen_by(name, peer);
        assert!(
            seen.contains(&format!("eth0    inet {ip}/16")),
            "{name}'s IP on eth0: {seen}"
        );
        assert!(
            seen.contains(" says host-says-hello\n"),
            "{name} reaches a server on its gateway: {seen}"
        );
        assert!(
            seen.contains(&format!("peer {peer} says {text}-says-hello\n")),
            "{name} reaches {text} at {peer}: {seen}"
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
