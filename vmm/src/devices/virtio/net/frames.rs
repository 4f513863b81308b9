//! Moving frames between the guest's queues and a [`Backend`]: the part of
//! the device that touches guest-supplied descriptors. Every chain is
//! checked before use (its addresses lie in guest memory, its length is
//! that of a frame, it has the right direction); a chain that fails is
//! given back used and empty, never trusted and never fatal. Each pass
//! takes at most a ring's worth of chains, so a guest that keeps its
//! rings full cannot keep the thread from its other work. At most one
//! frame waits on the host side: the one read from the backend that no
//! guest buffer has taken yet; past it the backend keeps (and drops)
//! what arrives.

use std::io::{self, Read, Write};

use std::ops::Deref;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};

use super::backend::Backend;
use super::header::{check_tx, finish_rx, tap_offloads, HEADER_LEN};
use super::{ETH_HEADER, MAX_PACKET, QUEUE_SIZE};
use crate::memory::GuestMemory;

/// The largest frame with its vnet header.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PACKET;
/// The smallest: a header and an Ethernet header.
pub const MIN_FRAME: usize = HEADER_LEN + ETH_HEADER;

/// Where a pass stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    /// Nothing more to do until the next event.
    Done,
    /// RX: a frame waits and the guest has posted no buffer for it.
    /// TX: the backend takes no more frames for now.
    Blocked,
    /// The pass used up its share; run it again soon.
    MoreWork,
    /// RX: the backend failed (a tap deleted under the VM): it is not to
    /// be read again.
    Failed,
}

/// Counts for tests and diagnostics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_frames: u64,
    /// Frames from the backend that no guest buffer could hold.
    pub rx_dropped: u64,
    pub tx_frames: u64,
    /// Chains from the guest that were no valid frame, or that the
    /// backend refused.
    pub tx_dropped: u64,
}

pub struct Frames<B: Backend> {
    backend: B,
    /// The features the driver accepted.
    features: u64,
    rx_buf: Box<[u8]>,
    tx_buf: Box<[u8]>,
    /// The length of the frame in `rx_buf` still to be delivered.
    pending: Option<usize>,
    pub counters: Counters,
}

