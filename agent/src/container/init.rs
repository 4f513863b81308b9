//! A container's processes between fork and exec.
//!
//! The agent starts stage 1 without copying its memory (see [`launch`]).
//! Stage 1 joins the container's cgroup and any namespace it must join, then
//! clones stage 2 with the namespaces to create and CLONE_PARENT, so the
//! agent is stage 2's parent and reaps it, reports stage 2's pid and
//! exits. With no PID or user namespace to join the agent clones stage 2
//! itself, straight into the cgroup: see [`launch_direct`].
//! Stage 2 waits for the agent's go (after the agent has recorded
//! its pid and, for a new user namespace, written its id maps), then sets
//! itself up and execs.
//!
//! For a new container, stage 2 becomes the init: it builds the mount
//! tree in its mount namespace, pivots into the root, takes on the user,
//! capabilities and limits, reports ready and blocks until the agent says
//! start; then the seccomp filter (when no_new_privileges allows it this
//! late) and exec. For an exec, stage 2 is already in the container's
//! namespaces and only does the process part.
//!
//! They talk over a SOCK_SEQPACKET pair, one message per packet: a kind
//! byte and its payload. The agent's end sees end of file once stage 2 has
//! exec'd (the socket is close-on-exec), which is how it knows the exec
//! succeeded. Errors travel as text and end the process.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::finish::{finish, Never};
use super::paths;
use super::phases::phase;
use super::seccomp::SeccompProgram;
use super::spec::{ContainerPlan, ProcessPlan};
use super::terminal;

/// Stage 1 → agent: stage 2's pid (4 bytes, native order).
pub const MSG_PID: u8 = b'P';
/// Agent → stage 2: go on.
pub const MSG_GO: u8 = b'G';
/// Init → agent: set up, waiting for start.
pub const MSG_READY: u8 = b'R';
/// Agent → init: run the program.
pub const MSG_START: u8 = b'S';
/// Either stage → agent: what failed (text); the process then exits.
pub const MSG_ERROR: u8 = b'E';

/// Largest message.
pub const MSG_MAX: usize = 4096;

/// What stage 2 does.
pub enum Job<'a> {
    /// Become the init of a new container.
    Create(&'a ContainerPlan),
    /// Run a process in an existing container's namespaces.
    Exec {
        process: &'a ProcessPlan,
        seccomp: Option<&'a SeccompProgram>,
        guard: Option<&'a SeccompProgram>,
    },
}

impl Job<'_> {
    fn oom_score_adj(&self) -> Option<i32> {
        match self {
            Job::Create(plan) => plan.process.oom_score_adj,
            Job::Exec { process, .. } => process.oom_score_adj,
        }
    }
}

pub struct Launch<'a> {
    pub job: Job<'a>,
    /// cgroup.procs of the container's cgroup, joined by stage 1.
    pub cgroup_procs: Option<&'a Path>,
    /// The container's cgroup directory (for a cgroup mount without a
    /// cgroup namespace).
    pub cgroup_dir: Option<&'a Path>,
    /// Namespaces stage 1 joins: a descriptor and its CLONE_NEW* flag.
    pub join: &'a [(OwnedFd, libc::c_int)],
    /// CLONE_NEW* flags of the namespaces stage 2 is created in.
    pub clone_flags: libc::c_int,
    /// What becomes stdin, stdout and stderr.
    pub stdio: [RawFd; 3],
    /// stdin is a terminal to make the controlling one.
    pub terminal: bool,
    /// The children's end of the sync socket.
    pub sync: RawFd,
    /// The agent's end, which the children close.
    pub agent_end: RawFd,
    /// Staged mounts for the plan's mounts, by index (see `staged`).
    pub premade: &'a [(usize, OwnedFd)],
    /// The agent's empty read-only tmpfs for masked directories, when the
    /// container may share it (see `rootfs::Masker`).
    pub mask_dir: Option<&'a Path>,
}

/// A SOCK_SEQPACKET pair, close-on-exec: (the agent's end, the children's).
pub fn sync_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: socketpair(2) writes two descriptors.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are new descriptors that we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// One message: kind byte, then payload.
pub fn encode(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(1 + payload.len().min(MSG_MAX - 1));
    msg.push(kind);
    msg.extend_from_slice(&payload[..payload.len().min(MSG_MAX - 1)]);
    msg
}

