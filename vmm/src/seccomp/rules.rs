//! The allow-list of each thread kind. Everything else traps.
//!
//! Measured with `strace -f` on runvm-vmm while containers booted, ran
//! execs with and without terminals, and used virtio-fs shares; then read
//! against the code each thread runs, for paths the runs did not take
//! (device resets, a backend that fails). Arguments are filtered where it
//! is cheap: ioctl request numbers, socket family, clone flags, prctl
//! options, and no new executable memory.

use std::collections::BTreeMap;

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_fpu, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msrs,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_translation, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    KVMIO,
};
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule, TargetArch,
};

use super::ThreadKind;

vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
vmm_sys_util::ioctl_iowr_nr!(KVM_TRANSLATE, KVMIO, 0x85, kvm_translation);
// What a snapshot reads (crate::snapshot).
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_MSRS, KVMIO, 0x88, kvm_msrs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_FPU, KVMIO, 0x8c, kvm_fpu);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_LAPIC, KVMIO, 0x8e, kvm_lapic_state);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_MP_STATE, KVMIO, 0x98, kvm_mp_state);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_VCPU_EVENTS, KVMIO, 0x9f, kvm_vcpu_events);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_DEBUGREGS, KVMIO, 0xa1, kvm_debugregs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_XSAVE, KVMIO, 0xa4, kvm_xsave);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_XCRS, KVMIO, 0xa6, kvm_xcrs);
vmm_sys_util::ioctl_iowr_nr!(KVM_GET_IRQCHIP, KVMIO, 0x62, kvm_irqchip);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_PIT2, KVMIO, 0x9f, kvm_pit_state2);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_CLOCK, KVMIO, 0x7c, kvm_clock_data);

/// The clone flags glibc's pthread_create passes: a thread, never a
/// process.
pub const THREAD_CLONE_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

type Result<T> = std::result::Result<T, BackendError>;

/// The calls a filter lets through: each either always, or when one of
/// its rules (conditions ANDed) matches.
#[derive(Default)]
struct Allow {
    calls: BTreeMap<i64, Option<Vec<SeccompRule>>>,
}

impl Allow {
    fn any(&mut self, calls: &[libc::c_long]) {
        for &call in calls {
            self.calls.insert(call, None);
        }
    }

    fn when(&mut self, call: libc::c_long, conditions: Vec<Cond>) -> Result<()> {
        let rule = SeccompRule::new(conditions)?;
        if let Some(rules) = self.calls.entry(call).or_insert_with(|| Some(Vec::new())) {
            rules.push(rule);
        }
        Ok(())
    }

    /// `call` when its 32-bit argument `arg` is one of `values`.
    fn when_one_of(&mut self, call: libc::c_long, arg: u8, values: &[u64]) -> Result<()> {
        for &value in values {
            self.when(call, vec![eq32(arg, value)?])?;
        }
        Ok(())
    }

    fn len(&self) -> usize {
        self.calls.len()
    }

    fn program(self) -> Result<BpfProgram> {
        let rules = self
            .calls
            .into_iter()
            .map(|(call, rules)| (call, rules.unwrap_or_default()))
            .collect();
        SeccompFilter::new(
            rules,
            SeccompAction::Trap,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )?
        .try_into()
    }
}

fn eq32(arg: u8, value: u64) -> Result<Cond> {
    Cond::new(arg, Len::Dword, Op::Eq, value)
}

fn eq64(arg: u8, value: u64) -> Result<Cond> {
    Cond::new(arg, Len::Qword, Op::Eq, value)
}

/// The protection argument `arg` asks for no executable memory.
fn not_exec(arg: u8) -> Result<Cond> {
    Cond::new(arg, Len::Dword, Op::MaskedEq(libc::PROT_EXEC as u64), 0)
}

