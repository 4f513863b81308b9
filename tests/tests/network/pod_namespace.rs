//! The pod's network through the runc command line: a container created
//! with a network namespace the test prepared as CNI does (an `eth0` veth
//! with an address, a default route and a static neighbour; its peer in
//! a second namespace; IPv4 and IPv6) has that `eth0` inside, reaches
//! the peer over both and is reached by it; after a kill -9 of its pid-file process `delete` leaves
//! no tap and no TC filter. A namespace that is gone, and a config.json
//! without a network namespace (the host's network), fail `create` with
//! an error saying so and leave nothing.
//!
//! Run against runc too (`RUNVM_TEST_RUNTIME=/usr/sbin/runc`), except for
//! the host network, which runc shares and runvm refuses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};

use super::harness::{busybox_rootfs, http_get, processes_referencing, read_text, run, wait_for};
use super::runtime_cli::{unique, Cli};
use super::{receive_one, NetNs, ONE_VM};

const POD_IP: &str = "10.89.0.2";
const PEER_IP: &str = "10.89.0.1";
const NEIGHBOUR: &str = "10.89.0.77";
const NEIGHBOUR_MAC: &str = "02:00:0a:59:00:4d";
const POD_IP6: &str = "fd89::2";
const PEER_IP6: &str = "fd89::1";
/// An address of the peer's outside the pod's IPv6 subnet: reached
/// through the IPv6 default route.
const ROUTED_IP6: &str = "fd90::1";
const NEIGHBOUR6: &str = "fd89::77";
/// runvm's TC filter priority (0xc0de), as `tc` prints it.
const RUNVM_FILTER_PREF: &str = "pref 49374";

/// A busybox bundle `scratch/name` from `<runtime> spec` running `script`,
/// with a tmpfs on /tmp, CAP_NET_RAW (for ping) and `network` as its
/// network namespace entry
/// (`None`: no entry, the host's network).
fn bundle(cli: &Cli, name: &str, script: &str, network: Option<Value>) -> PathBuf {
    let dir = cli.scratch.join(name);
    busybox_rootfs(&dir.join("rootfs"));
    let mut spec = cli.command(&["spec"]);
    spec.current_dir(&dir);
    run(&mut spec).ok();
    let path = dir.join("config.json");
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("config.json")).expect("JSON");
    config["process"]["terminal"] = json!(false);
    config["process"]["args"] = json!(["sh", "-c", script]);
    // busybox ping opens a raw socket.
    for set in ["bounding", "effective", "permitted"] {
        if let Some(caps) = config["process"]["capabilities"][set].as_array_mut() {
            caps.push(json!("CAP_NET_RAW"));
        }
    }
    let mounts = config["mounts"].as_array_mut().expect("mounts");
    mounts.push(
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=1777"]}),
    );
    let namespaces = config["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces");
    namespaces.retain(|n| n["type"] != "network");
    namespaces.extend(network);
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json")).expect("write");
    dir
}

/// The pod's namespace as CNI's bridge plugin leaves it, with the other
/// end of its veth in `peer`.
fn cni_like_pod(pod: &NetNs, peer: &NetNs) {
    pod.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "vpeer", "netns", &peer.name,
    ]);
    pod.ip(&["link", "set", "eth0", "mtu", "1420", "up"]);
    pod.ip(&["addr", "add", &format!("{POD_IP}/24"), "dev", "eth0"]);
    pod.ip(&["route", "add", "default", "via", PEER_IP]);
    let permanent_neighbour = |address: &str| {
        pod.ip(&[
            "neigh",
            "add",
            address,
            "lladdr",
            NEIGHBOUR_MAC,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
    };
    permanent_neighbour(NEIGHBOUR);
    // IPv6 as CNI leaves it once duplicate address detection settled
    // (`nodad` here: the addresses are usable at once).
    pod.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{POD_IP6}/64"),
        "dev",
        "eth0",
        "nodad",
    ]);
    pod.ip(&[
        "-6", "route", "add", "default", "via", PEER_IP6, "dev", "eth0",
    ]);
    permanent_neighbour(NEIGHBOUR6);
    peer.ip(&["link", "set", "vpeer", "mtu", "1420", "up"]);
    peer.ip(&["addr", "add", &format!("{PEER_IP}/24"), "dev", "vpeer"]);
    for address in [format!("{PEER_IP6}/64"), format!("{ROUTED_IP6}/128")] {
        peer.ip(&["-6", "addr", "add", &address, "dev", "vpeer", "nodad"]);
    }
}

