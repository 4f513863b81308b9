//! The VMM's side of a vhost-user connection (the "front-end" of the
//! vhost-user protocol), on top of the `vhost` crate's `Frontend`.
//!
//! - [`Backend::connect`], at VMM start: `SET_OWNER`, `GET_FEATURES`,
//!   `GET_PROTOCOL_FEATURES`/`SET_PROTOCOL_FEATURES` (REPLY_ACK so every
//!   later request is confirmed, MQ to learn the queue count) and
//!   `GET_QUEUE_NUM`. A missing socket or a backend that cannot serve the
//!   device fails here, before the guest boots.
//! - [`Backend::start`], when the driver sets DRIVER_OK: `SET_FEATURES`
//!   with what the driver accepted, `SET_MEM_TABLE`, then per queue
//!   `SET_VRING_NUM/ADDR/BASE/CALL/KICK/ENABLE`.
//! - [`Backend::stop`], when the driver resets the device: per started
//!   queue `SET_VRING_ENABLE 0` and `GET_VRING_BASE`, which stops the ring.
//!
//! A [`ConnectionWatch`] reports the backend going away, and bounds how
//! long any request may wait for its answer ([`REPLY_TIMEOUT`]).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Error as VuError, Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

use super::watch::{ConnectionWatch, OnLoss};
use crate::devices::unix_socket::SocketName;
use crate::devices::virtio::{ActiveQueue, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemory;

/// Ring features the backend implements and the guest may use: they only
/// concern the rings, which the backend processes.
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// Every feature the device may offer the guest, whoever serves it.
pub const GUEST_VISIBLE_FEATURES: u64 =
    VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;
/// vhost-user's own feature bit: the backend speaks protocol features.
const PROTOCOL_FEATURES: u64 = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// How long a backend that was just started may take to create and listen
/// on its socket.
const CONNECT_GRACE: Duration = Duration::from_secs(1);
const CONNECT_RETRY: Duration = Duration::from_millis(20);
/// A live backend answers every request at once; one silent for this long
/// is cut off rather than left to hang the VMM or a vCPU.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected, negotiated vhost-user backend.
pub struct Backend {
    /// Declared first, so dropped first: stopped before the VMM closes the
    /// connection itself, which is no loss to report.
    watch: ConnectionWatch,
    frontend: Frontend,
    /// GET_FEATURES.
    features: u64,
    /// Whether REPLY_ACK was negotiated and requests ask for it.
    reply_ack: bool,
    /// Queues passed to the backend by the last `start`, by index.
    started: Vec<usize>,
    /// How long a request may wait for its answer.
    reply_timeout: Duration,
}

impl Backend {
    /// Connects to the backend listening at `socket` and negotiates what
    /// does not depend on the guest. `queues` is how many queues the
    /// device has; the backend must serve at least that many. From here
    /// on, losing the backend is reported once through `on_loss`.
    pub fn connect(socket: &Path, queues: usize, on_loss: OnLoss) -> Result<Backend, String> {
        Backend::connect_with_timeout(socket, queues, on_loss, REPLY_TIMEOUT)
    }

    fn connect_with_timeout(
        socket: &Path,
        queues: usize,
        on_loss: OnLoss,
        reply_timeout: Duration,
    ) -> Result<Backend, String> {
        let stream = connect_socket(socket)?;
        let watched = OwnedFd::from(
            stream
                .try_clone()
                .map_err(|e| format!("cannot duplicate the connection: {e}"))?,
        );
        let watch = ConnectionWatch::start(watched, on_loss)
            .map_err(|e| format!("cannot start the connection watch: {e}"))?;
        let mut backend = Backend {
            watch,
            frontend: Frontend::from_stream(stream, queues as u64),
            features: 0,
            reply_ack: false,
            started: Vec::new(),
            reply_timeout,
        };
        backend.negotiate(queues)?;
        Ok(backend)
    }

    fn negotiate(&mut self, queues: usize) -> Result<(), String> {
        self.request("SET_OWNER", |f| f.set_owner())?;
        let features = self.request("GET_FEATURES", |f| f.get_features())?;
        if features & VIRTIO_F_VERSION_1 == 0 {
            return Err(format!(
                "the backend does not offer VIRTIO_F_VERSION_1 (features {features:#x})"
            ));
        }
        self.features = features;
        if features & PROTOCOL_FEATURES == 0 {
            return Ok(());
        }
        let offered = self.request("GET_PROTOCOL_FEATURES", |f| f.get_protocol_features())?;
        let accepted =
            offered & (VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::MQ);
        self.request("SET_PROTOCOL_FEATURES", |f| {
            f.set_protocol_features(accepted)
        })?;
        if accepted.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            // From now on every request that returns nothing is
            // acknowledged, so a refusal is seen where it happens.
            self.frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            self.reply_ack = true;
        }
        if accepted.contains(VhostUserProtocolFeatures::MQ) {
            let served = self.request("GET_QUEUE_NUM", |f| f.get_queue_num())?;
            if served < queues as u64 {
                return Err(format!(
                    "the backend serves {served} queues, the device needs {queues}"
                ));
            }
        }
        Ok(())
    }

    /// The features the device offers the guest: virtio 1.x, and the ring
    /// features the backend implements.
    pub fn guest_features(&self) -> u64 {
        self.features & GUEST_VISIBLE_FEATURES
    }

    /// Whether the backend confirms every request (REPLY_ACK).
    pub fn confirms_requests(&self) -> bool {
        self.reply_ack
    }

    /// Hands the rings to the backend. `driver_features` are those the
    /// driver accepted; `call` is signalled by the backend for used buffers.
    /// The guest's queue set-up is checked before the backend is asked
    /// anything.
    pub fn start(
        &mut self,
        mem: &GuestMemory,
        driver_features: u64,
        queues: &[ActiveQueue],
        call: &EventFd,
    ) -> Result<(), StartError> {
        let mut rings = Vec::new();
        for (index, active) in queues.iter().enumerate() {
            let queue = &active.queue;
            if !queue.ready() {
                continue;
            }
            let config = VringConfigData {
                queue_max_size: queue.max_size(),
                queue_size: queue.size(),
                flags: 0,
                desc_table_addr: host_address(mem, queue.desc_table(), index, "descriptor table")?,
                used_ring_addr: host_address(mem, queue.used_ring(), index, "used ring")?,
                avail_ring_addr: host_address(mem, queue.avail_ring(), index, "available ring")?,
                log_addr: None,
            };
            rings.push((index, config, queue.next_avail(), &active.notify));
        }
        if rings.is_empty() {
            return Err(StartError::Guest("the driver made no queue ready".into()));
        }
        let table = memory_table(mem).map_err(StartError::Backend)?;

        let protocol = self.features & PROTOCOL_FEATURES;
        let features = (driver_features & self.features) | protocol;
        self.request("SET_FEATURES", |f| f.set_features(features))?;
        self.request("SET_MEM_TABLE", |f| f.set_mem_table(&table))?;
        self.started.clear();
        for (index, config, next_avail, kick) in rings {
            self.request("SET_VRING_NUM", |f| {
                f.set_vring_num(index, config.queue_size)
            })?;
            self.request("SET_VRING_ADDR", |f| f.set_vring_addr(index, &config))?;
            self.request("SET_VRING_BASE", |f| f.set_vring_base(index, next_avail))?;
            self.request("SET_VRING_CALL", |f| f.set_vring_call(index, call))?;
            // The ring starts once it has a kick (and, with protocol
            // features, once it is enabled).
            self.request("SET_VRING_KICK", |f| f.set_vring_kick(index, kick))?;
            self.started.push(index);
            if protocol != 0 {
                self.request("SET_VRING_ENABLE", |f| f.set_vring_enable(index, true))?;
            }
        }
        Ok(())
    }

    /// Takes the rings back: the backend stops using them and guest memory.
    pub fn stop(&mut self) -> Result<(), String> {
        let protocol = self.features & PROTOCOL_FEATURES != 0;
        for index in std::mem::take(&mut self.started) {
            if protocol {
                self.request("SET_VRING_ENABLE", |f| f.set_vring_enable(index, false))?;
            }
            self.request("GET_VRING_BASE", |f| f.get_vring_base(index))?;
        }
        Ok(())
    }

    /// Sends one request under the watch's deadline; an error names the
    /// request and says why in plain words.
    fn request<T>(
        &mut self,
        name: &str,
        send: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, String> {
        self.watch.arm(self.reply_timeout);
        let result = send(&mut self.frontend);
        self.watch.disarm();
        result.map_err(|error| {
            let why = if self.watch.timed_out() {
                format!("no reply within {:?}", self.reply_timeout)
            } else {
                describe(&error)
            };
            format!("{name} failed: {why}")
        })
    }
}

/// Why the rings could not be handed over.
#[derive(Debug, PartialEq, Eq)]
pub enum StartError {
    /// The driver set the queues up wrongly: the device fails, the VM goes
    /// on.
    Guest(String),
    /// The backend refused, broke or went silent.
    Backend(String),
}

impl From<String> for StartError {
    fn from(reason: String) -> StartError {
        StartError::Backend(reason)
    }
}

/// Connects, giving a backend started just before the VMM a moment to
/// create its socket.
fn connect_socket(socket: &Path) -> Result<UnixStream, String> {
    let socket = SocketName::of(socket, 0).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + CONNECT_GRACE;
    loop {
        match UnixStream::connect(socket.name()) {
            Ok(stream) => return Ok(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) && Instant::now() < deadline =>
            {
                std::thread::sleep(CONNECT_RETRY);
            }
            Err(e) => {
                return Err(format!(
                    "cannot connect: {e} (is a vhost-user backend such as virtiofsd listening \
                     there, started with --socket-path?)"
                ))
            }
        }
    }
}

fn describe(error: &vhost::Error) -> String {
    match error {
        vhost::Error::VhostUserProtocol(
            VuError::Disconnected | VuError::SocketBroken(_) | VuError::PartialMessage,
        ) => "the backend closed the connection".into(),
        vhost::Error::VhostUserProtocol(VuError::BackendInternalError) => {
            "the backend refused the request".into()
        }
        other => other.to_string(),
    }
}

/// The vring addresses of vhost-user are the front-end's own virtual
/// addresses; the backend maps them through the memory table.
fn host_address(
    mem: &GuestMemory,
    guest: u64,
    queue: usize,
    what: &str,
) -> Result<u64, StartError> {
    mem.get_host_address(GuestAddress(guest))
        .map(|address| address as u64)
        .map_err(|_| {
            StartError::Guest(format!(
                "queue {queue}: the {what} at {guest:#x} is outside guest RAM"
            ))
        })
}

/// What `SET_MEM_TABLE` carries for each RAM region: its guest address,
/// size, address in the VMM, and the memfd with the offset it starts at.
/// Guest RAM must be file-backed ([`crate::memory::create_shared_guest_memory`]).
pub fn memory_table(mem: &GuestMemory) -> Result<Vec<VhostUserMemoryRegionInfo>, String> {
    let mut table = Vec::new();
    for region in mem.iter() {
        let start = region.start_addr().0;
        let file = region.file_offset().ok_or_else(|| {
            format!(
                "guest RAM at {start:#x} is not shared memory: a vhost-user backend cannot map it"
            )
        })?;
        let userspace_addr = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| format!("guest RAM at {start:#x}: {e}"))?
            as u64;
        table.push(VhostUserMemoryRegionInfo {
            guest_phys_addr: start,
            memory_size: region.len(),
            userspace_addr,
            mmap_offset: file.start(),
            mmap_handle: file.file().as_raw_fd(),
        });
    }
    if table.is_empty() {
        return Err("the guest has no RAM".into());
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::fs::mock_backend::*;
    use crate::devices::virtio::fs::watch::Loss;
    use crate::memory::{create_guest_memory, create_shared_guest_memory, DEVICE_HOLE_START};
    use virtio_queue::Queue;

    const RING_FEATURES: u64 = VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;

    fn connect(socket: &Path) -> Result<Backend, String> {
        Backend::connect(socket, 2, Box::new(|_| {}))
    }

    fn ready_queue(base: u64) -> ActiveQueue {
        let mut queue = Queue::new(256).unwrap();
        queue.set_size(64);
        queue.set_desc_table_address(Some(base as u32), Some(0));
        queue.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
        queue.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
        queue.set_ready(true);
        ActiveQueue {
            queue,
            notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        }
    }

    #[test]
    fn connect_negotiates_and_offers_the_guest_only_ring_features() {
        let mock = MockBackend::start(Behaviour::default());
        let backend = connect(&mock.socket).unwrap();
        assert_eq!(backend.guest_features(), VIRTIO_F_VERSION_1 | RING_FEATURES);
        assert!(backend.confirms_requests());
        assert_eq!(
            mock.codes(),
            [
                SET_OWNER,
                GET_FEATURES,
                GET_PROTOCOL_FEATURES,
                SET_PROTOCOL_FEATURES,
                GET_QUEUE_NUM
            ]
        );
        // Only REPLY_ACK and MQ, though the backend offers more.
        assert_eq!(mock.requests()[3].u64_at(0), 0x8 | 0x1);
    }

    #[test]
    fn start_hands_over_memory_and_each_ready_queue_then_stop_takes_them_back() {
        let mock = MockBackend::start(Behaviour::default());
        let mut backend = connect(&mock.socket).unwrap();
        let mem = create_shared_guest_memory(64 << 20).unwrap();
        let mut queues = vec![ready_queue(0x10_0000), ready_queue(0x20_0000)];
        queues[1].queue.set_next_avail(7);
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let driver_features = VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX;
        backend
            .start(&mem, driver_features, &queues, &call)
            .unwrap();

        let requests = mock.requests();
        let after_handshake = &requests[5..];
        let per_queue = [
            SET_VRING_NUM,
            SET_VRING_ADDR,
            SET_VRING_BASE,
            SET_VRING_CALL,
            SET_VRING_KICK,
            SET_VRING_ENABLE,
        ];
        let expected: Vec<u32> = [SET_FEATURES, SET_MEM_TABLE]
            .into_iter()
            .chain(per_queue)
            .chain(per_queue)
            .collect();
        assert_eq!(
            after_handshake.iter().map(|r| r.code).collect::<Vec<_>>(),
            expected
        );
        // What the driver accepted, plus vhost-user's protocol feature bit.
        assert_eq!(after_handshake[0].u64_at(0), driver_features | 1 << 30);
        // One region, its memfd attached.
        let table = &after_handshake[1];
        assert_eq!(table.fds, 1);
        assert_eq!(table.u32_at(0), 1);
        assert_eq!(table.u64_at(8), 0, "guest address");
        assert_eq!(table.u64_at(16), 64 << 20, "size");
        let host_base = table.u64_at(24);
        assert_eq!(table.u64_at(32), 0, "offset in the memfd");
        // Queue 1: size, VMM addresses of its rings, base, fds.
        let queue1 = &after_handshake[8..14];
        assert_eq!((queue1[0].u32_at(0), queue1[0].u32_at(4)), (1, 64));
        let addr = &queue1[1];
        assert_eq!(addr.u32_at(0), 1);
        assert_eq!(addr.u64_at(8), host_base + 0x20_0000, "descriptors");
        assert_eq!(addr.u64_at(16), host_base + 0x20_2000, "used ring");
        assert_eq!(addr.u64_at(24), host_base + 0x20_1000, "available ring");
        assert_eq!((queue1[2].u32_at(0), queue1[2].u32_at(4)), (1, 7));
        assert_eq!((queue1[3].u64_at(0), queue1[3].fds), (1, 1));
        assert_eq!((queue1[4].u64_at(0), queue1[4].fds), (1, 1));
        assert_eq!((queue1[5].u32_at(0), queue1[5].u32_at(4)), (1, 1));

        backend.stop().unwrap();
        let codes = mock.codes();
        assert_eq!(
            &codes[codes.len() - 4..],
            [
                SET_VRING_ENABLE,
                GET_VRING_BASE,
                SET_VRING_ENABLE,
                GET_VRING_BASE
            ]
        );
        // Stopping twice does nothing more.
        backend.stop().unwrap();
        assert_eq!(mock.codes().len(), codes.len());
    }

    #[test]
    fn queues_the_driver_left_unready_are_not_started() {
        let mock = MockBackend::start(Behaviour::default());
        let mut backend = connect(&mock.socket).unwrap();
        let mem = create_shared_guest_memory(64 << 20).unwrap();
        let mut queues = vec![ready_queue(0x10_0000), ready_queue(0x20_0000)];
        queues[0].queue.set_ready(false);
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        backend
            .start(&mem, VIRTIO_F_VERSION_1, &queues, &call)
            .unwrap();
        let kicks: Vec<u64> = mock
            .requests()
            .iter()
            .filter(|r| r.code == SET_VRING_KICK)
            .map(|r| r.u64_at(0))
            .collect();
        assert_eq!(kicks, [1]);
    }

    #[test]
    fn a_refused_request_is_an_error_that_names_it() {
        let mock = MockBackend::start(Behaviour {
            refuse: Some(SET_MEM_TABLE),
            ..Behaviour::default()
        });
        let mut backend = connect(&mock.socket).unwrap();
        let mem = create_shared_guest_memory(64 << 20).unwrap();
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let error = backend
            .start(&mem, VIRTIO_F_VERSION_1, &[ready_queue(0x10_0000)], &call)
            .unwrap_err();
        assert_eq!(
            error,
            StartError::Backend("SET_MEM_TABLE failed: the backend refused the request".into())
        );
    }

    #[test]
    fn a_backend_that_cannot_serve_the_device_is_refused_at_connect() {
        let mock = MockBackend::start(Behaviour {
            features: 1 << 30 | 1 << 28,
            ..Behaviour::default()
        });
        let error = connect(&mock.socket).err().unwrap();
        assert!(error.contains("VIRTIO_F_VERSION_1"), "{error}");

        let mock = MockBackend::start(Behaviour {
            queue_num: 1,
            ..Behaviour::default()
        });
        let error = connect(&mock.socket).err().unwrap();
        assert!(error.contains("serves 1 queues"), "{error}");

        let mock = MockBackend::start(Behaviour {
            refuse: Some(SET_PROTOCOL_FEATURES),
            ..Behaviour::default()
        });
        // Refusals are only seen once REPLY_ACK is on: the next request.
        assert!(connect(&mock.socket).is_ok());
    }

    #[test]
    fn a_backend_without_protocol_features_gets_the_plain_sequence() {
        let mock = MockBackend::start(Behaviour {
            features: VIRTIO_F_VERSION_1,
            ..Behaviour::default()
        });
        let mut backend = connect(&mock.socket).unwrap();
        assert!(!backend.confirms_requests());
        assert_eq!(mock.codes(), [SET_OWNER, GET_FEATURES]);
        let mem = create_shared_guest_memory(64 << 20).unwrap();
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        backend
            .start(&mem, VIRTIO_F_VERSION_1, &[ready_queue(0x10_0000)], &call)
            .unwrap();
        // Without protocol features rings need no SET_VRING_ENABLE.
        mock.wait_for_requests(2 + 2 + 5);
        let codes = mock.codes();
        assert!(!codes.contains(&SET_VRING_ENABLE), "{codes:?}");
        assert_eq!(codes.len(), 9, "{codes:?}");
        assert_eq!(codes.last(), Some(&SET_VRING_KICK));
    }

    #[test]
    fn a_backend_below_a_path_longer_than_a_socket_address_is_reached() {
        let mock = MockBackend::start(Behaviour::default());
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/runvm-fs-test").unwrap();
        let deep = dir.as_path().join("d".repeat(100)).join("e".repeat(100));
        std::fs::create_dir_all(&deep).unwrap();
        // The same socket, by a name too long to connect to directly.
        std::fs::hard_link(&mock.socket, deep.join("fs.sock")).unwrap();
        connect(&deep.join("fs.sock")).unwrap();
    }

    #[test]
    fn a_missing_socket_is_a_connect_error() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/runvm-fs-test").unwrap();
        let started = Instant::now();
        let error = connect(&dir.as_path().join("none.sock")).err().unwrap();
        assert!(error.starts_with("cannot connect: "), "{error}");
        assert!(error.contains("virtiofsd"), "{error}");
        assert!(started.elapsed() >= CONNECT_GRACE);
    }

    #[test]
    fn a_backend_started_just_after_the_vmm_is_still_reached() {
        let dir = vmm_sys_util::tempdir::TempDir::new_with_prefix("/tmp/runvm-fs-test").unwrap();
        let socket = dir.as_path().join("late.sock");
        let path = socket.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
            // Accept and answer nothing: connecting is what is tested.
            let _ = listener.accept();
        });
        assert!(connect_socket(&socket).is_ok());
        late.join().unwrap();
    }

    #[test]
    fn memory_table_lists_each_region_with_its_memfd_offset() {
        let mem = create_shared_guest_memory(4 << 30).unwrap();
        let table = memory_table(&mem).unwrap();
        assert_eq!(table.len(), 2);
        let regions: Vec<_> = mem.iter().collect();
        for (entry, region) in table.iter().zip(&regions) {
            assert_eq!(entry.guest_phys_addr, region.start_addr().0);
            assert_eq!(entry.memory_size, region.len());
            assert_eq!(
                entry.userspace_addr,
                region.get_host_address(MemoryRegionAddress(0)).unwrap() as u64
            );
            assert!(entry.mmap_handle >= 0);
        }
        assert_eq!(table[0].guest_phys_addr, 0);
        assert_eq!(table[0].memory_size, DEVICE_HOLE_START);
        assert_eq!(table[0].mmap_offset, 0);
        assert_eq!(table[1].guest_phys_addr, 1 << 32);
        assert_eq!(table[1].memory_size, (4 << 30) - DEVICE_HOLE_START);
        assert_eq!(table[1].mmap_offset, DEVICE_HOLE_START);
        assert_eq!(table[0].mmap_handle, table[1].mmap_handle);
    }

    #[test]
    fn anonymous_memory_cannot_be_shared_with_a_backend() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let error = memory_table(&mem).err().unwrap();
        assert!(error.contains("not shared memory"), "{error}");
    }

    #[test]
    fn a_queue_outside_guest_ram_is_refused_before_it_reaches_the_backend() {
        let mock = MockBackend::start(Behaviour::default());
        let mut backend = connect(&mock.socket).unwrap();
        let mem = create_shared_guest_memory(64 << 20).unwrap();
        let call = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let error = backend
            .start(&mem, VIRTIO_F_VERSION_1, &[ready_queue(0x7000_0000)], &call)
            .unwrap_err();
        let StartError::Guest(reason) = error else {
            panic!("{error:?}");
        };
        assert!(reason.contains("outside guest RAM"), "{reason}");
        let mut unready = ready_queue(0x10_0000);
        unready.queue.set_ready(false);
        assert_eq!(
            backend.start(&mem, VIRTIO_F_VERSION_1, &[unready], &call),
            Err(StartError::Guest("the driver made no queue ready".into()))
        );
        // Nothing was asked of the backend beyond the handshake.
        assert_eq!(mock.codes().len(), 5);
    }

    #[test]
    fn losing_the_backend_later_is_reported_once() {
        let mut mock = MockBackend::start(Behaviour::default());
        let (report, reported) = std::sync::mpsc::channel();
        let _backend = Backend::connect(
            &mock.socket,
            2,
            Box::new(move |loss| {
                let _ = report.send(loss);
            }),
        )
        .unwrap();
        assert!(reported.recv_timeout(Duration::from_millis(100)).is_err());
        mock.hang_up();
        assert_eq!(
            reported.recv_timeout(Duration::from_secs(5)),
            Ok(Loss::HungUp)
        );
    }

    #[test]
    fn closing_the_connection_ourselves_is_no_loss() {
        let mock = MockBackend::start(Behaviour::default());
        let (report, reported) = std::sync::mpsc::channel();
        let backend = Backend::connect(
            &mock.socket,
            2,
            Box::new(move |loss| {
                let _ = report.send(loss);
            }),
        )
        .unwrap();
        drop(backend);
        drop(mock);
        assert!(reported.recv_timeout(Duration::from_millis(200)).is_err());
    }

    #[test]
    fn a_backend_that_stops_answering_is_cut_off() {
        let mock = MockBackend::start(Behaviour {
            silent_on: Some(GET_FEATURES),
            ..Behaviour::default()
        });
        let (report, reported) = std::sync::mpsc::channel();
        let started = Instant::now();
        let error = Backend::connect_with_timeout(
            &mock.socket,
            2,
            Box::new(move |loss| {
                let _ = report.send(loss);
            }),
            Duration::from_millis(300),
        )
        .err()
        .unwrap();
        assert_eq!(error, "GET_FEATURES failed: no reply within 300ms");
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(
            reported.recv_timeout(Duration::from_secs(5)),
            Ok(Loss::Unresponsive)
        );
    }
}
