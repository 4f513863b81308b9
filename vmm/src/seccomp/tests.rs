//! Each filter, installed for real in a helper process (this test binary
//! run again for [`probe`]), lets its thread's work through and traps a
//! call outside it with the report line and exit status.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::Command;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::*;

const PROBE: &str = "RUNVM_SECCOMP_PROBE";
const DONE: &str = "probe: the thread's work went through";

/// Runs probe `case` in a new process: (exit status, stderr).
fn run_probe(case: &str) -> (Option<i32>, String) {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "seccomp::tests::probe", "--nocapture"])
        .args(["--test-threads=1", "--quiet"])
        .env(PROBE, case)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), stderr)
}

fn assert_trapped(case: &str, nr: libc::c_long, name: &str, kind: ThreadKind) {
    let (status, stderr) = run_probe(case);
    let line = format!(
        "runvm-vmm: killed by seccomp: syscall {nr} ({name}) in the {} thread",
        kind.name()
    );
    assert!(stderr.contains(DONE), "{case}: work was refused:\n{stderr}");
    assert!(stderr.contains(&line), "{case}: no {line:?} in:\n{stderr}");
    assert_eq!(status, Some(EXIT_STATUS), "{case}:\n{stderr}");
}

#[test]
fn every_filter_builds() {
    for kind in ThreadKind::ALL {
        let programs = filters(kind).unwrap();
        assert!(!programs.is_empty() && programs.iter().all(|p| !p.is_empty()));
        let allowed = allowed_calls(kind).unwrap();
        eprintln!("{kind:?}: {allowed} calls");
        assert!((15..80).contains(&allowed), "{kind:?}: {allowed} calls");
    }
}

#[test]
fn the_vcpu_ioctls_are_kvms() {
    assert_eq!(rules::KVM_RUN(), 0xae80);
    assert_eq!(rules::KVM_TRANSLATE(), 0xc018_ae85);
}

#[test]
fn main_waits_kicks_and_sleeps_but_opens_no_socket() {
    assert_trapped("main", libc::SYS_socket, "socket", ThreadKind::Main);
}

#[test]
fn main_sends_no_signal_but_the_kick() {
    assert_trapped("main-signal", libc::SYS_tgkill, "tgkill", ThreadKind::Main);
}

#[test]
fn the_vcpu_runs_kvm_ioctls_but_creates_no_vcpu() {
    if std::fs::File::open("/dev/kvm").is_err() {
        eprintln!("skipped: /dev/kvm cannot be opened");
        return;
    }
    assert_trapped("vcpu", libc::SYS_ioctl, "ioctl", ThreadKind::Vcpu);
}

#[test]
fn the_spawner_starts_threads_but_no_process() {
    assert_trapped("spawner", libc::SYS_clone, "clone", ThreadKind::Spawner);
}

#[test]
fn a_thread_from_the_spawner_is_bound_by_its_own_filter() {
    assert_trapped(
        "spawned-block",
        libc::SYS_socket,
        "socket",
        ThreadKind::Block,
    );
}

#[test]
fn the_block_worker_reads_the_disk_but_opens_nothing() {
    assert_trapped(
        "block",
        libc::SYS_socketpair,
        "socketpair",
        ThreadKind::Block,
    );
}

#[test]
fn vsock_uses_unix_sockets_only() {
    assert_trapped("vsock", libc::SYS_socket, "socket", ThreadKind::Vsock);
}

#[test]
fn the_watch_polls_and_cuts_but_connects_nowhere() {
    assert_trapped(
        "fs-watch",
        libc::SYS_connect,
        "connect",
        ThreadKind::FsWatch,
    );
}

#[test]
fn the_net_thread_moves_frames_but_opens_no_socket() {
    assert_trapped("net", libc::SYS_socket, "socket", ThreadKind::Net);
}

#[test]
fn without_enable_nothing_is_confined() {
    let (status, stderr) = run_probe("disabled");
    assert_eq!(status, Some(0), "{stderr}");
}

