//! The virtio-mmio transport (vmm/src/devices/virtio/mmio.rs) under a
//! hostile driver: reads and writes at any offset of the window and past
//! it, of any width, with any values, in any order, to a device with any
//! queue sizes. Never a panic; the device is only activated with features
//! it offered (VERSION_1 among them) and with queues that lie in guest
//! memory; registers that identify the device always read the same.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use runvm_vmm::devices::virtio::mmio::MmioTransport;
use runvm_vmm::devices::virtio::{ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use runvm_vmm::devices::BusDevice;
use runvm_vmm::memory::{create_guest_memory, GuestMemory};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

const MAGIC: u32 = 0x7472_6976;
/// The registers, so that most writes hit one.
const REGISTERS: [u64; 24] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0fc, 0x100,
];

fn memory() -> &'static GuestMemory {
    static MEMORY: OnceLock<GuestMemory> = OnceLock::new();
    MEMORY.get_or_init(|| create_guest_memory(16 << 20).expect("16 MiB of guest memory"))
}

struct Device {
    sizes: Vec<u16>,
    features: u64,
    config: [u8; 8],
    resettable: bool,
}

impl VirtioDevice for Device {
    fn device_type(&self) -> u32 {
        19
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        runvm_vmm::devices::virtio::read_config_bytes(&self.config, offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        for (i, byte) in data.iter().enumerate() {
            let at = usize::try_from(offset).ok().and_then(|o| o.checked_add(i));
            if let Some(slot) = at.and_then(|at| self.config.get_mut(at)) {
                *slot = *byte;
            }
        }
    }
    fn activate(
        &mut self,
        mem: GuestMemory,
        features: u64,
        queues: Vec<ActiveQueue>,
        _interrupt: Arc<Interrupt>,
    ) -> Result<(), String> {
        assert_eq!(features & !self.features, 0, "features never offered");
        assert_ne!(features & VIRTIO_F_VERSION_1, 0, "a legacy driver");
        assert_eq!(queues.len(), self.sizes.len());
        for (active, &max) in queues.iter().zip(&self.sizes) {
            let queue = &active.queue;
            assert_eq!(queue.max_size(), max);
            if queue.ready() {
                assert!(queue.is_valid(&mem), "a ready queue outside guest memory");
                assert!(queue.size() <= max, "a queue larger than its maximum");
            }
        }
        Ok(())
    }
    fn reset(&mut self) -> bool {
        self.resettable
    }
}

#[derive(Arbitrary, Debug)]
enum Access {
    /// A 32-bit access to a register.
    ReadRegister {
        index: u8,
    },
    WriteRegister {
        index: u8,
        value: u32,
    },
    /// Anything: offset, width, bytes.
    Read {
        offset: u16,
        width: u8,
    },
    Write {
        offset: u16,
        data: Vec<u8>,
    },
    /// The device raises or holds interrupt bits.
    Raise {
        config: bool,
        hold: Option<u32>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    sizes: Vec<u16>,
    features: u64,
    resettable: bool,
    accesses: Vec<Access>,
}

fn register(index: u8) -> u64 {
    REGISTERS[usize::from(index) % REGISTERS.len()]
}

fuzz_target!(|input: Input| {
    let sizes: Vec<u16> = input.sizes.into_iter().take(4).collect();
    let device = Device {
        sizes: sizes.clone(),
        features: input.features,
        config: [0x42; 8],
        resettable: input.resettable,
    };
    let interrupt = Arc::new(Interrupt::new(
        EventFd::new(libc::EFD_NONBLOCK).expect("interrupt eventfd"),
    ));
    let notify = sizes
        .iter()
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("notify eventfd"))
        .collect();
    let Ok(mut transport) = MmioTransport::new(
        Box::new(device),
        memory().clone(),
        interrupt.clone(),
        notify,
    ) else {
        return;
    };
    for access in input.accesses.into_iter().take(256) {
        match access {
            Access::ReadRegister { index } => {
                let mut data = [0u8; 4];
                transport.read(register(index), &mut data);
            }
            Access::WriteRegister { index, value } => {
                transport.write(register(index), &value.to_le_bytes());
            }
            Access::Read { offset, width } => {
                let mut data = vec![0xaau8; usize::from(width % 16)];
                transport.read(u64::from(offset), &mut data);
            }
            Access::Write { offset, data } => {
                transport.write(u64::from(offset), &data);
            }
            Access::Raise { config, hold } => match hold {
                Some(bits) => interrupt.hold(bits),
                None if config => interrupt.signal_config_change(),
                None => interrupt.signal_used_buffer(),
            },
        }
        let mut magic = [0u8; 4];
        transport.read(0, &mut magic);
        assert_eq!(u32::from_le_bytes(magic), MAGIC);
    }
});
