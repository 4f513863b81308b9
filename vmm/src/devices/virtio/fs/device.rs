//! The virtio-fs device: configuration space and features served by the
//! VMM, queues handed to the vhost-user backend.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::backend::{Backend, StartError, REPLY_TIMEOUT};
use super::watch::Loss;
use super::{QUEUE_COUNT, REQUEST_QUEUES, TAG_SIZE, VIRTIO_ID_FS};
use crate::devices::failure::FailureReporter;
use crate::devices::virtio::{ActiveQueue, Interrupt, VirtioDevice, INTERRUPT_USED_BUFFER};
use crate::memory::GuestMemory;

/// `struct virtio_fs_config`: the tag, NUL-padded, then the number of
/// request queues, little-endian. `notify_buf_size` follows only with
/// VIRTIO_FS_F_NOTIFICATION, which is not offered.
pub const CONFIG_SIZE: usize = TAG_SIZE + 4;

/// The configuration space for `tag`, which the caller checked is at most
/// [`TAG_SIZE`] bytes (a longer one is cut).
pub fn config_space(tag: &str) -> [u8; CONFIG_SIZE] {
    let mut config = [0u8; CONFIG_SIZE];
    let tag = tag.as_bytes();
    let len = tag.len().min(TAG_SIZE);
    config[..len].copy_from_slice(&tag[..len]);
    config[TAG_SIZE..].copy_from_slice(&REQUEST_QUEUES.to_le_bytes());
    config
}

/// What the guest sees of a virtio-fs device whoever serves it: its tag,
/// configuration space and queue sizes.
pub struct FsIdentity {
    tag: String,
    config: [u8; CONFIG_SIZE],
    queue_sizes: [u16; QUEUE_COUNT],
}

impl FsIdentity {
    pub fn new(tag: &str, queue_size: u16) -> FsIdentity {
        FsIdentity {
            tag: tag.to_string(),
            config: config_space(tag),
            queue_sizes: [queue_size; QUEUE_COUNT],
        }
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    pub fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::devices::virtio::read_config_bytes(&self.config, offset, data);
    }
}

/// What the device holds while the backend serves the queues.
struct Running {
    /// Kept so the kick eventfds outlive the rings.
    _queues: Vec<ActiveQueue>,
    interrupt: Arc<Interrupt>,
}

pub struct VhostUserFs {
    identity: FsIdentity,
    socket: PathBuf,
    backend: Backend,
    failures: Arc<FailureReporter>,
    running: Option<Running>,
}

impl VhostUserFs {
    /// Connects to the backend at `socket` and negotiates with it. Once
    /// connected, the backend going away is reported to `failures`.
    pub fn connect(
        tag: &str,
        socket: &Path,
        queue_size: u16,
        failures: Arc<FailureReporter>,
    ) -> Result<VhostUserFs, String> {
        let (owned_tag, owned_socket) = (tag.to_string(), socket.to_path_buf());
        let reporter = failures.clone();
        let on_loss =
            Box::new(move |loss| reporter.report(loss_message(loss, &owned_tag, &owned_socket)));
        let backend = Backend::connect(socket, QUEUE_COUNT, on_loss)?;
        Ok(VhostUserFs {
            identity: FsIdentity::new(tag, queue_size),
            socket: socket.to_path_buf(),
            backend,
            failures,
            running: None,
        })
    }

    pub fn tag(&self) -> &str {
        self.identity.tag()
    }

    /// A backend failure ends the VM: the guest cannot use the file system
    /// any more, and the caller must learn why.
    fn fail(&self, reason: &str) -> String {
        let message = format!(
            "the virtio-fs backend at {} failed: {reason} (tag {:?})",
            self.socket.display(),
            self.identity.tag()
        );
        self.failures.report(message.clone());
        message
    }
}

