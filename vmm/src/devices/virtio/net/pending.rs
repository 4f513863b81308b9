//! A network card whose tap comes later: a VM template's.
//!
//! virtio-mmio has no hotplug, so a template whose restored VMs get
//! interfaces must be booted with the cards present. Booted with
//! `--net pending[,mac=...]`, a card has no tap: it offers what a card
//! with the same options offers, lets the driver set its queues up and
//! set DRIVER_OK, and moves no frame (the guest keeps the interface down
//! until it is configured, so nothing is queued). The snapshot records
//! it with the features the driver acked and its queues.
//!
//! A VM restored from the template binds each card to a tap (`--net
//! fd=N` or `tap=NAME`, in the recorded order): a [`super::Net`] whose
//! options must offer every feature the template's driver acked, started
//! on the recorded rings. The guest read the card's MAC when its driver
//! probed it, in the template: whoever configures the restored guest's
//! interface gives it its own MAC (the agent does; see `runvm_agent_api`'s
//! `Reseed`).

use std::sync::Arc;

use virtio_queue::Queue;

use super::device::NetOptions;
use super::{CONFIG_SIZE, VIRTIO_ID_NET};
use crate::devices::virtio::held_queues::HeldQueues;
use crate::devices::virtio::{ActiveQueue, Interrupt, VirtioDevice};
use crate::memory::GuestMemory;

/// RX and TX, as a card with a tap has them.
const QUEUE_SIZES: [u16; 2] = [super::QUEUE_SIZE, super::QUEUE_SIZE];

pub struct PendingNet {
    config: [u8; CONFIG_SIZE],
    features: u64,
    /// The driver's queues once it set DRIVER_OK, kept for the snapshot.
    queues: HeldQueues,
}

impl PendingNet {
    pub fn new(options: NetOptions) -> PendingNet {
        PendingNet {
            config: options.config_space(),
            features: options.features(),
            queues: HeldQueues::default(),
        }
    }
}

impl VirtioDevice for PendingNet {
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
        _mem: GuestMemory,
        _features: u64,
        queues: Vec<ActiveQueue>,
        _interrupt: Arc<Interrupt>,
    ) -> Result<(), String> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err("the net device needs its RX and TX queues".into());
        }
        self.queues.hold(queues, "net device")
    }

    fn reset(&mut self) -> bool {
        self.queues.drop_all();
        true
    }

    fn pause(&mut self) -> Result<Vec<Queue>, String> {
        self.queues.take("net device")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use vmm_sys_util::eventfd::EventFd;

    use super::*;
    use crate::devices::virtio::mmio::test_driver::{driver_ok, is_live, negotiate, set_up_queue};
    use crate::devices::virtio::mmio::MmioTransport;
    use crate::devices::virtio::net::backend::tests::pair;
    use crate::devices::virtio::net::{Net, OFFLOADS, VIRTIO_NET_F_MAC};
    use crate::memory::create_guest_memory;

    const PLACEHOLDER: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn options(offloads: bool) -> NetOptions {
        NetOptions {
            mac: Some(PLACEHOLDER),
            mtu: None,
            offloads,
        }
    }

    fn transport(device: Box<dyn VirtioDevice>) -> MmioTransport {
        let notify = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mem = create_guest_memory(64 << 20).unwrap();
        MmioTransport::new(device, mem, interrupt, notify).unwrap()
    }

    /// A template's card as its driver leaves it: both queues, DRIVER_OK.
    fn template_card() -> MmioTransport {
        let mut card = transport(Box::new(PendingNet::new(options(true))));
        negotiate(&mut card, options(true).features());
        set_up_queue(&mut card, 0, 0x10_0000);
        set_up_queue(&mut card, 1, 0x20_0000);
        driver_ok(&mut card);
        card
    }

    #[test]
    fn it_offers_what_a_card_with_a_tap_and_the_same_options_offers() {
        let pending = PendingNet::new(options(true));
        assert_eq!(pending.features(), options(true).features());
        assert_ne!(pending.features() & VIRTIO_NET_F_MAC, 0);
        assert_eq!(pending.features() & OFFLOADS, OFFLOADS);
        assert_eq!(pending.device_type(), VIRTIO_ID_NET);
        assert_eq!(pending.queue_max_sizes(), &QUEUE_SIZES);
        let mut mac = [0u8; 6];
        pending.read_config(0, &mut mac);
        assert_eq!(mac, PLACEHOLDER);
    }

    #[test]
    fn a_card_never_set_up_cannot_be_saved() {
        let mut pending = PendingNet::new(NetOptions::default());
        let error = pending.pause().unwrap_err();
        assert!(error.contains("not set up"), "{error}");
    }

    #[test]
    fn a_restore_binds_a_tap_on_the_recorded_rings() {
        let mut card = template_card();
        assert!(is_live(&mut card));
        let saved = card.save().unwrap();
        assert!(saved.active);
        assert_eq!(saved.driver_features, options(true).features());
        assert_eq!(saved.queues.len(), 2);
        assert!(saved.queues.iter().all(|queue| queue.ready));

        let (backend, _wire) = pair();
        let offloads = backend.offloads.clone();
        let real = NetOptions {
            mac: Some([2, 9, 9, 9, 9, 9]),
            ..options(true)
        };
        let device = Box::new(Net::new(backend, real));
        let notify = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mem = create_guest_memory(64 << 20).unwrap();
        let mut restored = MmioTransport::restore(device, mem, interrupt, notify, &saved).unwrap();
        restored.resume().unwrap();
        assert!(is_live(&mut restored));
        // The card's thread set the tap's offloads from what the template's
        // driver acked.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while offloads.load(Ordering::Acquire) == u32::MAX && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_ne!(offloads.load(Ordering::Acquire), u32::MAX);
    }

    #[test]
    fn a_tap_without_the_offloads_the_driver_acked_is_refused() {
        let saved = template_card().save().unwrap();
        let (backend, _wire) = pair();
        let device = Box::new(Net::new(backend, options(false)));
        let notify = (0..2)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let interrupt = Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()));
        let mem = create_guest_memory(64 << 20).unwrap();
        let error = MmioTransport::restore(device, mem, interrupt, notify, &saved)
            .err()
            .unwrap();
        assert!(error.contains("does not offer"), "{error}");
    }
}
