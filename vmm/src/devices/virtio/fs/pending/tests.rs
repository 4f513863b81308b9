//! A template's pending device set up by a driver, saved, and bound to a
//! (mock) backend as a restore does it.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::failure::FailureReporter;
use crate::devices::virtio::fs::mock_backend::{
    Behaviour, MockBackend, SET_FEATURES, SET_VRING_BASE, SET_VRING_KICK, VIRTIOFSD_FEATURES,
};
use crate::devices::virtio::mmio::test_driver::{
    driver_ok, is_live, negotiate, notify, read, set_up_queue,
};
use crate::devices::virtio::mmio::MmioTransport;
use crate::memory::{create_guest_memory, create_shared_guest_memory};

const QUEUE_SIZE: u16 = 1024;

fn eventfds() -> Vec<EventFd> {
    (0..2)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect()
}

fn interrupt() -> Arc<Interrupt> {
    Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
}

/// A transport around a pending device; the kick eventfds, to look at.
fn template() -> (MmioTransport, Vec<EventFd>) {
    let notify = eventfds();
    let kept = notify.iter().map(|e| e.try_clone().unwrap()).collect();
    let mem = create_guest_memory(64 << 20).unwrap();
    let device = Box::new(PendingFs::new("share", QUEUE_SIZE));
    let transport = MmioTransport::new(device, mem, interrupt(), notify).unwrap();
    (transport, kept)
}

/// The template's driver: both queues set up, DRIVER_OK.
fn set_up(transport: &mut MmioTransport) {
    negotiate(transport, PENDING_FEATURES);
    set_up_queue(transport, 0, 0x10_0000);
    set_up_queue(transport, 1, 0x20_0000);
    driver_ok(transport);
}

fn connect(behaviour: Behaviour) -> (VhostUserFs, MockBackend) {
    let mock = MockBackend::start(behaviour);
    let failures = Arc::new(FailureReporter::new().unwrap());
    let fs = VhostUserFs::connect("share", &mock.socket, QUEUE_SIZE, failures).unwrap();
    (fs, mock)
}

