//! virtio-net end to end: a VM whose interface is a tap in a network
//! namespace the test creates (never the host's interfaces) exchanges
//! traffic with that namespace both ways: ping, and a TCP transfer in
//! each direction through busybox `nc` in the guest. The runtime's
//! network module carries a CNI-style pod namespace into a guest, and
//! (`pod_namespace`) a container made through the runc command line
//! wears that namespace's `eth0`.

mod common;
#[path = "common/harness.rs"]
mod harness;
#[path = "network/pod_namespace.rs"]
mod pod_namespace;
#[path = "common/runtime_cli.rs"]
mod runtime_cli;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{kernel, runvm_binary, tools_image, vmm_binary, wait_with_timeout, BOOT_TIMEOUT};

const HOST_IP: &str = "10.77.0.1";
const GUEST_IP: &str = "10.77.0.2";
const GUEST_MAC: &str = "02:00:0a:4d:00:02";
const SECOND_MAC: &str = "02:00:0a:4d:01:02";
const TAP: &str = "rvtap0";
/// Bytes sent each way over TCP: on a host that emulates guest-kernel
/// code the guest's TCP stack moves ~40-100 KiB/s, whatever the device.
const TRANSFER: usize = 256 << 10;

/// One VM at a time, even within this test binary.
static ONE_VM: Mutex<()> = Mutex::new(());

fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace of the test's, deleted with everything in it.
struct NetNs {
    name: String,
}

impl NetNs {
    fn new() -> NetNs {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "rvnet-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `body` on a thread inside the namespace.
    fn spawn<T: Send + 'static>(&self, body: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let ns = std::fs::File::open(self.path()).expect("open the namespace");
        std::thread::spawn(move || {
            // SAFETY: setns on a namespace descriptor, for this thread only
            // (a network namespace is per thread until it forks).
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            body()
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A tap with the host's address, in `ns`, for the VMM to attach to.
fn tap_in(ns: &NetNs) {
    ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap", "vnet_hdr"]);
    ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", TAP]);
    ns.ip(&["link", "set", TAP, "up"]);
}

/// A VMM that runs in `ns` with `net` as its `--net` option: a wrapper
/// `runvm vm-run --vmm` starts.
fn vmm_in(ns: &NetNs, dir: &Path, net: &str) -> PathBuf {
    let wrapper = dir.join("vmm-in-netns");
    let script = format!(
        "#!/bin/sh\nexec ip netns exec {} {} \"$@\" --net {net}\n",
        ns.name,
        vmm_binary().display()
    );
    std::fs::write(&wrapper, script).expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    wrapper
}

struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "runvm-network-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn vm_run(vmm: &Path, script: &str) -> Output {
    let mut child = Command::new(runvm_binary())
        .arg("vm-run")
        .arg("--vmm")
        .arg(vmm)
        .arg("--kernel")
        .arg(kernel())
        .arg("--image")
        .arg(tools_image())
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start runvm vm-run");
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let stdout = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
    let stderr = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let status = wait_with_timeout(&mut child, BOOT_TIMEOUT);
    Output {
        status,
        stdout: stdout.join().unwrap_or_default().into_bytes(),
        stderr: stderr.join().unwrap_or_default().into_bytes(),
    }
}

/// What the host side of the transfer saw.
#[derive(Debug)]
struct Transfer {
    received: usize,
    guest_to_host: Duration,
    host_to_guest: Duration,
}

/// Accepts one connection: reads [`TRANSFER`] bytes, sends as many back,
/// and waits for the guest to close.
fn serve(listener: TcpListener) -> Result<Transfer, String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + BOOT_TIMEOUT;
    let mut stream: TcpStream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err("the guest never connected".into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    stream.set_nonblocking(false).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0;
    let start = Instant::now();
    while received < TRANSFER {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) => return Err(format!("after {received} bytes: {e}")),
        }
    }
    let guest_to_host = start.elapsed();
    let start = Instant::now();
    let pattern: Vec<u8> = (0..TRANSFER).map(|i| (i % 251) as u8).collect();
    stream.write_all(&pattern).map_err(|e| e.to_string())?;
    stream
        .shutdown(std::net::Shutdown::Write)
        .map_err(|e| e.to_string())?;
    // The guest closes once it has read everything.
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
    }
    Ok(Transfer {
        received,
        guest_to_host,
        host_to_guest: start.elapsed(),
    })
}

/// Accepts one TCP connection at `address` in `ns` (within the time a
/// boot takes) and returns what it sent.
fn receive_one(ns: &NetNs, address: SocketAddr) -> JoinHandle<Result<String, String>> {
    ns.spawn(move || {
        let listener = TcpListener::bind(address).map_err(|e| e.to_string())?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(format!("the guest never connected: {e}")),
            }
        };
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        Ok(text)
    })
}

fn require_root_and_kvm() {
    common::require_kvm();
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "network namespaces and taps need root"
    );
}

