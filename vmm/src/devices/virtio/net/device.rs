//! The virtio-net device: features, configuration space, and the thread
//! that moves frames while the driver has the device live. One device per
//! interface, each with its own thread and backend.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::backend::Backend;
use super::frames::{Frames, Pass};
use super::{
    config_space, CONFIG_SIZE, OFFLOADS, QUEUE_SIZE, VIRTIO_ID_NET, VIRTIO_NET_F_MAC,
    VIRTIO_NET_F_MTU, VIRTIO_RING_F_EVENT_IDX,
};
use crate::devices::virtio::{
    ActiveQueue, DeviceThread, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::memory::GuestMemory;
use crate::seccomp::ThreadKind;

/// RX (device to driver), TX (driver to device); no control queue.
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
// epoll tokens.
const STOP: u64 = 0;
const RX_KICK: u64 = 1;
const TX_KICK: u64 = 2;
const BACKEND: u64 = 3;

/// What the guest is told about the interface.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetOptions {
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u16>,
    /// Offer checksum and TSO offloads (see [`OFFLOADS`]).
    pub offloads: bool,
}

pub struct Net<B: Backend + 'static> {
    config: [u8; CONFIG_SIZE],
    features: u64,
    /// Idle until the driver activates the device, then owned by the thread.
    frames: Option<Frames<B>>,
    running: Option<DeviceThread<Frames<B>>>,
}

impl NetOptions {
    /// The features a card with these options offers.
    pub fn features(&self) -> u64 {
        let mut features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
        if self.mac.is_some() {
            features |= VIRTIO_NET_F_MAC;
        }
        if self.mtu.is_some() {
            features |= VIRTIO_NET_F_MTU;
        }
        if self.offloads {
            features |= OFFLOADS;
        }
        features
    }

    /// Its configuration space.
    pub fn config_space(&self) -> [u8; CONFIG_SIZE] {
        config_space(self.mac, self.mtu)
    }
}

impl<B: Backend + 'static> Net<B> {
    pub fn new(backend: B, options: NetOptions) -> Net<B> {
        Net {
            config: options.config_space(),
            features: options.features(),
            frames: Some(Frames::new(backend)),
            running: None,
        }
    }

    /// The frame mover, while the device is not live (before activation,
    /// after a reset).
    pub fn idle_frames(&self) -> Option<&Frames<B>> {
        self.frames.as_ref()
    }
}

impl<B: Backend + 'static> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), String> {
        let mut queues = queues.into_iter();
        let (Some(mut rx), Some(mut tx)) = (queues.next(), queues.next()) else {
            return Err("the net device needs its RX and TX queues".into());
        };
        let frames = self
            .frames
            .take()
            .ok_or("the net device is already active")?;
        let event_idx = features & VIRTIO_RING_F_EVENT_IDX != 0;
        rx.queue.set_event_idx(event_idx);
        tx.queue.set_event_idx(event_idx);
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?;
        let epoll = Epoll::new().map_err(|e| e.to_string())?;
        let backend_fd = frames.backend().as_raw_fd();
        for (fd, token, events) in [
            (stop.as_raw_fd(), STOP, EventSet::IN),
            (rx.notify.as_raw_fd(), RX_KICK, EventSet::IN),
            (tx.notify.as_raw_fd(), TX_KICK, EventSet::IN),
            (backend_fd, BACKEND, EventSet::IN),
        ] {
            let added = epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(events, token));
            if let Err(e) = added {
                self.frames = Some(frames);
                return Err(e.to_string());
            }
        }
        let worker = Worker {
            mem,
            rx,
            tx,
            interrupt,
            frames,
            features,
            epoll,
            rx_blocked: false,
            tx_blocked: false,
            watching: EventSet::IN,
            backend_failed: false,
        };
        let thread = crate::seccomp::spawn(ThreadKind::Net, "virtio-net", move || worker.run())
            .map_err(|e| e.to_string())?;
        self.running = Some(DeviceThread::new(stop, thread));
        Ok(())
    }

    fn reset(&mut self) -> bool {
        let Some(running) = self.running.take() else {
            return true;
        };
        self.frames = running.stop();
        self.frames.is_some()
    }
}

