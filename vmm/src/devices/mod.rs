//! The VM's devices and the buses that route vCPU accesses to them.

mod bus;
mod console_log;
mod exit_port;
pub mod failure;
mod i8042;
mod serial;
pub mod unix_socket;
pub mod virtio;

pub use bus::{Bus, BusDevice, GuestRequest};
pub use console_log::CappedLog;
pub use exit_port::ExitPort;
pub use failure::FailureReporter;
pub use i8042::{I8042, I8042_BASE, I8042_LEN};
pub use serial::{Serial, COM1_IRQ, COM1_PORT};
