//! The server end to end on the host: Unix sockets stand in for vsock, an
//! eventfd written by a SIGCHLD handler for the signalfd, and real
//! processes run. The tests reap with `waitpid(-1)`, so they run one at a
//! time.

use std::collections::HashMap;
use std::future::Future;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

use runvm_agent_api::{read_frame, write_frame, ExitStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::*;
use tokio::sync::Notify;
use tokio::time::Instant;

static SERIAL: Mutex<()> = Mutex::new(());

pub(crate) fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

static EVENTS: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_sigchld(_: libc::c_int) {
    // SAFETY: write(2) is async-signal-safe; errno is kept for the
    // interrupted code.
    unsafe {
        let errno = *libc::__errno_location();
        let one: u64 = 1;
        libc::write(
            EVENTS.load(Ordering::Relaxed),
            (&one as *const u64).cast(),
            8,
        );
        *libc::__errno_location() = errno;
    }
}

/// What the signalfd is in the guest: readable after SIGCHLD.
fn child_events() -> Fd {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: a new eventfd and a handler that only writes to it.
        unsafe {
            let fd = libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
            assert!(fd >= 0);
            EVENTS.store(fd, Ordering::Relaxed);
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigchld as *const () as usize;
            action.sa_flags = libc::SA_RESTART | libc::SA_NOCLDSTOP;
            assert_eq!(
                libc::sigaction(libc::SIGCHLD, &action, std::ptr::null_mut()),
                0
            );
        }
    });
    // SAFETY: dup of our eventfd; the copy is owned by the new Fd.
    let fd = unsafe { libc::fcntl(EVENTS.load(Ordering::Relaxed), libc::F_DUPFD_CLOEXEC, 0) };
    assert!(fd >= 0);
    Fd::new(unsafe { OwnedFd::from_raw_fd(fd) }).unwrap()
}

pub(crate) fn run<F: Future>(test: F) -> F::Output {
    let _serial = one_at_a_time();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&runtime, test)
}

pub(crate) fn limits() -> Limits {
    Limits {
        hello_timeout: Duration::from_secs(1),
        parked_ttl: Duration::from_secs(5),
        exec_stream_wait: Duration::from_millis(300),
        linger: Duration::from_secs(2),
        shutdown_settle: Duration::ZERO,
        ..Limits::default()
    }
}

pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// A server on Unix sockets in a fresh directory.
pub(crate) struct Guest {
    dir: PathBuf,
    shutdown: Rc<Notify>,
}

impl Guest {
    pub(crate) fn start(limits: Limits) -> Guest {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "runvm-agent-test-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let listen = |name: &str| {
            let listener = UnixListener::bind(dir.join(name)).unwrap();
            Listener::new(OwnedFd::from(listener)).unwrap()
        };
        let shutdown = Rc::new(Notify::new());
        let agent = Agent::new(limits, OnShutdown::Notify(shutdown.clone()));
        spawn_local(serve(
            agent,
            listen("control"),
            listen("stream"),
            child_events(),
        ));
        Guest { dir, shutdown }
    }

    pub(crate) async fn control(&self) -> Client {
        Client {
            conn: UnixStream::connect(self.dir.join("control")).await.unwrap(),
            next_id: 1,
        }
    }

    /// A stream connection that has said its hello.
    pub(crate) async fn stream(&self, token: u64) -> UnixStream {
        let mut stream = UnixStream::connect(self.dir.join("stream")).await.unwrap();
        stream
            .write_all(StreamHello { token }.to_line().as_bytes())
            .await
            .unwrap();
        stream
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) struct Client {
    conn: UnixStream,
    next_id: u64,
}