/// What the VM ends with when the backend is lost.
pub fn loss_message(loss: Loss, tag: &str, socket: &Path) -> String {
    let what = match loss {
        Loss::HungUp => "went away (it closed the vhost-user connection)".to_string(),
        Loss::Unresponsive => format!(
            "stopped answering (no reply within {:?}; the VMM cut the connection)",
            REPLY_TIMEOUT
        ),
    };
    format!(
        "the virtio-fs backend at {} {what}; the guest lost the file system tagged {tag:?}",
        socket.display()
    )
}

impl VirtioDevice for VhostUserFs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        self.identity.queue_max_sizes()
    }

    fn features(&self) -> u64 {
        self.backend.guest_features()
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.identity.read_config(offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        features: u64,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), String> {
        if self.running.is_some() {
            return Err("the virtio-fs device is already active".into());
        }
        // Held before the backend can signal: its calls go straight to the
        // irqfd, and the driver must then see a used-buffer interrupt.
        interrupt.hold(INTERRUPT_USED_BUFFER);
        let started = self
            .backend
            .start(&mem, features, &queues, interrupt.irqfd());
        if let Err(error) = started {
            interrupt.release(INTERRUPT_USED_BUFFER);
            return Err(match error {
                // The driver's mistake: its device fails, the VM goes on.
                StartError::Guest(reason) => reason,
                StartError::Backend(reason) => self.fail(&reason),
            });
        }
        self.running = Some(Running {
            _queues: queues,
            interrupt,
        });
        Ok(())
    }

    fn reset(&mut self) -> bool {
        let Some(running) = self.running.take() else {
            return true;
        };
        running.interrupt.release(INTERRUPT_USED_BUFFER);
        match self.backend.stop() {
            Ok(()) => true,
            Err(reason) => {
                self.fail(&reason);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_is_the_padded_tag_then_the_request_queue_count() {
        let config = config_space("rootfs");
        assert_eq!(&config[..6], b"rootfs");
        assert!(config[6..TAG_SIZE].iter().all(|&b| b == 0));
        assert_eq!(&config[36..40], &1u32.to_le_bytes());
        assert_eq!(CONFIG_SIZE, 40);
    }

    #[test]
    fn a_tag_of_the_full_size_has_no_terminator() {
        let tag = "t".repeat(TAG_SIZE);
        let config = config_space(&tag);
        assert_eq!(&config[..TAG_SIZE], tag.as_bytes());
        assert_eq!(&config[TAG_SIZE..], &[1, 0, 0, 0]);
    }

    use crate::devices::virtio::fs::mock_backend::{Behaviour, MockBackend, SET_VRING_KICK};
    use crate::devices::virtio::INTERRUPT_CONFIG_CHANGE;
    use crate::memory::create_shared_guest_memory;
    use std::time::Duration;
    use virtio_queue::{Queue, QueueT};
    use vmm_sys_util::eventfd::EventFd;

    fn device(mock: &MockBackend) -> (VhostUserFs, Arc<FailureReporter>) {
        let failures = Arc::new(FailureReporter::new().unwrap());
        let fs = VhostUserFs::connect("share", &mock.socket, 128, failures.clone()).unwrap();
        (fs, failures)
    }

    fn queues() -> Vec<ActiveQueue> {
        [0x10_0000u64, 0x20_0000]
            .into_iter()
            .map(|base| {
                let mut queue = Queue::new(128).unwrap();
                queue.set_desc_table_address(Some(base as u32), Some(0));
                queue.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
                queue.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
                queue.set_ready(true);
                ActiveQueue {
                    queue,
                    notify: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
                }
            })
            .collect()
    }

    fn interrupt() -> Arc<Interrupt> {
        Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
    }

    #[test]
    fn the_device_presents_id_queues_features_and_tag() {
        let mock = MockBackend::start(Behaviour::default());
        let (fs, _) = device(&mock);
        assert_eq!(fs.device_type(), 26);
        assert_eq!(fs.queue_max_sizes(), &[128, 128]);
        assert_eq!(fs.features(), 1 << 32 | 1 << 28 | 1 << 29);
        assert_eq!(fs.tag(), "share");
        let mut tag = [0xffu8; 8];
        fs.read_config(0, &mut tag);
        assert_eq!(&tag, b"share\0\0\0");
        let mut queues = [0u8; 4];
        fs.read_config(36, &mut queues);
        assert_eq!(u32::from_le_bytes(queues), 1);
        // Past the end, and at absurd offsets, reads are zero.
        let mut tail = [0xffu8; 8];
        fs.read_config(38, &mut tail);
        assert_eq!(tail, [0, 0, 0, 0, 0, 0, 0, 0]);
        fs.read_config(u64::MAX, &mut tail);
        assert_eq!(tail, [0; 8]);
    }

    #[test]
    fn while_active_the_used_buffer_bit_is_held_for_the_backend() {
        let mock = MockBackend::start(Behaviour::default());
        let (mut fs, failures) = device(&mock);
        let mem = create_shared_guest_memory(64 << 20).unwrap();
        let irq = interrupt();
        fs.activate(mem, 1 << 32, queues(), irq.clone()).unwrap();
        assert_eq!(irq.status(), INTERRUPT_USED_BUFFER);
        irq.acknowledge(INTERRUPT_USED_BUFFER);
        assert_eq!(irq.status(), INTERRUPT_USED_BUFFER);
        irq.signal_config_change();
        irq.acknowledge(INTERRUPT_CONFIG_CHANGE);
        assert_eq!(irq.status(), INTERRUPT_USED_BUFFER);
        assert!(fs.reset());
        assert_eq!(irq.status(), 0);
        assert_eq!(failures.first(), None);
        // The driver may set the device up again after a reset.
        let mem = create_shared_guest_memory(64 << 20).unwrap();
        fs.activate(mem, 1 << 32, queues(), irq.clone()).unwrap();
        let kicks = mock
            .codes()
            .iter()
            .filter(|&&c| c == SET_VRING_KICK)
            .count();
        assert_eq!(kicks, 4);
    }

    #[test]
    fn a_backend_refusing_activation_fails_the_device_and_the_vm() {
        let mock = MockBackend::start(Behaviour {
            refuse: Some(SET_VRING_KICK),
            ..Behaviour::default()
        });
        let (mut fs, failures) = device(&mock);
        let mem = create_shared_guest_memory(64 << 20).unwrap();
        let irq = interrupt();
        let error = fs
            .activate(mem, 1 << 32, queues(), irq.clone())
            .unwrap_err();
        assert!(
            error.contains(&mock.socket.display().to_string()),
            "{error}"
        );
        assert!(error.contains("SET_VRING_KICK failed"), "{error}");
        assert_eq!(failures.first(), Some(error));
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn a_driver_mistake_fails_the_device_but_not_the_vm() {
        let mock = MockBackend::start(Behaviour::default());
        let (mut fs, failures) = device(&mock);
        let mem = create_shared_guest_memory(64 << 20).unwrap();
        let irq = interrupt();
        let mut queues = queues();
        queues[1]
            .queue
            .set_desc_table_address(Some(0x7000_0000), Some(0));
        let error = fs.activate(mem, 1 << 32, queues, irq.clone()).unwrap_err();
        assert!(error.contains("outside guest RAM"), "{error}");
        assert_eq!(failures.first(), None);
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn a_backend_hanging_up_is_reported_as_gone() {
        let mut mock = MockBackend::start(Behaviour::default());
        let (_fs, failures) = device(&mock);
        assert_eq!(failures.first(), None);
        mock.hang_up();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while failures.event().read().is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            failures.first(),
            Some(loss_message(Loss::HungUp, "share", &mock.socket))
        );
    }

    #[test]
    fn loss_message_names_the_socket_and_the_tag() {
        let message = loss_message(Loss::HungUp, "share", Path::new("/run/fs.sock"));
        assert!(message.contains("/run/fs.sock"), "{message}");
        assert!(message.contains("went away"), "{message}");
        assert!(message.contains("\"share\""), "{message}");
        let message = loss_message(Loss::Unresponsive, "share", Path::new("/run/fs.sock"));
        assert!(message.contains("stopped answering"), "{message}");
    }
}