/// What every confined thread does: allocate and free memory, take and
/// wake locks, write (stderr, eventfds), close, leave (thread exit, or the
/// SIGSYS handler's _exit), return from a signal handler.
fn common(allow: &mut Allow) -> Result<()> {
    use libc::*;
    allow.any(&[
        SYS_brk,
        SYS_munmap,
        SYS_madvise,
        SYS_mremap,
        SYS_futex,
        SYS_sched_yield,
        SYS_close,
        SYS_write,
        SYS_clock_gettime,
        SYS_gettid,
        // glibc's malloc sizes a new thread's arena by the CPUs it may use.
        SYS_sched_getaffinity,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_restart_syscall,
        // A Rust thread's exit takes down its alternate signal stack.
        SYS_sigaltstack,
        SYS_exit,
        SYS_exit_group,
        // Answered EACCES by the filter of `opening_files_eacces`.
        SYS_open,
        SYS_openat,
        SYS_openat2,
    ]);
    allow.when(SYS_mmap, vec![not_exec(2)?])?;
    allow.when(SYS_mprotect, vec![not_exec(2)?])?;
    // Rust checks with F_GETFD that a descriptor it closes is open (when
    // built with debug assertions).
    allow.when_one_of(SYS_fcntl, 1, &[F_GETFD as u64])
}

/// After set-up: wait on the signalfd and eventfds, kick and join the
/// vCPUs, tear the devices down (the vsock socket file is removed).
fn main(allow: &mut Allow) -> Result<()> {
    use libc::*;
    allow.any(&[
        SYS_poll,
        SYS_read,
        SYS_getpid,
        SYS_clock_nanosleep,
        SYS_unlink,
    ]);
    let kick = crate::vcpu::kick_signal() as u64;
    allow.when(SYS_tgkill, vec![eq32(2, kick)?])?;
    snapshot(allow)
}

/// Saving a paused VM (crate::snapshot), on the main thread: the state
/// of the stopped vCPUs and of the VM, written to the snapshot's files,
/// which were opened before any confinement.
fn snapshot(allow: &mut Allow) -> Result<()> {
    use libc::*;
    allow.any(&[SYS_pwrite64, SYS_ftruncate, SYS_fsync]);
    allow.when_one_of(
        SYS_ioctl,
        1,
        &[
            KVM_GET_MP_STATE(),
            KVM_GET_REGS(),
            KVM_GET_SREGS(),
            KVM_GET_FPU(),
            KVM_GET_XSAVE(),
            KVM_GET_XCRS(),
            KVM_GET_DEBUGREGS(),
            KVM_GET_LAPIC(),
            KVM_GET_MSRS(),
            KVM_GET_VCPU_EVENTS(),
            KVM_GET_IRQCHIP(),
            KVM_GET_PIT2(),
            KVM_GET_CLOCK(),
        ],
    )
}

/// KVM_RUN and what a guest exit leads to: device registers, eventfd
/// signals, the serial console; activating a device (its eventfds, epoll
/// set and, for virtio-fs, the vhost-user requests with their descriptors)
/// and resetting it (joining its thread). Threads are started by the
/// spawner, not here.
fn vcpu(allow: &mut Allow) -> Result<()> {
    use libc::*;
    allow.any(&[
        SYS_read,
        SYS_eventfd2,
        SYS_epoll_create1,
        SYS_epoll_ctl,
        // HashMap keys for the vsock event loop it builds.
        SYS_getrandom,
        SYS_sendmsg,
        SYS_recvmsg,
        // The capped console log wraps round (devices/console_log.rs).
        SYS_lseek,
        SYS_ftruncate,
    ]);
    allow.when_one_of(SYS_fcntl, 1, &[F_DUPFD_CLOEXEC as u64])?;
    allow.when_one_of(
        SYS_ioctl,
        1,
        &[
            KVM_RUN(),
            // The report of a KVM internal error.
            KVM_GET_REGS(),
            KVM_GET_SREGS(),
            KVM_TRANSLATE(),
        ],
    )
}

/// Start threads (never processes), and everything the threads it starts
/// do before and after they confine themselves: filters only narrow.
fn spawner(allow: &mut Allow) -> Result<()> {
    use libc::*;
    allow.when(SYS_clone, vec![eq64(0, THREAD_CLONE_FLAGS)?])?;
    // Its flags are out of a filter's reach: answered ENOSYS by the filter
    // of `clone3_enosys`, so glibc falls back to clone.
    allow.any(&[SYS_clone3, SYS_set_robust_list, SYS_rseq]);
    allow.when_one_of(
        SYS_prctl,
        0,
        &[PR_SET_NAME as u64, PR_SET_NO_NEW_PRIVS as u64],
    )?;
    allow.when(
        SYS_seccomp,
        vec![eq32(0, SECCOMP_SET_MODE_FILTER as u64)?, eq32(1, 0)?],
    )?;
    block(allow)?;
    vsock(allow)?;
    fs_watch(allow)?;
    net(allow)
}

