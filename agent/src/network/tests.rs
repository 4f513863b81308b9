//! [`configure`] for real, in network namespaces of the test's own (needs
//! root): veth devices stand for the guest's virtio-net ones.

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::Command;

use runvm_agent_api::network::GuestNetwork;

use super::configure;

/// Checks for root and holds the agent tests' serial lock: these tests
/// run `ip` and wait for it, and the server tests reap with waitpid(-1),
/// which would take its status.
fn require_root() -> std::sync::MutexGuard<'static, ()> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "the network tests make network namespaces: run them as root"
    );
    crate::server::tests::one_at_a_time()
}

/// `ip` in the calling thread's network namespace: `line`'s words.
fn ip_line(line: &str) -> String {
    ip(&line.split_whitespace().collect::<Vec<_>>())
}

/// A veth pair standing for two virtio-net devices: the pod's `eth0`
/// (by MAC, see [`pod`]) is the guest's `eth1`, its `net1` the guest's
/// `eth0`, so renaming must go through temporary names.
fn two_devices() {
    ip_line(
        "link add eth0 address 02:00:00:00:01:01 type veth peer name eth1 address 02:00:00:00:00:01",
    );
}

fn ip(args: &[&str]) -> String {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn open_own_netns() -> OwnedFd {
    let path = c"/proc/thread-self/ns/net";
    // SAFETY: open(2) with a C string; the descriptor is ours.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    assert!(fd >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Runs `body` on a thread in a new network namespace.
fn in_new_netns<T: Send + 'static>(body: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: unshare(2) of this thread's network namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
        body()
    })
    .join()
    .expect("the namespace thread")
}

fn pod(macs: [&str; 2]) -> GuestNetwork {
    serde_json::from_value(serde_json::json!({
        "interfaces": [
            {"name": "eth0", "mac": mac(macs[0]), "mtu": 1420,
             "addresses": [{"address": "10.88.0.2", "prefix": 24},
                           {"address": "fd00::2", "prefix": 64}]},
            {"name": "net1", "mac": mac(macs[1]), "mtu": 1500,
             "addresses": [{"address": "192.168.5.9", "prefix": 28}]}
        ],
        "routes": [
            {"destination": null, "gateway": "10.88.0.1", "device": "eth0"},
            {"destination": {"address": "10.88.0.0", "prefix": 24}, "gateway": null,
             "device": "eth0", "source": "10.88.0.2", "scope": 253},
            {"destination": {"address": "172.16.0.0", "prefix": 12},
             "gateway": "192.168.5.1", "device": "net1"}
        ],
        "neighbours": [{"address": "10.88.0.1", "mac": [2, 0, 0, 0, 0, 1], "device": "eth0"}]
    }))
    .expect("a pod network")
}

fn mac(text: &str) -> Vec<u8> {
    text.split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

#[test]
fn devices_found_by_mac_are_renamed_addressed_and_routed_in_place() {
    let _serial = require_root();
    let shown = in_new_netns(|| {
        two_devices();
        configure(&pod(["02:00:00:00:00:01", "02:00:00:00:01:01"]), None).expect("configure");
        (
            ip(&["-o", "addr"]),
            ip(&["-o", "link"]),
            ip(&["route"]),
            ip(&["neigh"]),
        )
    });
    let (addresses, links, routes, neighbours) = shown;
    let all = format!("{addresses}\n{links}\n{routes}\n{neighbours}");
    assert!(
        addresses.contains("eth0    inet 10.88.0.2/24 brd 10.88.0.255"),
        "{all}"
    );
    assert!(addresses.contains("net1    inet 192.168.5.9/28"), "{all}");
    assert!(addresses.contains("lo    inet 127.0.0.1/8"), "{all}");
    assert!(
        links.contains("eth0@net1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1420"),
        "{all}"
    );
    assert!(
        links.contains("net1@eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500"),
        "{all}"
    );
    assert!(routes.contains("default via 10.88.0.1 dev eth0"), "{all}");
    assert!(
        routes.contains("172.16.0.0/12 via 192.168.5.1 dev net1"),
        "{all}"
    );
    assert!(
        neighbours.contains("10.88.0.1 dev eth0 lladdr 02:00:00:00:00:01 PERMANENT"),
        "{all}"
    );
}

#[test]
fn devices_move_into_the_containers_namespace() {
    let _serial = require_root();
    let (moved, left) = in_new_netns(|| {
        two_devices();
        let container = in_new_netns(open_own_netns);
        configure(
            &pod(["02:00:00:00:00:01", "02:00:00:00:01:01"]),
            Some(&container),
        )
        .expect("configure");
        let left = ip(&["-o", "link"]);
        let moved = std::thread::spawn(move || {
            // SAFETY: setns(2) of this thread to the container's namespace.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&container);
            assert_eq!(unsafe { libc::setns(fd, libc::CLONE_NEWNET) }, 0);
            (ip(&["-o", "addr"]), ip(&["route"]))
        })
        .join()
        .unwrap();
        (moved, left)
    });
    let (addresses, routes) = moved;
    assert!(!left.contains("eth"), "left behind: {left}");
    assert!(
        addresses.contains("eth0    inet 10.88.0.2/24"),
        "{addresses}"
    );
    assert!(
        addresses.contains("net1    inet 192.168.5.9/28"),
        "{addresses}"
    );
    assert!(addresses.contains("lo    inet 127.0.0.1/8"), "{addresses}");
    assert!(
        routes.contains("default via 10.88.0.1 dev eth0"),
        "{routes}"
    );
}

#[test]
fn a_missing_device_is_named_with_what_the_vm_has_and_nothing_is_touched() {
    let _serial = require_root();
    let (error, links) = in_new_netns(|| {
        two_devices();
        let error = configure(&pod(["02:00:00:00:00:01", "02:00:00:00:02:02"]), None).unwrap_err();
        (error, ip(&["-o", "link"]))
    });
    assert!(
        !links.contains("rvnet") && !links.contains("UP,"),
        "{links}"
    );
    assert!(
        error.contains("no network device has MAC 02:00:00:00:02:02 for interface net1")
            && error.contains("eth0 02:00:00:00:01:01"),
        "{error}"
    );
}

#[test]
fn a_restored_vms_cards_get_their_own_macs_before_the_pod_network_finds_them() {
    use runvm_agent_api::network::CardMac;
    let _serial = require_root();
    let card = |from: &str, to: &str| CardMac {
        from: mac(from).try_into().unwrap(),
        to: mac(to).try_into().unwrap(),
    };
    let links = in_new_netns(move || {
        two_devices();
        // eth1's new MAC is eth0's placeholder: every card is found first.
        let cards = [
            card("02:00:00:00:00:01", "02:00:00:00:01:01"),
            card("02:00:00:00:01:01", "02:0a:0b:0c:0d:0e"),
        ];
        super::assign_card_macs(&cards).expect("assign");
        configure(&pod(["02:0a:0b:0c:0d:0e", "02:00:00:00:01:01"]), None).expect("configure");
        let missing =
            super::assign_card_macs(&[card("02:00:00:00:09:09", "02:00:00:00:09:0a")]).unwrap_err();
        (ip(&["-o", "link"]), missing)
    });
    let (links, missing) = links;
    assert!(
        links.contains("eth0@net1: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1420")
            && links.contains("link/ether 02:0a:0b:0c:0d:0e"),
        "{links}"
    );
    assert!(missing.contains("02:00:00:00:09:09"), "{missing}");
}