fn send(fd: RawFd, kind: u8, payload: &[u8]) {
    let msg = encode(kind, payload);
    // SAFETY: write(2) from our buffer. Nothing to do if it fails: the
    // agent then sees end of file.
    unsafe { libc::write(fd, msg.as_ptr().cast(), msg.len()) };
}

/// Blocks for the next message; `None` at end of file.
fn recv(fd: RawFd) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MSG_MAX];
    loop {
        // SAFETY: read(2) into our buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            return None;
        }
        buf.truncate(n as usize);
        return Some(buf);
    }
}

fn fail(sync: RawFd, message: &str) -> ! {
    send(sync, MSG_ERROR, message.as_bytes());
    // SAFETY: _exit(2) ends the child without running the agent's
    // destructors or atexit handlers.
    unsafe { libc::_exit(1) }
}

fn errno(what: impl std::fmt::Display) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

pub fn check(ret: libc::c_int, what: impl std::fmt::Display) -> Result<(), String> {
    if ret < 0 {
        Err(errno(what))
    } else {
        Ok(())
    }
}

/// Stage 1's own stack when it runs in the agent's memory; stage 2, a copy
/// of stage 1, goes on on it, so it is as large as a main thread's. Only
/// the pages touched take memory; the lowest page is a guard.
const STAGE1_STACK: usize = 8 << 20;
const GUARD: usize = 4096;

/// An anonymous mapping for a stack, unmapped on drop.
struct Stack(*mut libc::c_void);

impl Stack {
    fn new() -> io::Result<Stack> {
        // SAFETY: a new private anonymous mapping; nothing else refers to it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                STAGE1_STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack(p);
        // SAFETY: the lowest page of our own mapping.
        if unsafe { libc::mprotect(p, GUARD, libc::PROT_NONE) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The 16-byte aligned top, where a stack starts (it grows down).
    fn top(&self) -> *mut libc::c_void {
        ((self.0 as usize + STAGE1_STACK) & !15) as *mut libc::c_void
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: our own mapping, no longer used: stage 1 has exited.
        unsafe { libc::munmap(self.0, STAGE1_STACK) };
    }
}

/// Whether stage 1 may run in the agent's memory: only while the agent
/// has one thread (see [`launch`]). The guest's agent says so when it
/// starts serving; the tests, run by a harness with many threads, fork.
static ONE_THREAD: AtomicBool = AtomicBool::new(false);

/// Called by an agent that has, and keeps, a single thread.
pub fn agent_has_one_thread() {
    ONE_THREAD.store(true, Ordering::Relaxed);
}

/// Starts stage 1; returns its pid in the agent.
///
/// In the guest, stage 1 is started as posix_spawn starts a child:
/// clone(CLONE_VM | CLONE_VFORK) on a stack of its own, so it runs in the
/// agent's memory while the agent waits until it exits. Unlike fork, that
/// copies no page tables; only stage 2's clone copies the agent's memory,
/// once. Stage 1 may use the agent's allocator (its one thread is stopped
/// in clone; stage 1 frees what it takes before it returns), and stage 2's
/// copy finds no lock held. With other threads about, one of them could
/// hold an allocator lock when stage 2's copy is made, so there glibc's
/// fork (which takes them first) starts stage 1.
pub fn launch(l: &Launch<'_>) -> io::Result<i32> {
    extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `Launch` that `launch` borrows for the
        // whole of stage 1 (the agent waits in clone until it exits).
        let l = unsafe { &*(arg as *const Launch<'_>) };
        let code =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage1(l))).unwrap_or(1);
        // SAFETY: as in `fail`; only this process ends (no CLONE_THREAD).
        unsafe { libc::_exit(code) }
    }
    let arg = l as *const Launch<'_> as *mut libc::c_void;
    // Stage 2 straight from the agent joins namespaces after the clone:
    // any but a PID namespace (which only a clone enters) and a user
    // namespace (which takes capabilities away). Not with a new user
    // namespace either: in it, stage 2 has no capabilities over the other
    // namespaces' owners, nor the one a negative oom_score_adj needs.
    let direct = l.clone_flags & libc::CLONE_NEWUSER == 0
        && l.join
            .iter()
            .all(|(_, flag)| *flag != libc::CLONE_NEWPID && *flag != libc::CLONE_NEWUSER);
    if ONE_THREAD.load(Ordering::Relaxed) && direct {
        match launch_direct(l) {
            // A kernel without clone3: stage 1 joins the cgroup instead.
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
            launched => return launched,
        }
    }
    let pid = if ONE_THREAD.load(Ordering::Relaxed) {
        let stack = Stack::new()?;
        // SAFETY: glibc's clone(3) runs `entry` on `stack`, which outlives
        // the child's use of it: CLONE_VFORK returns once the child has
        // exited (stage 2 runs on its own copy).
        let pid = unsafe {
            libc::clone(
                entry,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                arg,
            )
        };
        // Before the unmapping can change errno.
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        pid
    } else {
        // SAFETY: fork(2); the child runs only `entry`, which ends in
        // _exit; glibc's fork leaves malloc usable in the child.
        match unsafe { libc::fork() } {
            0 => entry(arg),
            pid => pid,
        }
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// Without a PID or user namespace to join, the agent clones stage 2
/// itself (there is no stage 1): straight into the container's cgroup
/// (clone3's CLONE_INTO_CGROUP, which spares a migration) and its new
/// namespaces, as fork would, in the agent's one thread; stage 2 joins the
/// other namespaces itself. The agent then tells itself stage 2's pid on
/// the sync socket, as stage 1 would have.
fn launch_direct(l: &Launch<'_>) -> io::Result<i32> {
    let cgroup = match l.cgroup_procs.and_then(Path::parent) {
        Some(dir) => Some(paths::open_dir(dir)?),
        None => None,
    };
    let mut flags = u64::from(l.clone_flags as u32);
    if cgroup.is_some() {
        flags |= CLONE_INTO_CGROUP;
    }
    let args = CloneArgs {
        flags,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_ref().map_or(0, |fd| fd.as_raw_fd() as u64),
        ..CloneArgs::default()
    };
    // SAFETY: clone3(2) without CLONE_VM: like fork, the child runs on a
    // copy of the agent's memory and only `child_setup` and stage 2 then;
    // the agent has one thread, so no lock is held in the copy.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // Never back into the agent's code: a panic ends this process.
        let set_up = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            child_setup(l);
            join_namespaces(l);
            close_the_agents(l);
        }));
        if set_up.is_err() {
            fail(l.sync, "the container set-up panicked");
        }
        run_stage2(l);
    }
    let pid = pid as i32;
    send(l.sync, MSG_PID, &pid.to_ne_bytes());
    Ok(pid)
}