impl<B: Backend> Frames<B> {
    pub fn new(backend: B) -> Frames<B> {
        Frames {
            backend,
            features: 0,
            rx_buf: vec![0u8; MAX_FRAME].into_boxed_slice(),
            tx_buf: vec![0u8; MAX_FRAME].into_boxed_slice(),
            pending: None,
            counters: Counters::default(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// A driver accepted `features`: the backend learns which offloads
    /// the guest takes. A frame left from the last activation is dropped.
    pub fn activate(&mut self, features: u64) -> io::Result<()> {
        self.features = features;
        self.pending = None;
        self.backend.set_offloads(tap_offloads(features))
    }

    /// Whether a frame waits for a guest buffer.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Hands frames from the backend to the guest's RX buffers. Returns
    /// where it stopped and whether it used any buffer.
    pub fn rx(&mut self, mem: &GuestMemory, queue: &mut Queue) -> (Pass, bool) {
        let mut used_any = false;
        for _ in 0..QUEUE_SIZE {
            let len = match self.pending {
                Some(len) => len,
                None => match self.backend.recv(&mut self.rx_buf) {
                    Ok(len) if (MIN_FRAME..=MAX_FRAME).contains(&len) => {
                        self.pending = Some(len);
                        len
                    }
                    // A tap never reads empty; a closed socket pair does.
                    Ok(0) => return (Pass::Failed, used_any),
                    Ok(_) => {
                        self.counters.rx_dropped += 1;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return (Pass::Done, used_any)
                    }
                    Err(_) => return (Pass::Failed, used_any),
                },
            };
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                // Ask for a kick when buffers come; some may have come
                // while asking.
                match queue.enable_notification(mem) {
                    Ok(true) if queue.pop_descriptor_chain(mem).is_some() => {
                        queue.go_to_previous_position();
                        continue;
                    }
                    _ => return (Pass::Blocked, used_any),
                }
            };
            let head = chain.head_index();
            let mut writer = match chain.writer(mem) {
                Ok(writer) => writer,
                Err(_) => {
                    // Addresses outside guest memory, or an overlong
                    // chain: the buffer is returned empty, the frame waits
                    // for the next one.
                    let _ = queue.add_used(mem, head, 0);
                    used_any = true;
                    continue;
                }
            };
            if writer.available_bytes() < MIN_FRAME {
                // No buffer at all (nothing device-writable): returned
                // empty, the frame waits for the next one.
                let _ = queue.add_used(mem, head, 0);
                used_any = true;
                continue;
            }
            if writer.available_bytes() < len {
                // The frame cannot fit the guest's buffers (larger than the
                // MTU it set up for): the frame goes, the buffer stays.
                queue.go_to_previous_position();
                self.pending = None;
                self.counters.rx_dropped += 1;
                continue;
            }
            let frame = &mut self.rx_buf[..len];
            finish_rx(&mut frame[..HEADER_LEN]);
            let used_len = match writer.write_all(frame) {
                Ok(()) => len as u32,
                Err(_) => 0,
            };
            self.pending = None;
            self.counters.rx_frames += 1;
            let _ = queue.add_used(mem, head, used_len);
            used_any = true;
        }
        (Pass::MoreWork, used_any)
    }

    /// Sends the frames in the guest's TX chains to the backend. Returns
    /// where it stopped and whether it used any chain.
    pub fn tx(&mut self, mem: &GuestMemory, queue: &mut Queue) -> (Pass, bool) {
        let mut used_any = false;
        let mut budget = QUEUE_SIZE;
        loop {
            // While busy here the driver need not kick (each kick is an exit).
            let _ = queue.disable_notification(mem);
            let mut served = false;
            while let Some(chain) = queue.pop_descriptor_chain(mem) {
                let head = chain.head_index();
                if let Some(len) = self.read_frame(mem, chain) {
                    match self.backend.send(&self.tx_buf[..len]) {
                        Ok(()) => self.counters.tx_frames += 1,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            // Read again once the backend has room.
                            queue.go_to_previous_position();
                            let _ = queue.enable_notification(mem);
                            return (Pass::Blocked, used_any);
                        }
                        Err(_) => self.counters.tx_dropped += 1,
                    }
                } else {
                    self.counters.tx_dropped += 1;
                }
                let _ = queue.add_used(mem, head, 0);
                used_any = true;
                served = true;
                budget -= 1;
                if budget == 0 {
                    return (Pass::MoreWork, used_any);
                }
            }
            // Chains added while notifications were off are served now: no
            // kick will announce them. A round that found nothing ends the
            // loop even so, lest a corrupt avail index spin it.
            match queue.enable_notification(mem) {
                Ok(true) if served => continue,
                _ => return (Pass::Done, used_any),
            }
        }
    }

    /// The frame a TX chain holds, copied into `tx_buf` with its header
    /// checked; None when the chain is no valid frame.
    fn read_frame<M>(&mut self, mem: &GuestMemory, chain: DescriptorChain<M>) -> Option<usize>
    where
        M: Clone + Deref<Target = GuestMemory>,
    {
        if !whole_and_readable(chain.clone()) {
            return None;
        }
        // Checks every descriptor's range and the total's overflow.
        let mut reader = chain.reader(mem).ok()?;
        let len = reader.available_bytes();
        if !(MIN_FRAME..=MAX_FRAME).contains(&len) {
            return None;
        }
        reader.read_exact(&mut self.tx_buf[..len]).ok()?;
        let header: &[u8; HEADER_LEN] = self.tx_buf[..HEADER_LEN].try_into().ok()?;
        let checked = check_tx(header, self.features)?;
        self.tx_buf[..HEADER_LEN].copy_from_slice(&checked);
        Some(len)
    }
}

/// A TX chain must end where its driver ended it (virtio-queue cuts a
/// chain that loops or points past the table short, silently: a frame
/// made of what was read so far would be garbage) and hold nothing for
/// the device to write. The walk is bounded by the queue size.
fn whole_and_readable<M>(chain: DescriptorChain<M>) -> bool
where
    M: Deref<Target = GuestMemory>,
{
    let mut last_has_next = false;
    for desc in chain {
        if desc.is_write_only() {
            return false;
        }
        last_has_next = desc.has_next();
    }
    !last_has_next
}
