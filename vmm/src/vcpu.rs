//! A vCPU's run loop: enter the guest, serve the exit, repeat until the
//! guest or the VMM ends the VM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kvm_bindings::{KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::devices::{Bus, GuestRequest};
use crate::diagnostics::describe_internal_error;
use crate::memory::GuestMemory;

/// Why a vCPU stopped running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VcpuStop {
    /// The guest asked to power off.
    PowerOff,
    /// The guest asked for a reset (reboot, or a panic with `panic=-1`).
    Reset,
    /// KVM_EXIT_SHUTDOWN: the guest triple-faulted.
    TripleFault,
    /// KVM could not run the guest; the report says where and why.
    InternalError(String),
    /// The VMM asked the vCPU to stop.
    Stopped,
    /// Any other failure of KVM_RUN or an exit the VMM does not handle.
    Failed(String),
}

/// What to do after one exit.
enum Next {
    Continue,
    Stop(VcpuStop),
    DescribeInternalError,
}

pub struct Vcpu {
    pub id: u8,
    pub fd: VcpuFd,
    /// Port I/O.
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub mem: GuestMemory,
    /// The vCPU's KVM statistics descriptor, held open (and never read
    /// here) so that a benchmark can read the guest's work counters from
    /// outside: KVM refuses vCPU ioctls from other processes, but not
    /// reads of a statistics descriptor they duplicated (`pidfd_getfd`).
    pub stats: Option<std::fs::File>,
}

/// `_IO(KVMIO, 0xce)`; kvm-ioctls has no wrapper for it.
const KVM_GET_STATS_FD: libc::c_ulong = 0xAECE;

/// `vcpu`'s statistics descriptor, where the host's KVM has them.
pub fn open_stats(vcpu: &VcpuFd) -> Option<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: an argument-less ioctl on a vCPU descriptor we own; it returns
    // a new descriptor or -1.
    let fd = unsafe { libc::ioctl(vcpu.as_raw_fd(), KVM_GET_STATS_FD as _) };
    // SAFETY: on success the descriptor is new and ours.
    (fd >= 0).then(|| std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

impl Vcpu {
    /// Runs until the guest or `stop` ends it. `stop` is checked before each
    /// entry; a signal kicks the vCPU out of the guest so it gets checked.
    /// The vCPU is handed back afterwards, for a snapshot of its state.
    pub fn run(&mut self, stop: &AtomicBool) -> VcpuStop {
        loop {
            if stop.load(Ordering::Acquire) {
                self.complete_pending_exit();
                return VcpuStop::Stopped;
            }
            let next = match self.fd.run() {
                Ok(exit) => handle_exit(&self.pio, &self.mmio, exit),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
                Err(e) => Next::Stop(VcpuStop::Failed(format!(
                    "KVM_RUN failed on vCPU {}: {e}",
                    self.id
                ))),
            };
            match next {
                Next::Continue => {}
                Next::Stop(reason) => return reason,
                Next::DescribeInternalError => {
                    return VcpuStop::InternalError(describe_internal_error(
                        &mut self.fd,
                        self.id,
                        &self.mem,
                    ))
                }
            }
        }
    }
}

impl Vcpu {
    /// An I/O or MMIO exit is finished by KVM only on the next KVM_RUN (a
    /// read's value reaches the guest's register then): with
    /// `immediate_exit` set, KVM_RUN finishes it and returns at once
    /// without running the guest, so the vCPU's state is whole.
    fn complete_pending_exit(&mut self) {
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
    }
}

fn handle_exit(pio: &Bus, mmio: &Bus, exit: VcpuExit) -> Next {
    match exit {
        VcpuExit::IoOut(port, data) => after_write(pio.write(u64::from(port), data)),
        VcpuExit::IoIn(port, data) => {
            pio.read(u64::from(port), data);
            Next::Continue
        }
        VcpuExit::MmioWrite(address, data) => after_write(mmio.write(address, data)),
        VcpuExit::MmioRead(address, data) => {
            mmio.read(address, data);
            Next::Continue
        }
        VcpuExit::Intr => Next::Continue,
        VcpuExit::Shutdown => Next::Stop(VcpuStop::TripleFault),
        VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => Next::Stop(VcpuStop::PowerOff),
        VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => Next::Stop(VcpuStop::Reset),
        VcpuExit::InternalError => Next::DescribeInternalError,
        VcpuExit::FailEntry(reason, cpu) => Next::Stop(VcpuStop::Failed(format!(
            "KVM_EXIT_FAIL_ENTRY on host CPU {cpu}: hardware entry failure reason {reason:#x}"
        ))),
        // With the in-kernel irqchip KVM handles HLT itself; an exit here
        // means the guest stopped for good.
        VcpuExit::Hlt => Next::Stop(VcpuStop::Failed("the guest halted its vCPU".into())),
        other => Next::Stop(VcpuStop::Failed(format!("unhandled vCPU exit {other:?}"))),
    }
}

fn after_write(request: Option<GuestRequest>) -> Next {
    match request {
        Some(GuestRequest::PowerOff) => Next::Stop(VcpuStop::PowerOff),
        Some(GuestRequest::Reset) => Next::Stop(VcpuStop::Reset),
        None => Next::Continue,
    }
}

/// Signal used to kick vCPU threads out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs a handler for [`kick_signal`] that does nothing: its only job is
/// to make KVM_RUN return EINTR.
pub fn install_kick_handler() -> std::io::Result<()> {
    extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}
    vmm_sys_util::signal::register_signal_handler(kick_signal(), on_kick)
        .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
}

/// Shared by the VMM and its vCPU threads.
pub type StopFlag = Arc<AtomicBool>;