impl Client {
    async fn send(&mut self, body: RequestBody) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.conn, &Request { id, body })
            .await
            .unwrap();
        id
    }

    async fn recv(&mut self) -> Response {
        timeout(PATIENCE, read_frame(&mut self.conn))
            .await
            .expect("an answer in time")
            .expect("a well-formed answer")
    }

    pub(crate) async fn call(&mut self, body: RequestBody) -> Result<ResponseBody, AgentError> {
        let id = self.send(body).await;
        let response = self.recv().await;
        assert_eq!(response.id, id);
        response.result
    }

    /// Starts a process; returns its id.
    async fn exec(&mut self, request: ExecRequest) -> u64 {
        match self.call(RequestBody::Exec(request)).await {
            Ok(ResponseBody::Started { process, pid }) => {
                assert!(pid > 0);
                process
            }
            other => panic!("exec failed: {other:?}"),
        }
    }

    async fn wait(&mut self, process: u64) -> ExitStatus {
        match self.call(RequestBody::Wait { process }).await {
            Ok(ResponseBody::Exited { process: p, status }) => {
                assert_eq!(p, process);
                status
            }
            other => panic!("wait failed: {other:?}"),
        }
    }

    async fn list(&mut self) -> Vec<runvm_agent_api::ProcessInfo> {
        match self.call(RequestBody::ListProcesses).await {
            Ok(ResponseBody::Processes { processes }) => processes,
            other => panic!("list failed: {other:?}"),
        }
    }

    /// Polls the table until `process` shows as exited.
    async fn until_exited(&mut self, process: u64) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let list = self.list().await;
            let info = list.iter().find(|p| p.process == process).expect("listed");
            if let Some(status) = info.exited {
                return status;
            }
            assert!(Instant::now() < deadline, "process {process} never ended");
            sleep(Duration::from_millis(20)).await;
        }
    }
}

fn request(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
        ..ExecRequest::default()
    }
}

pub(crate) async fn read_all(stream: &mut UnixStream) -> Vec<u8> {
    let mut all = Vec::new();
    timeout(PATIENCE, stream.read_to_end(&mut all))
        .await
        .expect("end of file in time")
        .unwrap();
    all
}

pub(crate) fn kind(result: Result<ResponseBody, AgentError>) -> ErrorKind {
    match result {
        Err(e) => e.kind,
        Ok(body) => panic!("expected an error, got {body:?}"),
    }
}

/// Whether the agent closed `stream` (end of file or reset) in time.
async fn closed_by_agent(stream: &mut UnixStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        timeout(PATIENCE, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[test]
fn version_is_answered_with_the_request_id() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        client.next_id = 41;
        assert_eq!(
            client.call(RequestBody::Version).await,
            Ok(ResponseBody::Version {
                agent: env!("CARGO_PKG_VERSION").into(),
                protocol: PROTOCOL_VERSION
            })
        );
    });
}

#[test]
fn twenty_processes_at_once() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut outs = Vec::new();
        for token in 100..120 {
            outs.push(guest.stream(token).await);
        }
        let mut ids = Vec::new();
        for token in 100..120u64 {
            let mut echo = request(&["echo", &token.to_string()]);
            echo.stdout = Some(token);
            ids.push(client.send(RequestBody::Exec(echo)).await);
        }
        let mut processes = HashMap::new();
        for _ in 0..20 {
            let answer = client.recv().await;
            let Ok(ResponseBody::Started { process, .. }) = answer.result else {
                panic!("{answer:?}")
            };
            processes.insert(answer.id, process);
        }
        for (i, out) in outs.iter_mut().enumerate() {
            assert_eq!(read_all(out).await, format!("{}\n", 100 + i).as_bytes());
        }
        for id in ids {
            assert_eq!(client.wait(processes[&id]).await, ExitStatus::Code(0));
        }
    });
}

#[test]
fn a_client_that_vanishes_leaves_its_processes_alone() {
    run(async {
        let guest = Guest::start(limits());
        let mut first = guest.control().await;
        let sleeper = first.exec(request(&["sleep", "100"])).await;
        first.send(RequestBody::Wait { process: sleeper }).await;
        drop(first);
        let mut second = guest.control().await;
        sleep(Duration::from_millis(50)).await;
        let list = second.list().await;
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].exited, None);
        let kill = RequestBody::Signal {
            process: sleeper,
            signal: 9,
        };
        second.call(kill).await.unwrap();
        assert_eq!(second.wait(sleeper).await, ExitStatus::Signal(9));
    });
}

#[test]
fn connections_and_requests_in_flight_are_bounded() {
    run(async {
        let guest = Guest::start(Limits {
            control_connections: 2,
            in_flight: 1,
            ..limits()
        });
        let mut first = guest.control().await;
        let mut second = guest.control().await;
        let mut third = guest.control().await;
        assert!(closed_by_agent(&mut third.conn).await);

        let sleeper = first.exec(request(&["sleep", "100"])).await;
        let wait = first.send(RequestBody::Wait { process: sleeper }).await;
        let version = first.send(RequestBody::Version).await;
        // One request in flight: the Version is not even read yet.
        let early = timeout(
            Duration::from_millis(200),
            read_frame::<_, Response>(&mut first.conn),
        );
        assert!(early.await.is_err());
        let kill = RequestBody::Signal {
            process: sleeper,
            signal: 9,
        };
        second.call(kill).await.unwrap();
        assert_eq!(first.recv().await.id, wait);
        assert_eq!(first.recv().await.id, version);

        drop(second);
        sleep(Duration::from_millis(50)).await;
        let mut fourth = guest.control().await;
        assert!(fourth.call(RequestBody::Version).await.is_ok());
    });
}

