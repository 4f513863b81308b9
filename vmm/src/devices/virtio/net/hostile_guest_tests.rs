//! The net device through its real queues in guest memory and its real
//! thread, against a seqpacket "wire" standing in for the tap: frames go
//! both ways, and a hostile driver's chains (addresses outside memory,
//! overlong or looping chains, wrong directions, offloads it never got)
//! are consumed without harm while good frames keep flowing.

use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::backend::tests::{pair, PairBackend};
use super::device::{Net, NetOptions};
use super::frames::MAX_FRAME;
use super::header::{FLAG_NEEDS_CSUM, GSO_TCPV4, HEADER_LEN, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use super::*;
use crate::devices::virtio::{ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::memory::{create_guest_memory, GuestMemory};

const RX: usize = 0;
const TX: usize = 1;
/// (descriptors, available, used) of RX and TX.
const RINGS: [(u64, u64, u64); 2] = [
    (0x10_0000, 0x11_0000, 0x12_0000),
    (0x20_0000, 0x21_0000, 0x22_0000),
];
const SIZE: u16 = 64;
/// Frame buffers: 128 KiB apiece, from here up.
const BUFFERS: u64 = 0x100_0000;
const MEMORY: u64 = 64 << 20;
const NEXT: u16 = 1;
const WRITE: u16 = 2;

/// The tests read the CPU time of "virtio-net" threads: one at a time.
static ONE_DEVICE: Mutex<()> = Mutex::new(());

struct Guest {
    _one: MutexGuard<'static, ()>,
    mem: GuestMemory,
    notify: [EventFd; 2],
    avail: [u16; 2],
    irq: Arc<Interrupt>,
}

fn live_queue(mem: &GuestMemory, which: usize) -> Queue {
    crate::devices::virtio::test_queue(mem, RINGS[which], QUEUE_SIZE, SIZE)
}

fn start_with(options: NetOptions, features: u64) -> (Net<PairBackend>, Guest, UnixDatagram) {
    let (backend, wire) = pair();
    start_on(backend, options, features, wire)
}

fn start_on(
    backend: PairBackend,
    options: NetOptions,
    features: u64,
    wire: UnixDatagram,
) -> (Net<PairBackend>, Guest, UnixDatagram) {
    let one = ONE_DEVICE.lock().unwrap_or_else(|e| e.into_inner());
    let mem = create_guest_memory(MEMORY).unwrap();
    let eventfd = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let notify = [eventfd(), eventfd()];
    let queues = (0..2)
        .map(|q| ActiveQueue {
            queue: live_queue(&mem, q),
            notify: notify[q].try_clone().unwrap(),
        })
        .collect();
    let irq = Arc::new(Interrupt::new(eventfd()));
    let mut net = Net::new(backend, options);
    assert_eq!(net.features() & features, features, "features not offered");
    net.activate(mem.clone(), features, queues, irq.clone())
        .unwrap();
    let guest = Guest {
        _one: one,
        mem,
        notify,
        avail: [0, 0],
        irq,
    };
    (net, guest, wire)
}

/// With EVENT_IDX, as a Linux driver negotiates it.
fn start() -> (Net<PairBackend>, Guest, UnixDatagram) {
    start_with(
        NetOptions::default(),
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
    )
}

impl Guest {
    fn desc(&self, queue: usize, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(RINGS[queue].0 + u64::from(index) * 16);
        self.mem
            .write_obj(Descriptor::new(addr, len, flags, next), at)
            .unwrap();
    }

    /// Makes chain `head` available and kicks.
    fn post(&mut self, queue: usize, head: u16) {
        let avail = RINGS[queue].1;
        let slot = u64::from(self.avail[queue] % SIZE);
        self.mem
            .write_obj(head, GuestAddress(avail + 4 + 2 * slot))
            .unwrap();
        self.avail[queue] = self.avail[queue].wrapping_add(1);
        self.mem
            .write_obj(self.avail[queue], GuestAddress(avail + 2))
            .unwrap();
        self.notify[queue].write(1).unwrap();
    }

    fn used_idx(&self, queue: usize) -> u16 {
        self.mem.read_obj(GuestAddress(RINGS[queue].2 + 2)).unwrap()
    }

    /// The used entry in `slot`: (head, length).
    fn used(&self, queue: usize, slot: u16) -> (u32, u32) {
        let at = RINGS[queue].2 + 4 + 8 * u64::from(slot % SIZE);
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    fn wait_used(&self, queue: usize, count: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.used_idx(queue) < count {
            assert!(
                Instant::now() < deadline,
                "queue {queue}: {} of {count} chains used",
                self.used_idx(queue)
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// A one-descriptor TX chain at descriptor `index` holding `frame`.
    fn send(&mut self, index: u16, frame: &[u8]) {
        let addr = BUFFERS + u64::from(index) * 0x2_0000;
        self.mem.write_slice(frame, GuestAddress(addr)).unwrap();
        self.desc(TX, index, addr, frame.len() as u32, 0, 0);
        self.post(TX, index);
    }

    /// A one-descriptor RX buffer of `len` bytes at descriptor `index`.
    fn give_rx(&mut self, index: u16, len: u32) -> u64 {
        let addr = BUFFERS + 0x80_0000 + u64::from(index) * 0x2_0000;
        self.desc(RX, index, addr, len, WRITE, 0);
        self.post(RX, index);
        addr
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        self.mem.read_slice(&mut data, GuestAddress(addr)).unwrap();
        data
    }
}

/// A frame with a plain header and an Ethernet payload marked `tag`.
fn frame(tag: u8, len: usize) -> Vec<u8> {
    let mut frame = vec![0u8; len];
    for (i, byte) in frame.iter_mut().enumerate().skip(HEADER_LEN) {
        *byte = tag ^ (i as u8);
    }
    frame
}

fn next_on_wire(wire: &UnixDatagram) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME + 16];
    let len = wire.recv(&mut buf).expect("no frame on the wire");
    buf.truncate(len);
    buf
}

fn wire_is_quiet(wire: &UnixDatagram) -> bool {
    wire.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 16];
    let quiet = wire.recv(&mut buf).is_err();
    wire.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    quiet
}

#[test]
fn a_frame_split_over_descriptors_goes_out_whole() {
    let (mut net, mut guest, wire) = start();
    let sent = frame(1, 1514);
    guest
        .mem
        .write_slice(&sent[..HEADER_LEN], GuestAddress(BUFFERS))
        .unwrap();
    guest
        .mem
        .write_slice(&sent[HEADER_LEN..], GuestAddress(BUFFERS + 0x1000))
        .unwrap();
    guest.desc(TX, 0, BUFFERS, HEADER_LEN as u32, NEXT, 1);
    guest.desc(
        TX,
        1,
        BUFFERS + 0x1000,
        (sent.len() - HEADER_LEN) as u32,
        0,
        0,
    );
    guest.post(TX, 0);
    assert_eq!(next_on_wire(&wire), sent);
    guest.wait_used(TX, 1);
    assert_eq!(guest.used(TX, 0), (0, 0));
    assert_eq!(guest.irq.irqfd().read().unwrap(), 1);
    // EVENT_IDX: the device asks for a kick at the next chain.
    let avail_event: u16 = guest
        .mem
        .read_obj(GuestAddress(RINGS[TX].2 + 4 + 8 * u64::from(SIZE)))
        .unwrap();
    assert_eq!(avail_event, 1);
    assert!(net.reset());
    assert_eq!(net.idle_frames().unwrap().counters.tx_frames, 1);
}

#[test]
fn a_frame_from_the_wire_fills_a_guest_buffer() {
    let (mut net, mut guest, wire) = start();
    let addr = guest.give_rx(0, 2048);
    let mut sent = frame(2, 600);
    sent[10] = 9; // num_buffers as the tap leaves it: whatever was there
    wire.send(&sent).unwrap();
    guest.wait_used(RX, 1);
    assert_eq!(guest.used(RX, 0), (0, 600));
    let got = guest.read(addr, 600);
    assert_eq!(&got[10..12], &[1, 0], "num_buffers");
    assert_eq!(&got[12..], &sent[12..]);
    assert!(net.reset());
}

#[test]
fn frames_wait_for_guest_buffers_one_at_a_time_and_none_is_lost() {
    let (mut net, mut guest, wire) = start();
    for tag in 0..5 {
        wire.send(&frame(tag, 100)).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(guest.used_idx(RX), 0);
    let addrs: Vec<u64> = (0..5).map(|i| guest.give_rx(i, 2048)).collect();
    guest.wait_used(RX, 5);
    for (tag, addr) in addrs.into_iter().enumerate() {
        assert_eq!(
            guest.read(addr + 12, 88),
            frame(tag as u8, 100)[12..].to_vec()
        );
    }
    assert!(net.reset());
    let counters = net.idle_frames().unwrap().counters;
    assert_eq!((counters.rx_frames, counters.rx_dropped), (5, 0));
}

#[test]
fn hostile_tx_chains_are_consumed_and_good_frames_still_go() {
    let (mut net, mut guest, wire) = start();
    // Outside guest memory.
    guest.desc(TX, 0, MEMORY - 16, 1514, 0, 0);
    guest.post(TX, 0);
    // Longer than any frame, through several descriptors.
    for i in 1..4 {
        guest.desc(TX, i, BUFFERS, 0x8000, NEXT, i + 1);
    }
    guest.desc(TX, 4, BUFFERS, 0x8000, 0, 0);
    guest.post(TX, 1);
    // A loop: the chain ends when the queue size is exhausted.
    guest.desc(TX, 5, BUFFERS, 64, NEXT, 5);
    guest.post(TX, 5);
    // Too short for an Ethernet header.
    guest.send(6, &frame(0, HEADER_LEN + 10));
    // Device-writable only: no frame to read.
    guest.desc(TX, 7, BUFFERS, 1514, WRITE, 0);
    guest.post(TX, 7);
    // TSO the device never agreed to.
    let mut tso = frame(0, 1514);
    tso[0] = FLAG_NEEDS_CSUM;
    tso[1] = GSO_TCPV4;
    guest.send(8, &tso);
    // Past the end of the descriptor table.
    guest.desc(TX, 9, BUFFERS, 64, NEXT, SIZE + 3);
    guest.post(TX, 9);
    // A length whose end wraps round the address space.
    guest.desc(TX, 10, u64::MAX - 100, 1514, 0, 0);
    guest.post(TX, 10);
    let good = frame(7, 1000);
    guest.send(11, &good);
    assert_eq!(next_on_wire(&wire), good);
    assert!(wire_is_quiet(&wire));
    guest.wait_used(TX, 9);
    assert!(net.reset());
    let counters = net.idle_frames().unwrap().counters;
    assert_eq!((counters.tx_frames, counters.tx_dropped), (1, 8));
}

#[test]
fn hostile_rx_buffers_are_returned_empty_and_the_frame_waits() {
    let (mut net, mut guest, wire) = start();
    // Outside memory; device-readable; too small for any frame.
    guest.desc(RX, 0, MEMORY - 16, 2048, WRITE, 0);
    guest.post(RX, 0);
    guest.desc(RX, 1, BUFFERS, 2048, 0, 0);
    guest.post(RX, 1);
    guest.give_rx(2, 8);
    let addr = guest.give_rx(3, 2048);
    let sent = frame(3, 300);
    wire.send(&sent).unwrap();
    guest.wait_used(RX, 4);
    for slot in 0..3 {
        assert_eq!(guest.used(RX, slot).1, 0, "slot {slot}");
    }
    assert_eq!(guest.used(RX, 3), (3, 300));
    assert_eq!(guest.read(addr + 12, 288), sent[12..].to_vec());
    assert!(net.reset());
}

#[test]
fn a_frame_too_big_for_the_buffer_is_dropped_and_the_buffer_kept() {
    let (mut net, mut guest, wire) = start();
    let addr = guest.give_rx(0, 1526);
    wire.send(&frame(1, 9000)).unwrap();
    let small = frame(2, 1500);
    wire.send(&small).unwrap();
    guest.wait_used(RX, 1);
    assert_eq!(guest.used(RX, 0), (0, 1500));
    assert_eq!(guest.read(addr + 12, 1488), small[12..].to_vec());
    assert!(net.reset());
    let counters = net.idle_frames().unwrap().counters;
    assert_eq!((counters.rx_frames, counters.rx_dropped), (1, 1));
}

#[test]
fn a_full_backend_holds_tx_back_without_losing_frames() {
    let (mut net, mut guest, wire) = start();
    // More than a socket buffer's worth: the device must wait for room.
    let count = (SIZE - 4) as usize;
    for i in 0..count {
        guest.send(i as u16, &frame(i as u8, 16 * 1024));
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        guest.used_idx(TX) < count as u16,
        "the wire took everything"
    );
    for i in 0..count {
        assert_eq!(next_on_wire(&wire), frame(i as u8, 16 * 1024), "frame {i}");
    }
    guest.wait_used(TX, count as u16);
    assert!(net.reset());
    assert_eq!(net.idle_frames().unwrap().counters.tx_dropped, 0);
}

#[test]
fn negotiated_offloads_reach_the_backend_and_pass_through() {
    let (backend, wire) = pair();
    let offloads = backend.offloads.clone();
    let options = NetOptions {
        offloads: true,
        ..NetOptions::default()
    };
    let accepted = VIRTIO_F_VERSION_1 | OFFLOADS & !VIRTIO_NET_F_GUEST_TSO6;
    let (mut net, mut guest, wire) = start_on(backend, options, accepted, wire);
    let mut tso = frame(4, 30000);
    tso[0] = FLAG_NEEDS_CSUM;
    tso[1] = GSO_TCPV4;
    guest.send(0, &tso);
    assert_eq!(next_on_wire(&wire), tso);
    assert_eq!(offloads.load(Ordering::Acquire), TUN_F_CSUM | TUN_F_TSO4);
    assert_ne!(offloads.load(Ordering::Acquire) & TUN_F_TSO6, TUN_F_TSO6);
    assert!(net.reset());
}

#[test]
fn mac_mtu_and_offloads_are_offered_only_when_given() {
    let (backend, _wire) = pair();
    let bare = Net::new(backend, NetOptions::default());
    assert_eq!(bare.device_type(), 1);
    assert_eq!(
        bare.features(),
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    );
    let (backend, _wire) = pair();
    let options = NetOptions {
        mac: Some([2, 0, 0, 0, 0, 9]),
        mtu: Some(1400),
        offloads: true,
    };
    let full = Net::new(backend, options);
    let features = full.features();
    assert_eq!(
        features & (VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU | OFFLOADS),
        VIRTIO_NET_F_MAC | VIRTIO_NET_F_MTU | OFFLOADS
    );
    let mut mac = [0u8; 6];
    full.read_config(0, &mut mac);
    assert_eq!(mac, [2, 0, 0, 0, 0, 9]);
    let mut mtu = [0u8; 2];
    full.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 1400);
}

#[test]
fn a_reset_device_can_be_activated_again() {
    let (mut net, mut guest, wire) = start();
    assert!(net.reset());
    let queues = (0..2)
        .map(|q| ActiveQueue {
            queue: live_queue(&guest.mem, q),
            notify: guest.notify[q].try_clone().unwrap(),
        })
        .collect();
    // Fresh rings, as a driver sets up after a reset.
    for (desc, avail, used) in RINGS {
        for at in [desc, avail, used] {
            guest
                .mem
                .write_slice(&[0u8; 0x1000], GuestAddress(at))
                .unwrap();
        }
    }
    guest.avail = [0, 0];
    net.activate(
        guest.mem.clone(),
        VIRTIO_F_VERSION_1,
        queues,
        guest.irq.clone(),
    )
    .unwrap();
    let sent = frame(5, 200);
    guest.send(0, &sent);
    assert_eq!(next_on_wire(&wire), sent);
    assert!(net.reset());
}

/// CPU time (clock ticks) of this process's "virtio-net" threads.
fn net_thread_ticks() -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        if !stat.contains("(virtio-net)") {
            continue;
        }
        // utime and stime: fields 14 and 15, counted after the comm.
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        ticks += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    ticks
}

#[test]
fn a_backend_that_fails_is_left_alone_not_spun_on() {
    let (mut net, mut guest, wire) = start();
    guest.give_rx(0, 2048);
    drop(wire);
    let before = net_thread_ticks();
    std::thread::sleep(Duration::from_millis(500));
    let spent = net_thread_ticks() - before;
    assert!(spent < 10, "the net thread spent {spent} ticks in 0.5 s");
    // TX still drains (into a backend that refuses), without harm.
    guest.send(0, &frame(1, 100));
    guest.wait_used(TX, 1);
    assert!(net.reset());
}
