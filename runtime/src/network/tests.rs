//! In network namespaces the tests make (never the host's): a "pod"
//! namespace with a veth whose peer sits in a "peer" namespace, set up
//! the way CNI leaves it. `ip` and `tc` only set up and inspect.

use std::net::UdpSocket;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::*;

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().expect("run it");
    assert!(
        output.status.success(),
        "{program} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("skipped: network namespaces need root");
    }
    root
}

struct Ns(String);

impl Ns {
    fn new(role: &str) -> Ns {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "rv{role}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        let ns = Ns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.0.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn ip_fails(&self, args: &[&str]) -> bool {
        let mut full = vec!["-n", self.0.as_str()];
        full.extend_from_slice(args);
        !Command::new("ip")
            .args(&full)
            .output()
            .unwrap()
            .status
            .success()
    }

    fn tc(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.0.as_str()];
        full.extend_from_slice(args);
        run("tc", &full)
    }

    /// Runs `body` on a thread inside the namespace.
    fn within<T: Send + 'static>(
        &self,
        body: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let file = std::fs::File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            // SAFETY: setns for this thread only.
            assert_eq!(
                unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                0
            );
            body()
        })
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn mac_of(ns: &Ns, device: &str) -> [u8; 6] {
    let shown = ns.ip(&["link", "show", device]);
    let text = shown
        .split("link/ether ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("an Ethernet address");
    let bytes: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

/// The pod's namespace with `va` (10.88.0.2/24, MTU 1450, a route and a
/// static neighbour), its peer `vb` (10.88.0.1/24) in the other.
fn pod_and_peer() -> (Ns, Ns) {
    let (pod, peer) = (Ns::new("pod"), Ns::new("peer"));
    pod.ip(&[
        "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &peer.0,
    ]);
    pod.ip(&["link", "set", "va", "mtu", "1450", "up"]);
    pod.ip(&["addr", "add", "10.88.0.2/24", "dev", "va"]);
    pod.ip(&["route", "add", "10.99.0.0/16", "via", "10.88.0.1"]);
    pod.ip(&["-6", "addr", "add", "fd88::2/64", "dev", "va", "nodad"]);
    pod.ip(&[
        "-6",
        "route",
        "add",
        "fd99::/64",
        "via",
        "fd88::1",
        "metric",
        "300",
    ]);
    pod.ip(&[
        "neigh",
        "add",
        "10.88.0.9",
        "lladdr",
        "02:00:00:00:00:09",
        "dev",
        "va",
        "nud",
        "permanent",
    ]);
    peer.ip(&["link", "set", "vb", "mtu", "1450", "up"]);
    peer.ip(&["addr", "add", "10.88.0.1/24", "dev", "vb"]);
    (pod, peer)
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A vnet header (all zero, the tap's default 10 bytes: the VMM sets 12
/// for itself) and an Ethernet/IPv4/UDP frame carrying
/// `payload` from 10.88.0.2:4000 to 10.88.0.1:5000.
fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0u8; 10];
    frame.extend_from_slice(&dst_mac);
    frame.extend_from_slice(&src_mac);
    frame.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 88, 0, 2, 10, 88, 0, 1,
    ];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(&4000u16.to_be_bytes());
    frame.extend_from_slice(&5000u16.to_be_bytes());
    frame.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(&[0, 0]); // no UDP checksum (IPv4)
    frame.extend_from_slice(payload);
    frame
}

/// Reads frames from the tap until one holds `needle`, for up to 5 s.
fn tap_receives(tap: &OwnedFd, needle: &[u8]) -> bool {
    let mut buf = vec![0u8; 65536];
    for _ in 0..50 {
        let mut fds = [libc::pollfd {
            fd: tap.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) } != 1 {
            continue;
        }
        // SAFETY: reads into `buf`.
        let n = unsafe { libc::read(tap.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n > 0 && buf[..n as usize].windows(needle.len()).any(|w| w == needle) {
            return true;
        }
    }
    false
}

#[test]
fn each_interface_gets_a_tap_joined_both_ways_and_detach_removes_only_that() {
    if !is_root() {
        return;
    }
    let (pod, peer) = pod_and_peer();
    let va_mac = mac_of(&pod, "va");
    let vb_mac = mac_of(&peer, "vb");

    let network = attach(&pod.path()).unwrap();
    assert_eq!(network.interfaces.len(), 1, "{network:?}");
    let interface = &network.interfaces[0];
    assert_eq!(
        (
            interface.name.as_str(),
            interface.mac,
            interface.mtu,
            interface.tap.as_str()
        ),
        ("va", va_mac, 1450, "rvtap0")
    );
    let own = IpNet {
        address: "10.88.0.2".parse().unwrap(),
        prefix: 24,
    };
    assert!(interface.addresses.contains(&own), "{network:?}");
    let route_to = |destination: &str| {
        network
            .routes
            .iter()
            .find(|r| {
                r.destination
                    .as_ref()
                    .is_some_and(|d| d.address.to_string() == destination)
            })
            .unwrap_or_else(|| panic!("no route to {destination}: {network:?}"))
    };
    let via = route_to("10.99.0.0");
    assert_eq!(via.gateway, Some("10.88.0.1".parse().unwrap()));
    assert_eq!(via.device.as_deref(), Some("va"));
    let own6 = IpNet {
        address: "fd88::2".parse().unwrap(),
        prefix: 64,
    };
    assert!(interface.addresses.contains(&own6), "{network:?}");
    let via6 = route_to("fd99::");
    assert_eq!(
        (via6.gateway, via6.device.as_deref(), via6.metric),
        (Some("fd88::1".parse().unwrap()), Some("va"), Some(300))
    );
    assert!(
        network.routes.iter().any(|r| r.scope == 253),
        "no link route: {network:?}"
    );
    assert_eq!(
        network.neighbours,
        vec![Neighbour {
            address: "10.88.0.9".parse().unwrap(),
            mac: vec![2, 0, 0, 0, 0, 9],
            device: "va".into()
        }]
    );
    assert!(pod.ip(&["link", "show", "rvtap0"]).contains("mtu 1450"));
    let filters = pod.tc(&["filter", "show", "dev", "va", "ingress"]);
    assert!(
        filters.contains("mirred") && filters.contains("rvtap0"),
        "{filters}"
    );
    let filters = pod.tc(&["filter", "show", "dev", "rvtap0", "ingress"]);
    assert!(
        filters.contains("mirred") && filters.contains("va"),
        "{filters}"
    );

    // Tap to peer: a frame written into the tap leaves through va.
    let tap = open_tap(&pod.path(), "rvtap0").unwrap();
    let listener = peer.within(|| {
        let socket = UdpSocket::bind("10.88.0.1:5000").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    });
    let socket = listener.join().unwrap();
    let frame = udp_frame(va_mac, vb_mac, b"through the tap");
    // SAFETY: writes `frame`.
    let written = unsafe { libc::write(tap.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
    assert_eq!(
        written,
        frame.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
    let mut buf = [0u8; 64];
    let (n, from) = socket
        .recv_from(&mut buf)
        .expect("the peer received nothing");
    assert_eq!(&buf[..n], b"through the tap");
    assert_eq!(from.to_string(), "10.88.0.2:4000");

    // Peer to tap: what arrives on va comes out of the tap.
    peer.ip(&[
        "neigh",
        "add",
        "10.88.0.2",
        "lladdr",
        &pod.ip(&["link", "show", "va"])
            .split("link/ether ")
            .nth(1)
            .unwrap()[..17],
        "dev",
        "vb",
        "nud",
        "permanent",
    ]);
    peer.within(move || {
        socket
            .send_to(b"back through va", "10.88.0.2:6000")
            .unwrap()
    })
    .join()
    .unwrap();
    assert!(tap_receives(&tap, b"back through va"));
    drop(tap);

    // A caller's own filter on va must survive.
    pod.tc(&[
        "filter", "add", "dev", "va", "ingress", "prio", "7", "protocol", "ip", "u32", "match",
        "u32", "0", "0", "flowid", "1:1",
    ]);
    detach(&pod.path()).unwrap();
    assert!(pod.ip_fails(&["link", "show", "rvtap0"]));
    let filters = pod.tc(&["filter", "show", "dev", "va", "ingress"]);
    assert!(!filters.contains("mirred"), "{filters}");
    assert!(filters.contains("pref 7"), "{filters}");
    assert!(pod.ip(&["addr", "show", "va"]).contains("10.88.0.2/24"));
    // Once more, and again with nothing of ours left but an ingress qdisc
    // that is not ours either.
    detach(&pod.path()).unwrap();
    assert!(pod.tc(&["qdisc", "show", "dev", "va"]).contains("ingress"));
}

#[test]
fn detach_after_a_kill_removes_what_a_half_done_attach_left() {
    if !is_root() {
        return;
    }
    let (pod, _peer) = pod_and_peer();
    attach(&pod.path()).unwrap();
    // As if the runtime died here and a new attach came: one filter each.
    attach(&pod.path()).unwrap();
    let filters = pod.tc(&["filter", "show", "dev", "va", "ingress"]);
    assert_eq!(filters.matches("mirred").count(), 1, "{filters}");
    // Nothing remembered, all found by name.
    detach(&pod.path()).unwrap();
    assert!(pod.ip_fails(&["link", "show", "rvtap0"]));
    assert!(!pod.tc(&["qdisc", "show", "dev", "va"]).contains("ingress"));
    // Nothing of ours: a no-op.
    detach(&pod.path()).unwrap();
}

#[test]
fn a_namespace_that_is_gone_is_named_or_has_nothing_to_remove() {
    let missing = PathBuf::from("/run/netns/runvm-no-such-namespace");
    let error = attach(&missing).unwrap_err().to_string();
    assert!(error.contains("runvm-no-such-namespace"), "{error}");
    assert!(error.contains("cannot open it"), "{error}");
    detach(&missing).unwrap();
    let not_a_namespace = PathBuf::from("/proc/self/status");
    let error = attach(&not_a_namespace).unwrap_err().to_string();
    assert!(error.contains("cannot enter it"), "{error}");
}

#[test]
fn only_rvtap_and_a_number_is_ours() {
    assert!(tap::is_ours("rvtap0") && tap::is_ours("rvtap12"));
    assert!(!tap::is_ours("rvtap") && !tap::is_ours("rvtapx") && !tap::is_ours("eth0"));
}

#[test]
fn the_vmm_option_names_the_descriptor_mac_and_mtu() {
    let interface = Interface {
        name: "eth0".into(),
        mac: [0x0a, 0x58, 0x0a, 0x58, 0, 0x1f],
        mtu: 1450,
        addresses: Vec::new(),
        tap: "rvtap0".into(),
    };
    assert_eq!(
        interface.vmm_net_option(5),
        "fd=5,mac=0a:58:0a:58:00:1f,mtu=1450"
    );
}

fn spec_with(namespaces: serde_json::Value) -> oci_spec::runtime::Spec {
    serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "linux": {"namespaces": namespaces}
    }))
    .expect("a spec")
}

#[test]
fn the_network_namespace_of_config_json() {
    let host = spec_with(serde_json::json!([{"type": "pid"}, {"type": "mount"}]));
    assert_eq!(network_namespace(&host), NetworkNamespace::Host);
    let new = spec_with(serde_json::json!([{"type": "network"}]));
    assert_eq!(network_namespace(&new), NetworkNamespace::New);
    let cni = spec_with(serde_json::json!([{"type": "network", "path": "/run/netns/cni-1"}]));
    assert_eq!(
        network_namespace(&cni),
        NetworkNamespace::Path(PathBuf::from("/run/netns/cni-1"))
    );
    let no_linux: oci_spec::runtime::Spec =
        serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2"})).unwrap();
    assert_eq!(network_namespace(&no_linux), NetworkNamespace::Host);
}

#[test]
fn the_guest_is_told_the_interfaces_routes_and_neighbours_but_no_link_local() {
    let net = |text: &str, prefix| IpNet {
        address: text.parse().unwrap(),
        prefix,
    };
    let pod = PodNetwork {
        interfaces: vec![Interface {
            name: "eth0".into(),
            mac: [2, 0, 0, 0, 0, 2],
            mtu: 1450,
            addresses: vec![net("10.88.0.2", 16), net("fe80::2", 64), net("fd00::2", 64)],
            tap: "rvtap0".into(),
        }],
        routes: vec![
            Route {
                destination: None,
                gateway: Some("10.88.0.1".parse().unwrap()),
                device: Some("eth0".into()),
                source: None,
                scope: 0,
                metric: None,
            },
            Route {
                destination: Some(net("fe80::", 64)),
                gateway: None,
                device: Some("eth0".into()),
                source: None,
                scope: 253,
                metric: None,
            },
            Route {
                destination: Some(net("fd00::", 64)),
                gateway: None,
                device: Some("eth0".into()),
                source: None,
                scope: 0,
                metric: Some(256),
            },
            Route {
                destination: Some(net("10.99.0.0", 16)),
                gateway: None,
                device: None,
                source: None,
                scope: 253,
                metric: None,
            },
        ],
        neighbours: vec![
            Neighbour {
                address: "10.88.0.9".parse().unwrap(),
                mac: vec![2, 0, 0, 0, 0, 9],
                device: "eth0".into(),
            },
            Neighbour {
                address: "10.88.0.10".parse().unwrap(),
                mac: vec![1, 2, 3],
                device: "eth0".into(),
            },
        ],
    };
    let guest = pod.for_guest();
    assert_eq!(runvm_agent_api::network::validate(&guest), Ok(()));
    assert_eq!(guest.interfaces.len(), 1);
    assert_eq!(
        guest.interfaces[0].addresses,
        vec![net("10.88.0.2", 16), net("fd00::2", 64)]
    );
    assert_eq!(guest.interfaces[0].mac, [2, 0, 0, 0, 0, 2]);
    assert_eq!(guest.routes.len(), 2);
    assert_eq!(guest.routes[0].gateway, Some("10.88.0.1".parse().unwrap()));
    // The IPv6 prefix route keeps its metric, so the guest recognises the
    // one its kernel made from the address.
    assert_eq!(guest.routes[1].destination, Some(net("fd00::", 64)));
    assert_eq!(guest.routes[1].metric, Some(256));
    assert_eq!(guest.neighbours.len(), 1);
}