fn in_namespace(ns: &NetNs, program: &str, args: &[&str]) -> String {
    let output = Command::new("ip")
        .args(["netns", "exec", &ns.name, program])
        .args(args)
        .output()
        .expect("ip netns exec");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What runvm could have left in the pod's namespace: its taps, and its
/// filters on `eth0`.
fn runvm_leftovers(pod: &NetNs) -> String {
    let links = in_namespace(pod, "ip", &["-o", "link"]);
    let filters = in_namespace(pod, "tc", &["filter", "show", "dev", "eth0", "ingress"]);
    let taps: Vec<&str> = links.lines().filter(|l| l.contains("rvtap")).collect();
    let ours: Vec<&str> = filters
        .lines()
        .filter(|l| l.contains(RUNVM_FILTER_PREF))
        .collect();
    [taps, ours].concat().join("\n")
}

/// An HTTP GET of `/` at the pod's port 8080, from `peer`, once the
/// server listens (it starts after the container said READY).
fn get_from(peer: &NetNs) -> String {
    let address: SocketAddr = format!("{POD_IP}:8080").parse().expect("address");
    peer.spawn(move || wait_for("the pod's httpd answers", || http_get(address)))
        .join()
        .expect("the client thread")
}

#[test]
fn a_container_wears_its_pod_namespaces_eth0_and_delete_after_kill_9_leaves_no_tap() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let cli = Cli::new("network", "pod");
    let (pod, peer) = (NetNs::new(), NetNs::new());
    cni_like_pod(&pod, &peer);
    let received = receive_one(&peer, format!("{PEER_IP}:7003").parse().expect("address"));
    let script = format!(
        "mkdir /tmp/www && echo pod-says-hello > /tmp/www/index.html; \
         ip -o addr; ip -o link; ip route; ip -6 route; ip neigh; ip -6 neigh; \
         ping -c 1 -W 30 {PEER_IP} > /dev/null && echo PING-OK; \
         ping -6 -c 1 -W 30 {PEER_IP6} > /dev/null && echo PING6-OK; \
         ping -6 -c 1 -W 30 {ROUTED_IP6} > /dev/null && echo PING6-ROUTED-OK; \
         echo from-the-container | nc {PEER_IP} 7003 && echo SENT; \
         echo READY; exec httpd -f -p 8080 -h /tmp/www"
    );
    let netns = json!({"type": "network", "path": pod.path()});
    let dir = bundle(&cli, "pod", &script, Some(netns));
    let id = unique("pod");
    let (out, err) = (cli.scratch.join("out"), cli.scratch.join("err"));
    let pid_file = cli.scratch.join("pid");
    cli.create_to_files(&dir, &pid_file, &id, &out, &err).ok();
    if cli.runtime.is_runvm {
        let links = in_namespace(&pod, "ip", &["-o", "link"]);
        assert!(links.contains("rvtap0"), "runvm's tap: {links}");
    }
    cli.run(&["start", &id]).ok();
    wait_for("the container is ready", || {
        let text = read_text(&out);
        text.contains("READY")
            .then_some(())
            .ok_or(format!("{text}\n{}", read_text(&err)))
    });
    let shown = format!("{}\n--- stderr ---\n{}", read_text(&out), read_text(&err));
    // One line of `ip` output per fact (busybox's `ip -o`); runc shows
    // the veth as `eth0@ifN`, runvm its virtio-net device as `eth0`.
    let line_with = |needles: &[&str]| {
        shown
            .lines()
            .any(|line| needles.iter().all(|n| line.contains(n)))
    };
    let pod_address = format!("inet {POD_IP}/24");
    let default_route = format!("default via {PEER_IP} dev eth0");
    let neighbour = format!("{NEIGHBOUR} dev eth0 lladdr {NEIGHBOUR_MAC}");
    let pod_address6 = format!("inet6 {POD_IP6}/64 scope global");
    let default_route6 = format!("default via {PEER_IP6} dev eth0");
    let neighbour6 = format!("{NEIGHBOUR6} dev eth0 lladdr {NEIGHBOUR_MAC}");
    for wanted in [
        &["eth0", &pod_address][..],
        &["eth0", &pod_address6],
        &[&default_route6],
        &[&neighbour6, "PERMANENT"],
        &["lo", "inet6 ::1/128"],
        &["PING6-OK"],
        &["PING6-ROUTED-OK"],
        &["eth0", "UP,LOWER_UP", "mtu 1420"],
        &[&default_route],
        &[&neighbour, "PERMANENT"],
        &["lo", "inet 127.0.0.1/8"],
        &["PING-OK"],
        &["SENT"],
    ] {
        assert!(line_with(wanted), "{wanted:?} in the container:\n{shown}");
    }
    assert_eq!(
        received.join().expect("the peer thread"),
        Ok("from-the-container\n".to_string()),
        "{shown}"
    );
    let answer = get_from(&peer);
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains("pod-says-hello"),
        "the pod's httpd answered: {answer}"
    );

    // kill -9 of the pid-file process (for runvm the monitor, which owns
    // the VM), then delete: nothing of runvm's stays in the namespace.
    let pid: i32 = read_text(&pid_file).trim().parse().expect("a pid");
    // SAFETY: kill(2) of the container's pid-file process.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_for("the container stops", || {
        let state = cli.run(&["state", &id]).ok().stdout;
        state.contains("\"stopped\"").then_some(()).ok_or(state)
    });
    super::runtime_cli::reap_orphans();
    cli.run(&["delete", &id]).ok();
    assert_eq!(
        runvm_leftovers(&pod),
        "",
        "runvm's taps or filters are left"
    );
    let addresses = in_namespace(&pod, "ip", &["-o", "addr", "show", "eth0"]);
    assert!(
        addresses.contains(&format!("inet {POD_IP}/24")),
        "the caller's eth0 is as it was: {addresses}"
    );
}