/// clone3(2)'s argument (the fields this file uses come first; the rest
/// stay zero).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What a container process does first, as stage 1 or (see
/// [`launch_direct`]) as stage 2 straight from the agent.
fn child_setup(l: &Launch<'_>) {
    // SAFETY: close(2) of the agent's end, which this process must not keep.
    unsafe { libc::close(l.agent_end) };
    // Through the agent's /proc while this process may still write its
    // own files there; stage 2 inherits it.
    if let Some(adj) = l.job.oom_score_adj() {
        if let Err(e) = std::fs::write("/proc/self/oom_score_adj", adj.to_string()) {
            fail(l.sync, &format!("cannot set oom_score_adj: {e}"));
        }
    }
    // Not dumpable until the exec (which makes the program dumpable again
    // as usual), as with runc: a container process must not ptrace this
    // one, or open its /proc/<pid>/mem, while it holds the agent's
    // privileges and descriptors. Stage 2 inherits it.
    // SAFETY: prctl(2) on this process.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } < 0 {
        fail(l.sync, &errno("cannot make the process non-dumpable"));
    }
}

/// Closes every descriptor but stdio and those `l` names (the process's
/// stdio to be, the sync socket, staged mounts): the rest are the agent's
/// (its connections, other containers' streams and namespaces), which a
/// container process must not hold, not even until its exec.
fn close_the_agents(l: &Launch<'_>) {
    let mut keep: Vec<RawFd> = vec![0, 1, 2, l.sync];
    keep.extend(l.stdio);
    keep.extend(l.premade.iter().map(|(_, fd)| fd.as_raw_fd()));
    keep.retain(|fd| *fd >= 0);
    keep.sort_unstable();
    keep.dedup();
    let mut next: libc::c_uint = 0;
    for fd in keep {
        let fd = fd as libc::c_uint;
        if fd > next {
            // SAFETY: close_range(2) of descriptors nobody here uses.
            unsafe { libc::syscall(libc::SYS_close_range, next, fd - 1, 0 as libc::c_uint) };
        }
        next = fd + 1;
    }
    // SAFETY: as above.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            next,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
}

