//! The vsock device against a hostile guest, through its real queues in
//! guest memory and its real thread. Linux's driver always refills RX, so
//! a booted guest cannot play these games without a custom kernel module;
//! driving the rings directly is the faithful way to test them.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::connection::MAX_OWED;
use super::control::MAX_LOOSE;
use super::device::Vsock;
use super::dial::tests::stuck_listener;
use super::muxer::tests::{from_guest, TestDir, CID};
use super::muxer::{Muxer, MAX_GUEST_CONNECTIONS};
use super::packet::*;
use crate::devices::virtio::{ActiveQueue, Interrupt, VirtioDevice};
use crate::memory::{create_guest_memory, GuestMemory};

const TX_SIZE: u16 = 256;
/// Where each queue's rings live: (descriptors, available, used).
const RINGS: [(u64, u64, u64); 3] = [
    (0x10_0000, 0x11_0000, 0x12_0000),
    (0x20_0000, 0x21_0000, 0x22_0000),
    (0x30_0000, 0x31_0000, 0x32_0000),
];
/// TX packet headers, one 64-byte slot per descriptor.
const PACKETS: u64 = 0x40_0000;

/// The tests read the CPU time of "vsock" threads: one device at a time.
static ONE_DEVICE: Mutex<()> = Mutex::new(());

struct Guest {
    mem: GuestMemory,
    tx_notify: EventFd,
    tx_avail: u16,
    /// Kept so the device's notifications have somewhere to go.
    _rx_notify: EventFd,
}

fn queue(mem: &GuestMemory, which: usize, size: u16) -> Queue {
    let (desc, avail, used) = RINGS[which];
    let mut queue = Queue::new(256).unwrap();
    queue.set_size(size);
    queue.set_desc_table_address(Some(desc as u32), Some(0));
    queue.set_avail_ring_address(Some(avail as u32), Some(0));
    queue.set_used_ring_address(Some(used as u32), Some(0));
    queue.set_ready(true);
    assert!(queue.is_valid(mem));
    queue
}

/// A device whose driver posted no RX buffer at all, and that guest.
fn start(path: &Path) -> (Vsock, Guest) {
    let mem = create_guest_memory(64 << 20).unwrap();
    let notify = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let (rx_notify, tx_notify) = (notify(), notify());
    let queues = vec![
        ActiveQueue {
            queue: queue(&mem, 0, 16),
            notify: rx_notify.try_clone().unwrap(),
        },
        ActiveQueue {
            queue: queue(&mem, 1, TX_SIZE),
            notify: tx_notify.try_clone().unwrap(),
        },
        ActiveQueue {
            queue: queue(&mem, 2, 16),
            notify: notify(),
        },
    ];
    let mut device = Vsock::new(CID, Muxer::bind(CID, path).unwrap());
    let interrupt = Arc::new(Interrupt::new(notify()));
    device
        .activate(mem.clone(), 1 << 32, queues, interrupt)
        .unwrap();
    let guest = Guest {
        mem,
        tx_notify,
        tx_avail: 0,
        _rx_notify: rx_notify,
    };
    (device, guest)
}

