//! The virtio-blk device: features, configuration space, and the worker
//! thread that serves the request queue while the driver has it live.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::disk::DiskImage;
use super::request;
use super::{
    BLOCK_SIZE, QUEUE_SIZE, SEG_MAX, SIZE_MAX, VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_ID_BLOCK, VIRTIO_RING_F_EVENT_IDX,
};
use crate::devices::virtio::{ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::memory::GuestMemory;
use crate::seccomp::ThreadKind;

const FEATURES: u64 = VIRTIO_F_VERSION_1
    | VIRTIO_BLK_F_RO
    | VIRTIO_BLK_F_SIZE_MAX
    | VIRTIO_BLK_F_SEG_MAX
    | VIRTIO_BLK_F_BLK_SIZE
    | VIRTIO_RING_F_EVENT_IDX;

/// `struct virtio_blk_config` up to `blk_size`, little-endian: capacity
/// (sectors), size_max, seg_max, geometry (not offered: zero), blk_size.
/// Fields after it belong to features not offered and read as zero.
pub const CONFIG_SIZE: usize = 24;

pub fn config_space(sectors: u64) -> [u8; CONFIG_SIZE] {
    let mut config = [0u8; CONFIG_SIZE];
    config[0..8].copy_from_slice(&sectors.to_le_bytes());
    config[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
    config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
    config[20..24].copy_from_slice(&BLOCK_SIZE.to_le_bytes());
    config
}

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
// epoll tokens.
const STOP: u64 = 0;
const NOTIFY: u64 = 1;

pub struct Block {
    disk: Arc<DiskImage>,
    config: [u8; CONFIG_SIZE],
    /// The worker hands its queue back when stopped, for a snapshot.
    running: Option<(EventFd, JoinHandle<Queue>)>,
}

impl Block {
    pub fn new(disk: DiskImage) -> Block {
        Block {
            config: config_space(disk.sectors()),
            disk: Arc::new(disk),
            running: None,
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        FEATURES
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
        if self.running.is_some() {
            return Err("the block device is already active".into());
        }
        let Some(mut queue) = queues.into_iter().next() else {
            return Err("the block device needs its request queue".into());
        };
        queue
            .queue
            .set_event_idx(features & VIRTIO_RING_F_EVENT_IDX != 0);
        let stop = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| e.to_string())?;
        let epoll = Epoll::new().map_err(|e| e.to_string())?;
        for (fd, token) in [(stop.as_raw_fd(), STOP), (queue.notify.as_raw_fd(), NOTIFY)] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(|e| e.to_string())?;
        }
        let worker = Worker {
            mem,
            queue,
            interrupt,
            disk: self.disk.clone(),
            epoll,
        };
        let thread = crate::seccomp::spawn(ThreadKind::Block, "virtio-blk", move || worker.run())
            .map_err(|e| e.to_string())?;
        self.running = Some((stop, thread));
        Ok(())
    }

    fn reset(&mut self) -> bool {
        let Some((stop, thread)) = self.running.take() else {
            return true;
        };
        let _ = stop.write(1);
        thread.join().is_ok()
    }

    /// The disk is read-only and every request is served synchronously by
    /// the worker: stopped, its queue is the device's whole state.
    fn pause(&mut self) -> Result<Vec<Queue>, String> {
        let (stop, thread) = self
            .running
            .take()
            .ok_or("the block device is not active")?;
        let _ = stop.write(1);
        let queue = thread
            .join()
            .map_err(|_| "the block device's worker panicked")?;
        Ok(vec![queue])
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        self.reset();
    }
}

struct Worker {
    mem: GuestMemory,
    queue: ActiveQueue,
    interrupt: Arc<Interrupt>,
    disk: Arc<DiskImage>,
    epoll: Epoll,
}

impl Worker {
    /// Serves until told to stop; hands the queue back.
    fn run(mut self) -> Queue {
        let mut events = [EpollEvent::default(); 2];
        loop {
            self.process_queue();
            let count = match self.epoll.wait(-1, &mut events) {
                Ok(count) => count,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return self.queue.queue,
            };
            for event in &events[..count] {
                if event.data() == STOP {
                    return self.queue.queue;
                }
                let _ = self.queue.notify.read();
            }
        }
    }

    /// Serves every request the driver has made available, then interrupts
    /// the guest once for all of them, if it wants to hear.
    fn process_queue(&mut self) {
        let mem = &self.mem;
        let queue = &mut self.queue.queue;
        let mut completed = false;
        loop {
            // While busy here the driver need not kick (each kick is an exit).
            let _ = queue.disable_notification(mem);
            let mut served = false;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                let used_len = request::handle(chain, mem, &self.disk);
                let _ = queue.add_used(mem, head, used_len);
                served = true;
            }
            completed |= served;
            // Requests made while notifications were off are served now:
            // no kick will announce them. A round that found nothing ends
            // the loop even so, lest a corrupt avail index spin it.
            match queue.enable_notification(mem) {
                Ok(true) if served => continue,
                _ => break,
            }
        }
        if completed && queue.needs_notification(mem).unwrap_or(true) {
            self.interrupt.signal_used_buffer();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::Queue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::devices::virtio::block::disk::tests::patterned_disk;
    use crate::devices::virtio::block::request::{
        VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    };
    use crate::memory::create_guest_memory;

    fn config_u32(block: &Block, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        block.read_config(offset, &mut data);
        u32::from_le_bytes(data)
    }

    #[test]
    fn config_space_holds_capacity_and_limits() {
        let block = Block::new(patterned_disk(9));
        let mut capacity = [0u8; 8];
        block.read_config(0, &mut capacity);
        assert_eq!(u64::from_le_bytes(capacity), 9);
        assert_eq!(config_u32(&block, 8), SIZE_MAX);
        assert_eq!(config_u32(&block, 12), SEG_MAX);
        assert_eq!(config_u32(&block, 16), 0);
        assert_eq!(config_u32(&block, 20), 512);
        // Reads may straddle fields; past the fields offered all is zero.
        assert_eq!(config_u32(&block, 21), 2);
        assert_eq!(config_u32(&block, 24), 0);
        assert_eq!(config_u32(&block, u64::MAX), 0);
    }

    #[test]
    fn a_read_only_disk_is_offered_without_flush() {
        let block = Block::new(patterned_disk(1));
        assert_eq!(block.device_type(), 2);
        let features = block.features();
        for bit in [32, 5, 2, 6] {
            assert_ne!(features & (1 << bit), 0, "bit {bit}");
        }
        // FLUSH, CONFIG_WCE, DISCARD, WRITE_ZEROES, INDIRECT_DESC.
        for bit in [9, 11, 13, 14, 28] {
            assert_eq!(features & (1 << bit), 0, "bit {bit}");
        }
        assert_eq!(block.queue_max_sizes(), &[QUEUE_SIZE]);
    }

    const DESC_TABLE: u64 = 0x10_0000;
    const AVAIL: u64 = 0x11_0000;
    const USED: u64 = 0x12_0000;
    const SIZE: u16 = 16;

    fn write_desc(mem: &GuestMemory, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = GuestAddress(DESC_TABLE + u64::from(index) * 16);
        mem.write_obj(Descriptor::new(addr, len, flags, next), at)
            .unwrap();
    }

    /// A request at `base`: header, 512 bytes of data, status; descriptors
    /// `first..first + 3`.
    fn write_request(mem: &GuestMemory, first: u16, base: u64, request_type: u32) {
        const NEXT: u16 = 1;
        const WRITE: u16 = 2;
        mem.write_obj(request_type, GuestAddress(base)).unwrap();
        mem.write_obj(1u64, GuestAddress(base + 8)).unwrap();
        write_desc(mem, first, base, 16, NEXT, first + 1);
        write_desc(mem, first + 1, base + 0x100, 512, NEXT | WRITE, first + 2);
        write_desc(mem, first + 2, base + 0x400, 1, WRITE, 0);
    }

    fn live_queue(mem: &GuestMemory) -> Queue {
        let mut queue = Queue::new(QUEUE_SIZE).unwrap();
        queue.set_size(SIZE);
        queue.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
        queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        queue.set_used_ring_address(Some(USED as u32), Some(0));
        queue.set_ready(true);
        assert!(queue.is_valid(mem));
        queue
    }

    #[test]
    fn a_batch_of_requests_completes_with_one_interrupt() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let notify = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let interrupt = Arc::new(Interrupt::new(irqfd));
        let mut block = Block::new(patterned_disk(4));
        let queue = ActiveQueue {
            queue: live_queue(&mem),
            notify: notify.try_clone().unwrap(),
        };
        let features = FEATURES;
        block
            .activate(mem.clone(), features, vec![queue], interrupt.clone())
            .unwrap();

        write_request(&mem, 0, 0x20_0000, VIRTIO_BLK_T_IN);
        write_request(&mem, 3, 0x21_0000, VIRTIO_BLK_T_GET_ID);
        write_request(&mem, 6, 0x22_0000, 4); // FLUSH
        for (slot, head) in [0u16, 3, 6].into_iter().enumerate() {
            mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot as u64))
                .unwrap();
        }
        mem.write_obj(3u16, GuestAddress(AVAIL + 2)).unwrap();
        notify.write(1).unwrap();

        let deadline = Instant::now() + Duration::from_secs(5);
        while mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap() != 3 {
            assert!(Instant::now() < deadline, "requests not completed");
            std::thread::sleep(Duration::from_millis(1));
        }
        let used = |slot: u64| -> (u32, u32) {
            let at = USED + 4 + 8 * slot;
            (
                mem.read_obj(GuestAddress(at)).unwrap(),
                mem.read_obj(GuestAddress(at + 4)).unwrap(),
            )
        };
        assert_eq!(used(0), (0, 513));
        assert_eq!(used(1), (3, 21));
        assert_eq!(used(2), (6, 1));
        let status = |base: u64| mem.read_obj::<u8>(GuestAddress(base + 0x400)).unwrap();
        assert_eq!(status(0x20_0000), VIRTIO_BLK_S_OK);
        assert_eq!(status(0x21_0000), VIRTIO_BLK_S_OK);
        assert_eq!(status(0x22_0000), VIRTIO_BLK_S_UNSUPP);
        let mut id = [0u8; 10];
        mem.read_slice(&mut id, GuestAddress(0x21_0100)).unwrap();
        assert_eq!(&id, b"runvm-root");

        assert_eq!(interrupt.irqfd().read().unwrap(), 1);
        assert_eq!(interrupt.status(), 1);
        // With EVENT_IDX the device asks for the next kick at avail index 3.
        let avail_event: u16 = mem
            .read_obj(GuestAddress(USED + 4 + 8 * u64::from(SIZE)))
            .unwrap();
        assert_eq!(avail_event, 3);

        assert!(block.reset());
        assert!(block.running.is_none());
    }
}
