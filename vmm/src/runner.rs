//! Runs a built VM: one thread per vCPU, the main thread waiting for the
//! VM to end, a termination signal, a device failure or, when the VM may
//! be saved, the snapshot signal (SIGUSR1, see [`crate::snapshot`]).

use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::devices::FailureReporter;
use crate::error::Error;
use crate::machine::VmExit;
use crate::seccomp::ThreadKind;
use crate::snapshot::Saver;
use crate::vcpu::{install_kick_handler, kick_signal, Vcpu, VcpuStop};

/// How long to wait for vCPU threads to leave the guest once asked.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a snapshot waits for the devices to settle (a vsock
/// connection the guest is closing).
const QUIET_TIMEOUT: Duration = Duration::from_secs(5);
/// Asks a VMM started with a snapshot directory to save the VM.
pub const SNAPSHOT_SIGNAL: libc::c_int = libc::SIGUSR1;

/// Runs every vCPU on its own thread and waits for the first to stop or
/// for a termination signal; then stops the rest.
/// A device failure reported to `failures` ends the VM too. With a
/// `saver`, the snapshot signal saves the VM, which then ends.
/// `signals` were blocked before any thread was started.
pub(crate) fn run_vcpus(
    vm: &VmFd,
    vcpus: Vec<Vcpu>,
    failures: &FailureReporter,
    signals: TerminationSignals,
    saver: Option<Saver>,
) -> Result<VmExit, Error> {
    let vcpu_count = vcpus.len();
    install_kick_handler().map_err(Error::io("cannot install the vCPU kick handler"))?;
    let stopped =
        EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("cannot create an eventfd"))?;
    let stop = Arc::new(AtomicBool::new(false));
    let (reports, stops) = mpsc::channel();
    // Device threads are started from here on by the spawner (see
    // crate::seccomp), so that a confined vCPU can activate devices.
    crate::seccomp::start_spawner().map_err(Error::io("cannot start the thread spawner"))?;

    let mut threads: Vec<JoinHandle<Vcpu>> = Vec::new();
    for mut vcpu in vcpus {
        let stop = stop.clone();
        let reports = reports.clone();
        let stopped = stopped
            .try_clone()
            .map_err(Error::io("cannot clone an eventfd"))?;
        let thread = std::thread::Builder::new()
            .name(format!("vcpu{}", vcpu.id))
            .spawn(move || {
                // Confined before the guest runs a single instruction.
                let reason = match crate::seccomp::apply(ThreadKind::Vcpu) {
                    Ok(()) => vcpu.run(&stop),
                    Err(error) => VcpuStop::Failed(error.to_string()),
                };
                let _ = reports.send(reason);
                let _ = stopped.write(1);
                vcpu
            })
            .map_err(Error::io("cannot start a vCPU thread"))?;
        threads.push(thread);
    }
    // Every thread the main thread starts is running: confine it too.
    if let Err(error) = crate::seccomp::apply(ThreadKind::Main) {
        stop_vcpus(&stop, threads);
        return Err(error.into());
    }

    let outcome = match signals.wait_for_signal_or(&[&stopped, failures.event()])? {
        Some(SNAPSHOT_SIGNAL) => match saver {
            Some(saver) => {
                // Not checked: pausing a device that is still busy fails
                // the snapshot by name.
                saver.wait_for_quiet_devices(QUIET_TIMEOUT);
                return save(vm, stop_vcpus(&stop, threads), vcpu_count, saver);
            }
            None => VmExit::Signal(SNAPSHOT_SIGNAL),
        },
        Some(signo) => VmExit::Signal(signo),
        // A failed backend explains whatever the guest did next.
        None => match failures.first() {
            Some(reason) => VmExit::DeviceFailed(reason),
            None => stops.try_recv().map(VmExit::from).unwrap_or_else(|_| {
                VmExit::VcpuFailed("a vCPU thread ended without a report".into())
            }),
        },
    };
    stop_vcpus(&stop, threads);
    Ok(outcome)
}

/// Saves the VM whose vCPU threads handed back `vcpus`: all of them, or
/// the snapshot would miss a vCPU still in the guest.
fn save(vm: &VmFd, mut vcpus: Vec<Vcpu>, count: usize, saver: Saver) -> Result<VmExit, Error> {
    if vcpus.len() != count {
        return Err(Error::Snapshot {
            reason: format!(
                "{} of {count} vCPUs did not stop within {VCPU_STOP_TIMEOUT:?}",
                count - vcpus.len()
            ),
        });
    }
    vcpus.sort_by_key(|vcpu| vcpu.id);
    saver.save(vm, &vcpus).map(VmExit::Saved)
}

/// Sets the stop flag and kicks each vCPU until its thread ends. A kick can
/// land just before the thread re-enters the guest, hence the repetition.
/// Returns the vCPUs whose threads ended.
fn stop_vcpus(stop: &AtomicBool, threads: Vec<JoinHandle<Vcpu>>) -> Vec<Vcpu> {
    stop.store(true, Ordering::Release);
    let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
    let mut stopped = Vec::new();
    let mut running = threads;
    while !running.is_empty() && Instant::now() < deadline {
        for thread in &running {
            let _ = thread.kill(kick_signal());
        }
        std::thread::sleep(Duration::from_millis(5));
        let (finished, still_running): (Vec<_>, Vec<_>) =
            running.into_iter().partition(|t| t.is_finished());
        stopped.extend(finished.into_iter().filter_map(|thread| thread.join().ok()));
        running = still_running;
    }
    // A thread still in the guest now is abandoned; the process exits next.
    stopped
}

/// SIGTERM, SIGINT and SIGHUP, blocked in every thread and read through a
/// signalfd, so they end the VM cleanly instead of killing the process;
/// and the snapshot signal when the VM may be saved. Blocked before the
/// VM is built: the device threads a restored VM starts then inherit the
/// mask, instead of dying of a signal meant for the VMM.
pub(crate) struct TerminationSignals {
    fd: File,
}

impl TerminationSignals {
    const SIGNALS: [libc::c_int; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

    pub(crate) fn block(with_snapshot: bool) -> Result<TerminationSignals, Error> {
        let what = "cannot set up the termination signals";
        // SAFETY: plain libc calls on a local, initialised sigset_t.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signo in Self::SIGNALS {
                libc::sigaddset(&mut set, signo);
            }
            if with_snapshot {
                libc::sigaddset(&mut set, SNAPSHOT_SIGNAL);
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(Error::io(what)(std::io::Error::from_raw_os_error(rc)));
            }
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(Error::io(what)(std::io::Error::last_os_error()));
            }
            use std::os::fd::FromRawFd;
            Ok(TerminationSignals {
                fd: File::from_raw_fd(fd),
            })
        }
    }

    /// Blocks until a termination signal arrives (its number) or one of
    /// `events` is signalled (None).
    fn wait_for_signal_or(&self, events: &[&EventFd]) -> Result<Option<i32>, Error> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut fds: Vec<libc::pollfd> = std::iter::once(self.fd.as_raw_fd())
            .chain(events.iter().map(|event| event.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        loop {
            // SAFETY: `fds` is a valid array of two pollfd structures.
            let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io("poll failed")(err));
            }
            if fds[1..].iter().any(|fd| fd.revents != 0) {
                return Ok(None);
            }
            if fds[0].revents != 0 {
                let mut info = [0u8; std::mem::size_of::<libc::signalfd_siginfo>()];
                (&self.fd)
                    .read_exact(&mut info)
                    .map_err(Error::io("cannot read the signalfd"))?;
                let signo = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
                return Ok(Some(signo as i32));
            }
        }
    }
}
