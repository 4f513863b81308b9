//! Per-thread seccomp filters: each kind of VMM thread confines itself to
//! the system calls it needs, before it touches anything the guest
//! controls.
//!
//! - [`enable`], once, early in the process: installs the SIGSYS handler
//!   ([`trap`]) and switches the filters on. Without it [`apply`] and
//!   [`spawn`] confine nothing (unit tests, `runvm-vmm --seccomp=off`).
//! - [`apply`]: a thread installs its kind's filter on itself. The vCPU
//!   threads do so before their first KVM_RUN, the main thread once every
//!   vCPU runs.
//! - [`spawn`]: starts a device thread that applies its filter first.
//!   Filters are inherited and stack (a call must pass them all), so device
//!   threads, which a vCPU activates, are not started by the vCPU thread:
//!   its filter would bound theirs. A [`spawner`] thread started before
//!   the vCPUs starts them instead.
//!
//! A forbidden call traps: the handler writes
//! `runvm-vmm: killed by seccomp: syscall N (name) in the KIND thread` to
//! stderr and ends the process with [`EXIT_STATUS`].
//!
//! The allow-lists ([`rules`]) were measured with `strace -f` on container
//! boots, execs, terminals and virtio-fs shares, then checked against the
//! code each thread runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use seccompiler::BpfProgram;

mod names;
mod rules;
mod spawner;
mod trap;

#[cfg(test)]
mod tests;

pub use names::name as syscall_name;
pub use spawner::start_spawner;

/// runvm-vmm's exit status when a thread made a call its filter forbids.
pub const EXIT_STATUS: i32 = 7;
/// What the report line starts with, for whoever reads the VMM's stderr.
pub const REPORT_PREFIX: &str = "runvm-vmm: killed by seccomp: ";

/// The kinds of thread the VMM runs, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// After set-up: waits for the VM to end, then stops the vCPUs.
    Main,
    /// Runs the guest (KVM_RUN) and serves its port and MMIO exits.
    Vcpu,
    /// Starts the device threads a vCPU asks for.
    Spawner,
    /// Serves the virtio-blk request queue.
    Block,
    /// The virtio-vsock event loop and its Unix sockets.
    Vsock,
    /// Watches a vhost-user (virtio-fs) connection.
    FsWatch,
    /// Moves one virtio-net device's frames to and from its tap.
    Net,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 7] = [
        ThreadKind::Main,
        ThreadKind::Vcpu,
        ThreadKind::Spawner,
        ThreadKind::Block,
        ThreadKind::Vsock,
        ThreadKind::FsWatch,
        ThreadKind::Net,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Main => "main",
            ThreadKind::Vcpu => "vCPU",
            ThreadKind::Spawner => "spawner",
            ThreadKind::Block => "virtio-blk",
            ThreadKind::Vsock => "vsock",
            ThreadKind::FsWatch => "vhost-user watch",
            ThreadKind::Net => "virtio-net",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the seccomp filter of the {} thread: {source}", .kind.name())]
    Build {
        kind: ThreadKind,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("cannot install the seccomp filter of the {} thread: {source}", .kind.name())]
    Install {
        kind: ThreadKind,
        #[source]
        source: seccompiler::Error,
    },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(#[source] std::io::Error),
}

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Switches the filters on for this process and installs the SIGSYS
/// handler that reports a violation. Starts no thread, so a jail can still
/// unshare or fork after it.
pub fn enable() -> Result<(), SeccompError> {
    trap::install_handler().map_err(SeccompError::Handler)?;
    ENABLED.store(true, Ordering::Release);
    Ok(())
}

pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// The BPF programs of `kind`'s filter, in the order to install them.
pub fn filters(kind: ThreadKind) -> Result<Vec<BpfProgram>, SeccompError> {
    rules::programs(kind).map_err(|source| SeccompError::Build { kind, source })
}

/// How many system calls `kind`'s filter lets through, some only with
/// certain arguments.
pub fn allowed_calls(kind: ThreadKind) -> Result<usize, SeccompError> {
    rules::allowed_count(kind).map_err(|source| SeccompError::Build { kind, source })
}

/// Confines the calling thread to `kind`'s filter, if filters are on.
pub fn apply(kind: ThreadKind) -> Result<(), SeccompError> {
    if !is_enabled() {
        return Ok(());
    }
    install(kind, &filters(kind)?)
}

/// Installs programs built by [`filters`]; allocates nothing, so a forked
/// child may call it.
pub fn install(kind: ThreadKind, programs: &[BpfProgram]) -> Result<(), SeccompError> {
    trap::set_thread_kind(kind);
    for program in programs {
        seccompiler::apply_filter(program)
            .map_err(|source| SeccompError::Install { kind, source })?;
    }
    Ok(())
}

/// Starts thread `name` of `kind`, which applies its filter before running
/// `body`. Through the spawner once it runs, else directly.
pub fn spawn<F, T>(kind: ThreadKind, name: &str, body: F) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let confined = move || {
        if let Err(error) = apply(kind) {
            // Never run unconfined what was meant to be confined.
            eprintln!("runvm-vmm: {error}");
            // SAFETY: ends the process at once; nothing is left half-done
            // that the exit would need.
            unsafe { libc::_exit(1) };
        }
        body()
    };
    spawner::spawn(name.to_string(), confined)
}