#[test]
fn the_pending_device_offers_what_virtiofsd_would_pass_to_the_guest() {
    let (mock_fs, _mock) = connect(Behaviour::default());
    let pending = PendingFs::new("share", QUEUE_SIZE);
    assert_eq!(pending.features(), mock_fs.features());
    assert_eq!(
        PENDING_FEATURES,
        VIRTIOFSD_FEATURES & GUEST_VISIBLE_FEATURES
    );
    assert_eq!(pending.device_type(), 26);
    assert_eq!(pending.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(pending.tag(), "share");
    let mut config = [0u8; 40];
    pending.read_config(0, &mut config);
    assert_eq!(&config[..6], b"share\0");
    assert_eq!(&config[36..], &1u32.to_le_bytes());
}

#[test]
fn the_pending_device_accepts_the_set_up_and_leaves_kicks_alone() {
    let (mut transport, kicks) = template();
    set_up(&mut transport);
    assert!(is_live(&mut transport));
    // A kick while pending is nobody's to consume.
    notify(&mut transport, 1);
    assert_eq!(kicks[1].read().unwrap(), 1);
    assert!(kicks[0].read().is_err());
    // The driver may reset it and set it up again.
    crate::devices::virtio::mmio::test_driver::write(&mut transport, 0x70, 0);
    assert_eq!(read(&mut transport, 0x70), 0);
    set_up(&mut transport);
    assert!(is_live(&mut transport));
}

#[test]
fn a_driver_that_readies_no_queue_fails_the_pending_device() {
    let (mut transport, _) = template();
    negotiate(&mut transport, PENDING_FEATURES);
    driver_ok(&mut transport);
    assert!(!is_live(&mut transport));
    let saved = transport.save().unwrap();
    assert!(!saved.active);
}

#[test]
fn a_snapshot_records_the_pending_device_with_its_features_and_rings() {
    let (mut transport, _) = template();
    set_up(&mut transport);
    let saved = transport.save().unwrap();
    assert!(saved.active);
    assert_eq!(saved.driver_features, PENDING_FEATURES);
    assert_eq!(saved.queues.len(), 2);
    let queue = saved.queues[1];
    assert!(queue.ready);
    assert_eq!((queue.max_size, queue.size), (QUEUE_SIZE, 16));
    assert_eq!(
        (queue.desc_table, queue.avail_ring, queue.used_ring),
        (0x20_0000, 0x20_1000, 0x20_2000)
    );
    assert_eq!((queue.next_avail, queue.next_used), (0, 0));
}

#[test]
fn a_restore_binds_the_backend_and_starts_it_on_the_recorded_rings() {
    let (mut transport, _) = template();
    set_up(&mut transport);
    let mut saved = transport.save().unwrap();
    // As if the template's driver had queued requests a backend took.
    saved.queues[1].next_avail = 5;
    saved.queues[1].next_used = 5;

    let (fs, mock) = connect(Behaviour::default());
    check_backend_takes_over(&fs, &saved).unwrap();
    let notify = eventfds();
    let kicks: Vec<EventFd> = notify.iter().map(|e| e.try_clone().unwrap()).collect();
    let mem = create_shared_guest_memory(64 << 20).unwrap();
    let mut restored =
        MmioTransport::restore(Box::new(fs), mem, interrupt(), notify, &saved).unwrap();
    // Nothing reaches the backend before the restored VM is about to run.
    assert!(!mock.codes().contains(&SET_FEATURES));
    restored.resume().unwrap();
    assert!(is_live(&mut restored));

    let requests = mock.requests();
    let features = requests.iter().find(|r| r.code == SET_FEATURES).unwrap();
    assert_eq!(features.u64_at(0), PENDING_FEATURES | 1 << 30);
    let bases: Vec<(u32, u32)> = requests
        .iter()
        .filter(|r| r.code == SET_VRING_BASE)
        .map(|r| (r.u32_at(0), r.u32_at(4)))
        .collect();
    assert_eq!(bases, [(0, 0), (1, 5)]);
    assert_eq!(
        requests.iter().filter(|r| r.code == SET_VRING_KICK).count(),
        2
    );
    // Each kick fd reaches the backend signalled: what the guest kicked
    // before the snapshot is found.
    assert_eq!(kicks[0].read().unwrap(), 1);
    assert_eq!(kicks[1].read().unwrap(), 1);
}

#[test]
fn a_backend_lacking_an_acked_feature_is_refused_by_name() {
    let (mut transport, _) = template();
    set_up(&mut transport);
    let saved = transport.save().unwrap();
    let (fs, _mock) = connect(Behaviour {
        features: VIRTIOFSD_FEATURES & !VIRTIO_RING_F_EVENT_IDX,
        ..Behaviour::default()
    });
    let error = check_backend_takes_over(&fs, &saved).unwrap_err();
    assert!(error.contains("VIRTIO_RING_F_EVENT_IDX"), "{error}");
    assert!(!error.contains("INDIRECT"), "{error}");
    assert!(error.contains("\"share\""), "{error}");
    // A driver that did not ack it is content with that backend.
    let mut modest = saved.clone();
    modest.driver_features &= !VIRTIO_RING_F_EVENT_IDX;
    check_backend_takes_over(&fs, &modest).unwrap();
}

#[test]
fn a_backend_device_with_other_queue_sizes_is_refused() {
    let (mut transport, _) = template();
    set_up(&mut transport);
    let saved = transport.save().unwrap();
    let mock = MockBackend::start(Behaviour::default());
    let failures = Arc::new(FailureReporter::new().unwrap());
    let fs = VhostUserFs::connect("share", &mock.socket, 256, failures).unwrap();
    let error = check_backend_takes_over(&fs, &saved).unwrap_err();
    assert!(error.contains("queue-size=1024"), "{error}");
}

#[test]
fn feature_names_name_what_they_can() {
    assert_eq!(
        feature_names(VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 1 << 5),
        "feature bit 5, VIRTIO_RING_F_EVENT_IDX, VIRTIO_F_VERSION_1"
    );
    assert_eq!(feature_names(0), "");
}