/// Wait for kicks, read the disk image, signal completions.
fn block(allow: &mut Allow) -> Result<()> {
    allow.any(&[libc::SYS_epoll_wait, libc::SYS_read, libc::SYS_pread64]);
    Ok(())
}

/// The event loop: its epoll set, eventfds, the listener that accepts
/// host connections and the Unix sockets it connects to for the guest.
fn vsock(allow: &mut Allow) -> Result<()> {
    use libc::*;
    allow.any(&[
        SYS_epoll_wait,
        SYS_epoll_ctl,
        SYS_read,
        SYS_recvfrom,
        SYS_sendto,
        SYS_connect,
        SYS_shutdown,
        SYS_getrandom,
    ]);
    allow.when_one_of(SYS_socket, 0, &[AF_UNIX as u64])?;
    allow.when_one_of(SYS_accept4, 3, &[SOCK_CLOEXEC as u64])?;
    allow.when_one_of(SYS_ioctl, 1, &[FIONBIO])
}

/// poll for a hang-up or a deadline, read its wake-up eventfd, cut a
/// silent connection.
fn fs_watch(allow: &mut Allow) -> Result<()> {
    allow.any(&[libc::SYS_poll, libc::SYS_read, libc::SYS_shutdown]);
    Ok(())
}

/// Wait for kicks and frames, read and write the tap (write is common),
/// set the tap's offloads to what the guest accepted.
fn net(allow: &mut Allow) -> Result<()> {
    use crate::devices::virtio::net::backend::TUNSETOFFLOAD;
    allow.any(&[libc::SYS_epoll_wait, libc::SYS_epoll_ctl, libc::SYS_read]);
    allow.when_one_of(libc::SYS_ioctl, 1, &[TUNSETOFFLOAD()])
}

fn allow_list(kind: ThreadKind) -> Result<Allow> {
    let mut allow = Allow::default();
    common(&mut allow)?;
    match kind {
        ThreadKind::Main => main(&mut allow)?,
        ThreadKind::Vcpu => vcpu(&mut allow)?,
        ThreadKind::Spawner => spawner(&mut allow)?,
        ThreadKind::Block => block(&mut allow)?,
        ThreadKind::Vsock => vsock(&mut allow)?,
        ThreadKind::FsWatch => fs_watch(&mut allow)?,
        ThreadKind::Net => net(&mut allow)?,
    }
    Ok(allow)
}

/// How many calls `kind`'s filter lets through (some only with certain
/// arguments).
pub fn allowed_count(kind: ThreadKind) -> Result<usize> {
    allow_list(kind).map(|allow| allow.len())
}

/// clone3 answers ENOSYS; everything else passes to the next filter.
fn clone3_enosys() -> Result<BpfProgram> {
    let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )?
    .try_into()
}

/// Opening a file answers EACCES, in every thread. No thread opens one on
/// purpose, but glibc's malloc does once: the first time a thread's arena
/// shrinks it reads /proc/sys/vm/overcommit_memory, and does without it
/// when the open fails. A refusal keeps the VMM running where a trap
/// would end it; nothing is opened either way.
fn opening_files_eacces() -> Result<BpfProgram> {
    let rules = BTreeMap::from([
        (libc::SYS_open, Vec::new()),
        (libc::SYS_openat, Vec::new()),
        (libc::SYS_openat2, Vec::new()),
    ]);
    SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EACCES as u32),
        TargetArch::x86_64,
    )?
    .try_into()
}

/// `kind`'s filter: BPF programs to install in this order. Stacked
/// filters all run and the strictest answer wins, so a call answered with
/// an errno by one filter must be allowed by the allow-list.
pub fn programs(kind: ThreadKind) -> Result<Vec<BpfProgram>> {
    let mut programs = vec![opening_files_eacces()?];
    if kind == ThreadKind::Spawner {
        programs.push(clone3_enosys()?);
    }
    programs.push(allow_list(kind)?.program()?);
    Ok(programs)
}