#[test]
fn shutdown_answers_then_kills_what_runs() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut watcher = guest.control().await;
        let sleeper = client.exec(request(&["sleep", "100"])).await;
        let wait = watcher.send(RequestBody::Wait { process: sleeper }).await;
        let stopped = guest.shutdown.notified();
        assert_eq!(
            client.call(RequestBody::Shutdown).await,
            Ok(ResponseBody::Done)
        );
        timeout(PATIENCE, stopped).await.expect("shut down");
        let answer = watcher.recv().await;
        assert_eq!(answer.id, wait);
        assert_eq!(
            answer.result,
            Ok(ResponseBody::Exited {
                process: sleeper,
                status: ExitStatus::Signal(9)
            })
        );
    });
}

#[test]
fn a_process_starts_with_a_clean_signal_state() {
    run(async {
        // As in the guest, where PID 1 keeps SIGCHLD blocked.
        let mut blocked = nix::sys::signal::SigSet::empty();
        blocked.add(nix::sys::signal::Signal::SIGCHLD);
        blocked.add(nix::sys::signal::Signal::SIGUSR1);
        blocked.thread_block().unwrap();
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut out = guest.stream(130).await;
        let mut grep = request(&["grep", "-E", "^(SigBlk|SigIgn)", "/proc/self/status"]);
        grep.stdout = Some(130);
        let process = client.exec(grep).await;
        let status = String::from_utf8(read_all(&mut out).await).unwrap();
        client.wait(process).await;
        blocked.thread_unblock().unwrap();
        for line in status.lines() {
            let mask = line.split_whitespace().nth(1).unwrap();
            let mask = u64::from_str_radix(mask, 16).unwrap();
            // Signals 1 to 31; the test harness's glibc ignores 32 itself.
            assert_eq!(mask & 0x7fff_ffff, 0, "{status}");
        }
        assert_eq!(status.lines().count(), 2, "{status}");
    });
}

#[test]
fn stream_connections_are_bounded() {
    run(async {
        let guest = Guest::start(Limits {
            streams: 2,
            ..limits()
        });
        let mut client = guest.control().await;
        let mut first = guest.stream(140).await;
        let _second = guest.stream(141).await;
        let mut third = guest.stream(142).await;
        assert!(closed_by_agent(&mut third).await);
        let mut echo = request(&["echo", "bounded"]);
        echo.stdout = Some(140);
        let process = client.exec(echo).await;
        assert_eq!(read_all(&mut first).await, b"bounded\n");
        client.wait(process).await;
        // The finished stream gave its place back.
        drop(first);
        sleep(Duration::from_millis(50)).await;
        let mut fourth = guest.stream(143).await;
        let mut echo = request(&["echo", "again"]);
        echo.stdout = Some(143);
        let process = client.exec(echo).await;
        assert_eq!(read_all(&mut fourth).await, b"again\n");
        client.wait(process).await;
    });
}

#[test]
fn uid_gid_and_a_bad_cwd() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        // SAFETY: getuid(2) cannot fail.
        if unsafe { libc::getuid() } == 0 {
            let mut out = guest.stream(150).await;
            let mut ids = request(&["sh", "-c", "id -u; id -g; id -G"]);
            (ids.uid, ids.gid, ids.stdout) = (65534, 65533, Some(150));
            let process = client.exec(ids).await;
            assert_eq!(read_all(&mut out).await, b"65534\n65533\n65533\n");
            assert_eq!(client.wait(process).await, ExitStatus::Code(0));
        }
        let mut lost = request(&["true"]);
        lost.cwd = Some("/no/such/dir".into());
        let result = client.call(RequestBody::Exec(lost)).await;
        assert_eq!(kind(result), ErrorKind::System);
    });
}

#[test]
fn a_panicking_future_becomes_an_error() {
    run(async {
        let fine = CatchUnwind(Box::pin(async { 7 })).await;
        assert_eq!(fine, Ok(7));
        let broken = CatchUnwind(Box::pin(async {
            if std::hint::black_box(true) {
                panic!("a bug");
            }
        }))
        .await;
        assert_eq!(broken, Err(()));
    });
}

#[path = "server_process_tests.rs"]
mod process_tests;