#[test]
fn a_vanished_namespace_and_the_host_network_fail_create_and_leave_nothing() {
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let cli = Cli::new("network", "refused");
    let gone = format!("/run/netns/rv-gone-{}", std::process::id());
    let mut cases = vec![(
        "gone",
        Some(json!({"type": "network", "path": gone})),
        gone.clone(),
    )];
    if cli.runtime.is_runvm {
        // runc shares the host's network; a VM cannot.
        cases.push(("host", None, "host networking".to_string()));
    }
    for (name, network, expected) in cases {
        let dir = bundle(&cli, name, "true", network);
        let id = unique(name);
        let (out, err) = (cli.scratch.join("out"), cli.scratch.join("err"));
        let pid_file = cli.scratch.join(format!("{name}.pid"));
        let failed = cli
            .create_to_files(&dir, &pid_file, &id, &out, &err)
            .fails();
        let said = format!("{}{}", failed.stderr, read_text(&err));
        if cli.runtime.is_runvm {
            assert!(said.contains(&expected), "{name}: {said}");
        }
        let listed = cli.run(&["list", "-q"]).ok();
        assert_eq!(listed.stdout.trim(), "", "{name}: containers left");
        let left = processes_referencing(&[cli.scratch.display()]);
        assert!(left.is_empty(), "{name}: processes left: {left:?}");
        assert!(!Path::new(&gone).exists());
    }
}