impl Guest {
    /// Posts `packets` on TX (at most one ring's worth) and waits until the
    /// device has taken them all; false if it did not within 5 s.
    fn send(&mut self, packets: &[PacketHeader]) -> bool {
        assert!(packets.len() <= TX_SIZE as usize);
        let (desc, avail, used) = RINGS[1];
        for header in packets {
            let slot = self.tx_avail % TX_SIZE;
            let at = PACKETS + u64::from(slot) * 64;
            self.mem.write_obj(*header, GuestAddress(at)).unwrap();
            let descriptor = Descriptor::new(at, HEADER_SIZE as u32, 0, 0);
            self.mem
                .write_obj(descriptor, GuestAddress(desc + u64::from(slot) * 16))
                .unwrap();
            self.mem
                .write_obj(slot, GuestAddress(avail + 4 + 2 * u64::from(slot)))
                .unwrap();
            self.tx_avail = self.tx_avail.wrapping_add(1);
        }
        self.mem
            .write_obj(self.tx_avail, GuestAddress(avail + 2))
            .unwrap();
        self.tx_notify.write(1).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.mem.read_obj::<u16>(GuestAddress(used + 2)).unwrap() != self.tx_avail {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

/// Fails the test without joining a device thread that may be stuck.
fn give_up(device: Vsock, why: &str) -> ! {
    std::mem::forget(device);
    panic!("{why}");
}

/// Stops the device and returns what its muxer holds:
/// (connections, control packets queued for the guest).
fn stop(mut device: Vsock) -> (usize, usize) {
    assert!(device.reset());
    let muxer = device.idle_muxer().unwrap();
    (muxer.connection_count(), muxer.queued_control_packets())
}

/// CPU time (user + system, in clock ticks) of this process's "vsock"
/// threads.
fn vsock_thread_ticks() -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim_end() != "vsock" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the ")" closing the name: utime and stime are the
        // 12th and 13th.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks
}

#[test]
fn a_flood_without_rx_buffers_stays_within_the_caps() {
    let _one = ONE_DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TestDir::new("flood");
    let _listener = UnixListener::bind(dir.port_path(77)).unwrap();
    let (device, mut guest) = start(&dir.0.join("v.sock"));

    // One live connection, then credit requests on it, many times over.
    let mut ok = guest.send(&[from_guest(OP_REQUEST, 5000, 77)]);
    for _ in 0..4 {
        ok &= guest.send(&vec![from_guest(OP_CREDIT_REQUEST, 5000, 77); 256]);
    }
    // Requests to ports nobody serves: each earns an RST.
    for round in 0..8u32 {
        let requests: Vec<PacketHeader> = (0..256)
            .map(|i| from_guest(OP_REQUEST, 10_000 + round * 256 + i, 9))
            .collect();
        ok &= guest.send(&requests);
    }
    if !ok {
        give_up(device, "the device stopped taking TX packets");
    }
    let (connections, queued) = stop(device);
    assert_eq!(connections, 1);
    assert!(
        queued <= MAX_LOOSE + MAX_OWED,
        "{queued} control packets queued for a guest that reads none"
    );
    assert!(queued >= MAX_LOOSE, "the RSTs that fit are kept: {queued}");
}

#[test]
fn a_host_listener_that_never_accepts_does_not_stall_the_device() {
    let _one = ONE_DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TestDir::new("stuck");
    let _stuck = stuck_listener(&dir.port_path(78));
    let (device, mut guest) = start(&dir.0.join("v.sock"));
    let requests: Vec<PacketHeader> = (0..32)
        .map(|i| from_guest(OP_REQUEST, 6000 + i, 78))
        .collect();
    if !guest.send(&requests) {
        give_up(device, "a connect to a listener that never accepts blocked");
    }
    let (connections, _) = stop(device);
    assert!(
        (1..MAX_GUEST_CONNECTIONS).contains(&connections),
        "the backlog took some and the rest were refused: {connections}"
    );
}

#[test]
fn a_host_socket_that_hangs_up_does_not_make_the_device_spin() {
    let _one = ONE_DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TestDir::new("hangup");
    let listener = UnixListener::bind(dir.port_path(79)).unwrap();
    let (device, mut guest) = start(&dir.0.join("v.sock"));
    if !guest.send(&[from_guest(OP_REQUEST, 7000, 79)]) {
        give_up(device, "the device did not take the request");
    }
    // The host program accepts, then goes away; the guest, with no RX
    // buffer, cannot be told yet.
    drop(listener.accept().unwrap());
    std::thread::sleep(Duration::from_millis(100));
    let before = vsock_thread_ticks();
    std::thread::sleep(Duration::from_millis(1000));
    let spent = vsock_thread_ticks() - before;
    // A tick is 10 ms; a spinning thread would use about 100 of them.
    assert!(
        spent <= 10,
        "the vsock thread used {spent} ticks while idle"
    );
    let (connections, _) = stop(device);
    assert_eq!(connections, 1, "still waiting to tell the guest");
}