/// The helper process's side: does nothing unless asked through [`PROBE`].
#[test]
fn probe() {
    let Ok(case) = std::env::var(PROBE) else {
        return;
    };
    if case != "disabled" {
        enable().unwrap();
    }
    match case.as_str() {
        "main" | "main-signal" => probe_main(&case),
        "vcpu" => probe_vcpu(),
        "spawner" => probe_spawner(),
        "spawned-block" => probe_spawned_block(),
        "block" => {
            let (disk, epoll, event) = block_setup();
            apply(ThreadKind::Block).unwrap();
            block_work(&disk, &epoll, &event);
            // Refused, not trapped: glibc's malloc tries one file.
            let refused = std::fs::File::open("/proc/sys/vm/overcommit_memory")
                .expect_err("a filtered thread opened a file");
            assert_eq!(refused.kind(), std::io::ErrorKind::PermissionDenied);
            eprintln!("{DONE}");
            UnixStream::pair().unwrap();
        }
        "vsock" => probe_vsock(),
        "fs-watch" => probe_fs_watch(),
        "net" => probe_net(),
        "disabled" => {
            apply(ThreadKind::Block).unwrap();
            UnixStream::pair().unwrap();
            return;
        }
        other => panic!("unknown probe {other}"),
    }
    panic!("the forbidden call of probe {case} went through");
}

fn probe_main(case: &str) {
    crate::vcpu::install_kick_handler().unwrap();
    let dir = std::env::temp_dir().join(format!("runvm-seccomp-{}", std::process::id()));
    std::fs::write(&dir, b"").unwrap();
    let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    apply(ThreadKind::Main).unwrap();
    event.write(1).unwrap();
    let mut fds = [libc::pollfd {
        fd: event.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: a valid array of one pollfd.
    assert_eq!(unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) }, 1);
    assert_eq!(event.read().unwrap(), 1);
    std::thread::sleep(std::time::Duration::from_millis(1));
    std::fs::remove_file(&dir).unwrap();
    let kick = |signal: libc::c_int| {
        // SAFETY: signals this very thread.
        unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), libc::gettid(), signal) }
    };
    assert_eq!(kick(crate::vcpu::kick_signal()), 0);
    eprintln!("{DONE}");
    if case == "main-signal" {
        kick(libc::SIGUSR1);
    } else {
        forbidden_socket();
    }
}

fn probe_vcpu() {
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let vm = kvm.create_vm().unwrap();
    let vcpu = vm.create_vcpu(0).unwrap();
    let (ours, theirs) = UnixStream::pair().unwrap();
    // SAFETY: a fresh descriptor, owned by the File from here on.
    let console = unsafe {
        <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(libc::memfd_create(
            c"console".as_ptr(),
            0,
        ))
    };
    apply(ThreadKind::Vcpu).unwrap();
    // The console log wrapping round (console_log.rs): seek and truncate.
    let mut log = crate::devices::CappedLog::new(console);
    for _ in 0..(5 << 20) / 4096 {
        std::io::Write::write_all(&mut log, &[b'x'; 4096]).unwrap();
    }
    vcpu.get_regs().unwrap();
    vcpu.get_sregs().unwrap();
    let _ = vcpu.translate_gva(0);
    // Activating a device: eventfds, their copies, an epoll set.
    let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let copy = event.try_clone().unwrap();
    let epoll = Epoll::new().unwrap();
    epoll
        .ctl(
            ControlOperation::Add,
            copy.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )
        .unwrap();
    // A vhost-user request passing a descriptor, and its reply.
    use vmm_sys_util::sock_ctrl_msg::ScmSocket;
    ours.send_with_fd(&b"request"[..], event.as_raw_fd())
        .unwrap();
    let mut buf = [0u8; 7];
    let (len, fd) = theirs.recv_with_fd(&mut buf[..]).unwrap();
    assert_eq!((len, &buf), (7, b"request"));
    drop(fd);
    eprintln!("{DONE}");
    let _ = vm.create_vcpu(1);
}

fn probe_spawner() {
    apply(ThreadKind::Spawner).unwrap();
    let worker = std::thread::Builder::new()
        .name("worker".into())
        .spawn(|| 42)
        .unwrap();
    assert_eq!(worker.join().unwrap(), 42);
    eprintln!("{DONE}");
    // SAFETY: fork is expected to trap; a child would _exit at once.
    if unsafe { libc::fork() } == 0 {
        unsafe { libc::_exit(0) };
    }
}

fn probe_spawned_block() {
    let (disk, epoll, event) = block_setup();
    start_spawner().unwrap();
    apply(ThreadKind::Vcpu).unwrap();
    // What a vCPU does to activate the block device.
    let worker = spawn(ThreadKind::Block, "virtio-blk", move || {
        block_work(&disk, &epoll, &event);
        eprintln!("{DONE}");
        forbidden_socket();
    })
    .unwrap();
    let _ = worker.join();
    std::thread::sleep(std::time::Duration::from_secs(5));
}