/// Joins `l.join`, the user namespace last: joining it first would take
/// away the capabilities needed to join the others.
fn join_namespaces(l: &Launch<'_>) {
    let ordered = l
        .join
        .iter()
        .filter(|(_, flag)| *flag != libc::CLONE_NEWUSER)
        .chain(
            l.join
                .iter()
                .filter(|(_, flag)| *flag == libc::CLONE_NEWUSER),
        );
    for (fd, flag) in ordered {
        // SAFETY: setns(2) with a namespace descriptor the agent opened.
        if unsafe { libc::setns(fd.as_raw_fd(), *flag) } < 0 {
            fail(
                l.sync,
                &errno(format_args!("cannot join namespace {flag:#x}")),
            );
        }
    }
}

fn stage1(l: &Launch<'_>) -> libc::c_int {
    phase("s1:start");
    child_setup(l);
    phase("s1:oom+dumpable");
    if let Some(procs) = l.cgroup_procs {
        if let Err(e) = std::fs::write(procs, "0") {
            fail(
                l.sync,
                &format!("cannot join the cgroup ({}): {e}", procs.display()),
            );
        }
    }
    phase("s1:cgroup-join");
    join_namespaces(l);
    close_the_agents(l);
    phase("s1:setns");
    let flags = (l.clone_flags | libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: clone(2) without CLONE_VM: like fork, the child runs on a copy
    // of this process's memory (the agent's), and only `stage2` then.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    if pid < 0 {
        fail(
            l.sync,
            &errno("cannot create the container process (clone)"),
        );
    }
    if pid == 0 {
        run_stage2(l);
    }
    phase("s1:clone");
    send(l.sync, MSG_PID, &(pid as i32).to_ne_bytes());
    0
}

/// Stage 2, to its exec or its end.
fn run_stage2(l: &Launch<'_>) -> ! {
    phase("s2:start");
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stage2(l)));
    let message = match result {
        Ok(Err(message)) => message,
        Ok(Ok(never)) => match never {},
        Err(_) => "the container set-up panicked".to_string(),
    };
    fail(l.sync, &message);
}

fn stage2(l: &Launch<'_>) -> Result<Never, String> {
    match recv(l.sync) {
        Some(msg) if msg.first() == Some(&MSG_GO) => {}
        // The agent gave up on us.
        _ => unsafe { libc::_exit(1) },
    }
    phase("s2:go");
    start_process(l)?;
    phase("s2:stdio");
    match l.job {
        Job::Create(plan) => {
            super::mount_tree::build_container(plan, l)?;
            let sync = l.sync;
            finish(
                &plan.process,
                plan.seccomp.as_ref(),
                plan.guard.as_ref(),
                || {
                    phase("f:ready");
                    send(sync, MSG_READY, &[]);
                    match recv(sync) {
                        Some(msg) if msg.first() == Some(&MSG_START) => {
                            phase("f:start-received");
                            Ok(())
                        }
                        // Deleted before it started.
                        _ => unsafe { libc::_exit(1) },
                    }
                },
            )
        }
        Job::Exec {
            process,
            seccomp,
            guard,
        } => {
            if l.terminal {
                // The root of the container's mount namespace, joined.
                let root = paths::open_dir(Path::new("/"))
                    .map_err(|e| format!("cannot open the container's root: {e}"))?;
                // SAFETY: `root` stays open for the call.
                let root_fd = unsafe { BorrowedFd::borrow_raw(root.as_raw_fd()) };
                terminal::open_in_container(root_fd, false, l.sync)?;
            }
            finish(process, seccomp, guard, || Ok(()))
        }
    }
}

/// Signal mask, session, stdio (a terminal comes later: see
/// [`terminal`]).
fn start_process(l: &Launch<'_>) -> Result<(), String> {
    // SAFETY: plain syscalls on our own state and descriptors.
    unsafe {
        let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(empty.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut());
        // Ignored signals survive exec.
        crate::exec::reset_ignored_signals();
        check(libc::setsid(), "setsid")?;
        for (target, fd) in l.stdio.iter().enumerate() {
            check(
                libc::dup2(*fd, target as libc::c_int),
                "cannot set up stdio (dup2)",
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_bounded() {
        let long = vec![b'x'; 10_000];
        let msg = encode(MSG_ERROR, &long);
        assert_eq!(msg.len(), MSG_MAX);
        assert_eq!(msg[0], MSG_ERROR);
    }
}