#[test]
fn a_guest_on_a_tap_exchanges_traffic_with_its_namespace_both_ways() {
    require_root_and_kvm();
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new();
    let ns = NetNs::new();
    tap_in(&ns);
    // A second interface, to show several per VM: the guest's eth1.
    ns.ip(&["tuntap", "add", "dev", "rvtap1", "mode", "tap", "vnet_hdr"]);
    let vmm = vmm_in(
        &ns,
        &scratch.0,
        &format!(
            "tap={TAP},mac={GUEST_MAC},mtu=1400 --net tap=rvtap1,mac={SECOND_MAC},offload=off"
        ),
    );
    let address: SocketAddr = format!("{HOST_IP}:7001").parse().unwrap();
    let server = ns.spawn(move || {
        let listener = TcpListener::bind(address).map_err(|e| e.to_string())?;
        serve(listener)
    });
    let script = format!(
        "ip link set eth0 up && ip addr add {GUEST_IP}/24 dev eth0 && ip link show eth0 && \
         ip link show eth1 && \
         ping -c 3 -W 10 {HOST_IP} && \
         dd if=/dev/zero bs=65536 count={} 2>/dev/null | nc {HOST_IP} 7001 | wc -c",
        TRANSFER / 65536
    );
    let output = vm_run(&vmm, &script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(output.status.success(), "{:?}\n{context}", output.status);
    assert!(
        stdout.contains(&format!("link/ether {GUEST_MAC}")),
        "{context}"
    );
    assert!(stdout.contains("mtu 1400"), "{context}");
    assert!(
        stdout.contains(&format!("link/ether {SECOND_MAC}")),
        "{context}"
    );
    assert!(stdout.contains("3 packets received"), "{context}");
    let transfer = server.join().expect("server thread").expect("host side");
    assert_eq!(transfer.received, TRANSFER, "{context}");
    let echoed: usize = stdout
        .lines()
        .last()
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or(0);
    assert_eq!(echoed, TRANSFER, "{context}");
    let mib_s = |d: Duration| TRANSFER as f64 / (1 << 20) as f64 / d.as_secs_f64();
    eprintln!(
        "guest->host {:.1} MiB/s, host->guest {:.1} MiB/s ({transfer:?})",
        mib_s(transfer.guest_to_host),
        mib_s(transfer.host_to_guest)
    );
}

#[test]
fn a_descriptor_that_is_no_tap_fails_the_vmm_with_its_name() {
    require_root_and_kvm();
    let output = Command::new(vmm_binary())
        .arg("--kernel")
        .arg(kernel())
        .arg("--root-disk")
        .arg(tools_image())
        .args(["--net", "fd=0"])
        .output()
        .expect("run runvm-vmm");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("fd 0 is not a tap descriptor"), "{stderr}");
    // An open descriptor that is a file, not a tap.
    let mut command = Command::new(vmm_binary());
    command
        .arg("--kernel")
        .arg(kernel())
        .arg("--root-disk")
        .arg(tools_image())
        .args(["--net", "fd=3"]);
    let file = std::fs::File::open(kernel()).expect("open the kernel");
    let raw = file.as_raw_fd();
    // SAFETY: dup2 onto descriptor 3 in the child before exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().expect("run runvm-vmm");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("network interface fd=3: not an attached tap"),
        "{stderr}"
    );
}

/// The whole host datapath: the runtime's network module makes the tap
/// and the TC redirection in a CNI-style pod namespace (a veth whose
/// peer is in another namespace), the VMM attaches to that tap, and the
/// guest, wearing the pod's MAC, MTU and address, reaches the peer
/// through virtio-net, the tap, TC and the veth; teardown leaves nothing
/// of runvm's. (The VMM attaches by name in the pod's namespace: `runvm`
/// marks every descriptor it inherits close-on-exec, so a tap descriptor
/// cannot be handed through `runvm vm-run`; the runtime will open it
/// itself for `--net fd=N`.)
#[test]
fn the_runtimes_tap_and_tc_carry_a_pod_namespace_into_the_guest() {
    require_root_and_kvm();
    let _one = ONE_VM.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new();
    let (pod, peer) = (NetNs::new(), NetNs::new());
    pod.ip(&[
        "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &peer.name,
    ]);
    pod.ip(&["link", "set", "va", "mtu", "1420", "up"]);
    pod.ip(&["addr", "add", "10.88.0.2/24", "dev", "va"]);
    peer.ip(&["link", "set", "vb", "mtu", "1420", "up"]);
    peer.ip(&["addr", "add", "10.88.0.1/24", "dev", "vb"]);

    let network = runvm::network::attach(&pod.path()).expect("attach");
    let interface = network.interfaces.first().expect("one interface");
    let mac = interface
        .mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let wrapper = vmm_in(
        &pod,
        &scratch.0,
        &format!("tap={},mac={mac},mtu={}", interface.tap, interface.mtu),
    );

    let server = receive_one(&peer, "10.88.0.1:7002".parse().unwrap());
    // IPv6 stays off in a guest whose network has none (it costs boot
    // time); the pod_namespace scenario has a guest with it on.
    let script = "{ test -e /proc/net/if_inet6 && echo IPV6-ON || echo IPV6-OFF; } && \
                  ip link set eth0 up && ip addr add 10.88.0.2/24 dev eth0 && ip link show eth0 && \
                  ping -c 2 -W 10 10.88.0.1 && echo hello-from-the-pod | nc 10.88.0.1 7002";
    let output = vm_run(&wrapper, script);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(output.status.success(), "{:?}\n{context}", output.status);
    assert!(stdout.contains(&format!("link/ether {mac}")), "{context}");
    assert!(stdout.contains("mtu 1420"), "{context}");
    assert!(stdout.contains("IPV6-OFF"), "{context}");
    assert!(stdout.contains("2 packets received"), "{context}");
    let received = server.join().expect("peer thread").expect("peer side");
    assert_eq!(received, "hello-from-the-pod\n", "{context}");

    runvm::network::detach(&pod.path()).expect("detach");
    let links = Command::new("ip")
        .args(["-n", &pod.name, "link", "show"])
        .output()
        .expect("ip link");
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("rvtap"), "{links}");
    assert!(links.contains("va@"), "{links}");
}
