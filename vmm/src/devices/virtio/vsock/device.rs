//! The virtio-vsock device: configuration space, queues, and the event
//! loop thread that moves packets between the queues and the muxer.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::{EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::interest::Interest;
use super::muxer::{FdOwner, Muxer};
use super::packet::{PacketHeader, HEADER_SIZE, MAX_PAYLOAD};
use crate::devices::virtio::{ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemory;
use crate::seccomp::ThreadKind;

pub const VIRTIO_ID_VSOCK: u32 = 19;
const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [64, QUEUE_SIZE, QUEUE_SIZE];
const RX: usize = 0;
const TX: usize = 1;
/// Largest payload put in one RX buffer: Linux posts 4 KiB buffers, and a
/// bigger guest buffer is simply filled up to this.
const MAX_RX_PAYLOAD: usize = 64 * 1024;

pub struct Vsock {
    guest_cid: u64,
    /// Idle until the driver activates the device, then owned by the loop.
    muxer: Option<Muxer>,
    running: Option<(EventFd, JoinHandle<Stopped>)>,
    /// Restored from a snapshot: the first thing the event loop does is
    /// tell the driver its transport was reset (see `restoring`).
    announce_reset: bool,
    /// Kept by the event loop: whether its muxer is idle.
    idle: Arc<AtomicBool>,
}

/// What the event loop hands back when it stops.
struct Stopped {
    muxer: Muxer,
    /// RX, TX and event queue, for a snapshot.
    queues: Vec<Queue>,
}

impl Vsock {
    pub fn new(guest_cid: u64, muxer: Muxer) -> Vsock {
        Vsock {
            guest_cid,
            muxer: Some(muxer),
            running: None,
            announce_reset: false,
            idle: Arc::new(AtomicBool::new(true)),
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    /// The configuration space is the guest's CID, 64 bits little-endian.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        _features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), String> {
        let muxer = self
            .muxer
            .take()
            .ok_or("the vsock device is already active")?;
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?;
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx), Some(events)) = (queues.next(), queues.next(), queues.next())
        else {
            return Err("the vsock device needs 3 queues".into());
        };
        let event_loop = EventLoop {
            mem,
            rx,
            tx,
            events,
            interrupt,
            muxer,
            stop: stop.try_clone().map_err(|e| e.to_string())?,
            interest: Interest::new().map_err(|e| e.to_string())?,
            rx_starved: false,
            announce_reset: std::mem::take(&mut self.announce_reset),
            reset_unacknowledged: false,
            idle: self.idle.clone(),
        };
        let thread = crate::seccomp::spawn(ThreadKind::Vsock, "vsock", move || event_loop.run())
            .map_err(|e| e.to_string())?;
        self.running = Some((stop, thread));
        Ok(())
    }

    fn reset(&mut self) -> bool {
        let Some((stop, thread)) = self.running.take() else {
            return true;
        };
        let _ = stop.write(1);
        match thread.join() {
            Ok(stopped) => {
                self.muxer = Some(stopped.muxer);
                true
            }
            Err(_) => false,
        }
    }

    /// Saved only without connections: a template is taken at the agent's
    /// ready point, when no host client is connected, and a connection's
    /// host end (a Unix socket) could not follow the guest into another
    /// process anyway.
    fn pause(&mut self) -> Result<Vec<Queue>, String> {
        let (stop, thread) = self
            .running
            .take()
            .ok_or("the vsock device is not active")?;
        let _ = stop.write(1);
        let stopped = thread.join().map_err(|_| "the vsock event loop panicked")?;
        let muxer = self.muxer.insert(stopped.muxer);
        let (connections, control) = (muxer.connection_count(), muxer.queued_control_packets());
        if !muxer.is_idle() {
            return Err(format!(
                "the vsock device has {connections} live connection(s) and {control} control \
                 packet(s) in flight: a snapshot is taken with none (close host connections first)"
            ));
        }
        Ok(stopped.queues)
    }

    /// The guest's driver still believes in the template's CID and
    /// connections: a transport reset event makes it read the CID again
    /// and drop every connected socket (virtio 1.2, 5.10.6.6).
    fn restoring(&mut self) {
        self.announce_reset = true;
    }

    fn is_quiescent(&self) -> bool {
        self.idle.load(Ordering::Acquire)
    }
}