fn block_setup() -> (std::fs::File, Epoll, EventFd) {
    let path = std::env::temp_dir().join(format!("runvm-seccomp-disk-{}", std::process::id()));
    std::fs::write(&path, b"sector").unwrap();
    let disk = std::fs::File::open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let (epoll, event) = watched_eventfd();
    (disk, epoll, event)
}

/// An eventfd in an epoll set, as a device thread waits for its kicks.
fn watched_eventfd() -> (Epoll, EventFd) {
    let event = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let epoll = Epoll::new().unwrap();
    epoll
        .ctl(
            ControlOperation::Add,
            event.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 1),
        )
        .unwrap();
    (epoll, event)
}

fn block_work(disk: &std::fs::File, epoll: &Epoll, event: &EventFd) {
    use std::os::unix::fs::FileExt;
    event.write(1).unwrap();
    let mut events = [EpollEvent::default(); 2];
    assert_eq!(epoll.wait(0, &mut events).unwrap(), 1);
    assert_eq!(event.read().unwrap(), 1);
    let mut sector = [0u8; 6];
    disk.read_exact_at(&mut sector, 0).unwrap();
    assert_eq!(&sector, b"sector");
    let _buffer = vec![0u8; 1 << 20];
}

fn probe_vsock() {
    use std::os::linux::net::SocketAddrExt;
    // Abstract, so the probe's end leaves no socket file behind.
    let name = format!("runvm-seccomp-vsock-{}", std::process::id());
    let address = std::os::unix::net::SocketAddr::from_abstract_name(name).unwrap();
    let listener = UnixListener::bind_addr(&address).unwrap();
    listener.set_nonblocking(true).unwrap();
    let epoll = Epoll::new().unwrap();
    apply(ThreadKind::Vsock).unwrap();
    let mut client = UnixStream::connect_addr(&address).unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    accepted.set_nonblocking(true).unwrap();
    epoll
        .ctl(
            ControlOperation::Add,
            accepted.as_raw_fd(),
            EpollEvent::new(EventSet::IN, 0),
        )
        .unwrap();
    client.write_all(b"packet").unwrap();
    let mut events = [EpollEvent::default(); 1];
    assert_eq!(epoll.wait(1000, &mut events).unwrap(), 1);
    let mut buf = [0u8; 6];
    accepted.read_exact(&mut buf).unwrap();
    accepted.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = std::collections::HashMap::<u32, u32>::new();
    eprintln!("{DONE}");
    // SAFETY: only asks for a socket, which must trap.
    unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
}

fn forbidden_socket() {
    // SAFETY: only asks for a socket, which must trap.
    unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
}

fn probe_fs_watch() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let wake = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    apply(ThreadKind::FsWatch).unwrap();
    let mut fds = [libc::pollfd {
        fd: ours.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    }];
    // SAFETY: a valid array of one pollfd.
    unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    wake.write(1).unwrap();
    assert_eq!(wake.read().unwrap(), 1);
    ours.shutdown(std::net::Shutdown::Both).unwrap();
    drop(theirs);
    eprintln!("{DONE}");
    // SAFETY: connect with no address, which must trap before it fails.
    unsafe { libc::connect(ours.as_raw_fd(), std::ptr::null(), 0) };
}

fn probe_net() {
    use crate::devices::virtio::net::backend::TUNSETOFFLOAD;
    let (ours, theirs) = std::os::unix::net::UnixDatagram::pair().unwrap();
    let (epoll, event) = watched_eventfd();
    apply(ThreadKind::Net).unwrap();
    // A kick, a frame each way, the interest changed, the offloads set.
    event.write(1).unwrap();
    let mut events = [EpollEvent::default(); 2];
    assert_eq!(epoll.wait(0, &mut events).unwrap(), 1);
    assert_eq!(event.read().unwrap(), 1);
    epoll
        .ctl(
            ControlOperation::Add,
            ours.as_raw_fd(),
            EpollEvent::new(EventSet::IN | EventSet::OUT, 1),
        )
        .unwrap();
    let mut frame = [0u8; 64];
    // SAFETY: plain read and write of a local buffer.
    unsafe {
        assert_eq!(libc::write(ours.as_raw_fd(), frame.as_ptr().cast(), 64), 64);
        assert_eq!(
            libc::read(theirs.as_raw_fd(), frame.as_mut_ptr().cast(), 64),
            64
        );
        // Not a tap: refused by the kernel, allowed by the filter.
        libc::ioctl(ours.as_raw_fd(), TUNSETOFFLOAD(), 0 as libc::c_ulong);
    }
    eprintln!("{DONE}");
    forbidden_socket();
}