impl<B: Backend + 'static> Drop for Net<B> {
    fn drop(&mut self) {
        self.reset();
    }
}

struct Worker<B: Backend> {
    mem: GuestMemory,
    rx: ActiveQueue,
    tx: ActiveQueue,
    interrupt: Arc<Interrupt>,
    frames: Frames<B>,
    features: u64,
    epoll: Epoll,
    /// A frame waits and the guest has no buffer: the backend is not read
    /// until the guest posts one.
    rx_blocked: bool,
    /// The backend took no more frames: TX waits until it is writable.
    tx_blocked: bool,
    /// What epoll watches the backend for.
    watching: EventSet,
    /// Reading the backend failed: it left the epoll set for good (a
    /// deleted tap reports an error forever, which would spin the loop).
    backend_failed: bool,
}

impl<B: Backend> Worker<B> {
    /// Serves until told to stop; hands the frame mover back.
    fn run(mut self) -> Frames<B> {
        // Here, not in activate(): a vCPU activates, and its filter
        // allows no tap ioctl.
        if self.frames.activate(self.features).is_err() {
            return self.frames;
        }
        let (mut run_rx, mut run_tx) = (true, true);
        let mut events = [EpollEvent::default(); 4];
        loop {
            if run_rx && !self.rx_blocked && !self.backend_failed {
                self.process_rx();
            }
            if run_tx && !self.tx_blocked {
                self.process_tx();
            }
            self.sync_interest();
            let count = match self.epoll.wait(-1, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
                Err(_) => return self.frames,
            };
            (run_rx, run_tx) = (false, false);
            for event in &events[..count] {
                match event.data() {
                    STOP => return self.frames,
                    RX_KICK => {
                        let _ = self.rx.notify.read();
                        self.rx_blocked = false;
                        run_rx = true;
                    }
                    TX_KICK => {
                        let _ = self.tx.notify.read();
                        run_tx = true;
                    }
                    _ => {
                        let set = event.event_set();
                        if set.contains(EventSet::OUT) {
                            self.tx_blocked = false;
                            run_tx = true;
                        }
                        run_rx |=
                            set.intersects(EventSet::IN | EventSet::ERROR | EventSet::HANG_UP);
                    }
                }
            }
        }
    }

    fn process_rx(&mut self) {
        let (pass, used) = self.frames.rx(&self.mem, &mut self.rx.queue);
        self.rx_blocked = pass == Pass::Blocked;
        if pass == Pass::Failed && !self.backend_failed {
            self.backend_failed = true;
            let fd = self.frames.backend().as_raw_fd();
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        }
        // MoreWork: the backend is still readable, epoll says so again.
        if used {
            notify_guest(&self.mem, &mut self.rx.queue, &self.interrupt);
        }
    }

    fn process_tx(&mut self) {
        let (pass, used) = self.frames.tx(&self.mem, &mut self.tx.queue);
        self.tx_blocked = pass == Pass::Blocked;
        if pass == Pass::MoreWork {
            // The rest after RX had its turn.
            let _ = self.tx.notify.write(1);
        }
        if used {
            notify_guest(&self.mem, &mut self.tx.queue, &self.interrupt);
        }
    }

    /// Reads the backend only when a guest buffer can take what is read;
    /// waits for it to be writable only when a frame could not be sent.
    fn sync_interest(&mut self) {
        let mut wanted = EventSet::empty();
        if !self.rx_blocked {
            wanted |= EventSet::IN;
        }
        if self.tx_blocked {
            wanted |= EventSet::OUT;
        }
        if wanted == self.watching || self.backend_failed {
            return;
        }
        let fd = self.frames.backend().as_raw_fd();
        if self
            .epoll
            .ctl(
                ControlOperation::Modify,
                fd,
                EpollEvent::new(wanted, BACKEND),
            )
            .is_ok()
        {
            self.watching = wanted;
        }
    }
}

fn notify_guest(mem: &GuestMemory, queue: &mut Queue, interrupt: &Interrupt) {
    if queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_buffer();
    }
}