#[cfg(test)]
impl Vsock {
    /// The muxer, while the device is not active (after a reset).
    pub fn idle_muxer(&self) -> Option<&Muxer> {
        self.muxer.as_ref()
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.reset();
    }
}

struct EventLoop {
    mem: GuestMemory,
    rx: ActiveQueue,
    tx: ActiveQueue,
    /// The event queue carries only transport resets, sent after a VM is
    /// restored from a snapshot.
    events: ActiveQueue,
    interrupt: Arc<Interrupt>,
    muxer: Muxer,
    stop: EventFd,
    interest: Interest,
    /// The guest posted no RX buffer last time one was needed.
    rx_starved: bool,
    announce_reset: bool,
    /// A transport reset was sent and the driver has not handled it yet.
    reset_unacknowledged: bool,
    idle: Arc<AtomicBool>,
}

impl EventLoop {
    /// Serves until told to stop; hands the muxer back for a later
    /// activation, and the queues for a snapshot.
    fn run(mut self) -> Stopped {
        if std::mem::take(&mut self.announce_reset) {
            // Only a kick after the reset acknowledges it.
            let _ = self.events.notify.read();
            self.reset_unacknowledged = self.send_transport_reset();
        }
        let fixed = [
            self.stop.as_raw_fd(),
            self.rx.notify.as_raw_fd(),
            self.tx.notify.as_raw_fd(),
            self.events.notify.as_raw_fd(),
        ];
        for fd in fixed {
            if self.interest.watch_fixed(fd).is_err() {
                return self.stopped();
            }
        }
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            self.process_rx();
            self.sync_interest();
            self.idle.store(self.muxer.is_idle(), Ordering::Release);
            let count = match self.interest.wait(&mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return self.stopped(),
            };
            for event in &events[..count] {
                let fd = event.fd();
                let set = event.event_set();
                if fd == self.stop.as_raw_fd() {
                    return self.stopped();
                } else if fd == self.rx.notify.as_raw_fd() {
                    let _ = self.rx.notify.read();
                    self.rx_starved = false;
                } else if fd == self.tx.notify.as_raw_fd() {
                    let _ = self.tx.notify.read();
                    self.process_tx();
                } else if fd == self.events.notify.as_raw_fd() {
                    // The driver posts its event buffer again once it has
                    // handled the transport reset.
                    let _ = self.events.notify.read();
                    self.reset_unacknowledged = false;
                } else {
                    self.on_socket_event(fd, set);
                }
            }
        }
    }

    fn stopped(self) -> Stopped {
        Stopped {
            muxer: self.muxer,
            queues: vec![self.rx.queue, self.tx.queue, self.events.queue],
        }
    }

    /// Puts a VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (an le32 id of 0) in the
    /// driver's first event buffer. Without a buffer the driver is not
    /// listening yet and there is nothing to reset. Whether it was sent.
    fn send_transport_reset(&mut self) -> bool {
        const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
        let mem = self.mem.clone();
        let Some(chain) = self.events.queue.pop_descriptor_chain(&mem) else {
            return false;
        };
        let head = chain.head_index();
        let written = chain
            .writer(&mem)
            .ok()
            .and_then(|mut writer| {
                writer
                    .write_obj(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le())
                    .ok()
            })
            .map_or(0, |()| 4);
        let _ = self.events.queue.add_used(&mem, head, written);
        self.interrupt.signal_used_buffer();
        true
    }

    fn on_socket_event(&mut self, fd: RawFd, set: EventSet) {
        match self.muxer.owner_of(fd) {
            Some(FdOwner::Listener) => self.muxer.accept(),
            Some(FdOwner::Handshake) => self.muxer.continue_handshake(fd),
            Some(FdOwner::Connection(key)) => {
                // A hang-up reads as end of file.
                let readable = set.intersects(
                    EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR,
                );
                self.muxer
                    .on_connection_ready(key, readable, set.contains(EventSet::OUT));
            }
            None => self.interest.unwatch(fd),
        }
    }

    /// Takes the packets the guest sent, one ring's worth at a time: a guest
    /// that refills TX as fast as it is emptied must not keep the thread
    /// from RX and from stopping. What is left waits for the next pass,
    /// which a self-notification triggers.
    fn process_tx(&mut self) {
        let mem = self.mem.clone();
        let mut used_any = false;
        let mut budget = QUEUE_SIZE;
        while let Some(chain) = self.tx.queue.pop_descriptor_chain(&mem) {
            let head = chain.head_index();
            if let Ok(mut reader) = chain.reader(&mem) {
                if let Ok(header) = reader.read_obj::<PacketHeader>() {
                    let wanted = (header.len as usize).min(MAX_PAYLOAD);
                    let available = reader.available_bytes().min(wanted);
                    let mut payload = vec![0u8; available];
                    if std::io::Read::read_exact(&mut reader, &mut payload).is_ok() {
                        self.muxer.on_guest_packet(&header, &payload);
                    }
                }
            }
            // A malformed chain is consumed and ignored, never fatal.
            let _ = self.tx.queue.add_used(&mem, head, 0);
            used_any = true;
            budget -= 1;
            if budget == 0 {
                let _ = self.tx.notify.write(1);
                break;
            }
        }
        if used_any {
            self.notify_guest(TX);
        }
    }

    /// Fills RX buffers while the muxer has packets for the guest.
    fn process_rx(&mut self) {
        if self.rx_starved {
            return;
        }
        let mem = self.mem.clone();
        let mut payload = vec![0u8; MAX_RX_PAYLOAD];
        let mut used_any = false;
        while self.muxer.has_work_for_guest() {
            let Some(chain) = self.rx.queue.pop_descriptor_chain(&mem) else {
                self.rx_starved = true;
                break;
            };
            let head = chain.head_index();
            let mut writer = match chain.writer(&mem) {
                Ok(writer) if writer.available_bytes() >= HEADER_SIZE => writer,
                _ => {
                    let _ = self.rx.queue.add_used(&mem, head, 0);
                    used_any = true;
                    continue;
                }
            };
            let room = (writer.available_bytes() - HEADER_SIZE).min(MAX_RX_PAYLOAD);
            let Some((header, len)) = self.muxer.next_packet_for_guest(&mut payload[..room]) else {
                if room == 0 {
                    // Only data is waiting and this buffer has no room for
                    // any: it is used up empty rather than offered again,
                    // so a guest posting such buffers cannot make us spin.
                    let _ = self.rx.queue.add_used(&mem, head, 0);
                    used_any = true;
                    continue;
                }
                // Nothing after all: give the buffer back.
                self.rx.queue.go_to_previous_position();
                break;
            };
            let written = writer
                .write_obj(header)
                .and_then(|()| std::io::Write::write_all(&mut writer, &payload[..len]));
            let used_len = if written.is_ok() {
                HEADER_SIZE + len
            } else {
                0
            };
            let _ = self.rx.queue.add_used(&mem, head, used_len as u32);
            used_any = true;
        }
        if used_any {
            self.notify_guest(RX);
        }
    }

    fn notify_guest(&mut self, queue: usize) {
        let queue: &mut Queue = if queue == RX {
            &mut self.rx.queue
        } else {
            &mut self.tx.queue
        };
        if queue.needs_notification(&self.mem).unwrap_or(true) {
            self.interrupt.signal_used_buffer();
        }
    }

    /// Makes epoll watch what the muxer wants now. Host clients wait in
    /// the listener's backlog while a transport reset is unacknowledged: a
    /// connection the guest accepted before handling the reset would be
    /// reset by it, unknown to the host.
    fn sync_interest(&mut self) {
        let mut wanted: HashMap<RawFd, EventSet> = HashMap::new();
        for (fd, read, write) in self.muxer.interest() {
            if self.reset_unacknowledged && fd == self.muxer.listener_fd() {
                continue;
            }
            let mut set = EventSet::empty();
            let is_connection = matches!(self.muxer.owner_of(fd), Some(FdOwner::Connection(_)));
            // Reading a connection is pointless while the guest has no
            // buffer for what would be read.
            if read && !(is_connection && self.rx_starved) {
                set |= EventSet::IN;
            }
            if write {
                set |= EventSet::OUT;
            }
            wanted.insert(fd, set);
        }
        self.interest.sync(&wanted);
    }
}
