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
fn echo_writes_to_its_stdout_stream() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut out = guest.stream(1).await;
        let mut echo = request(&["echo", "hello"]);
        echo.stdout = Some(1);
        let process = client.exec(echo).await;
        assert_eq!(read_all(&mut out).await, b"hello\n");
        assert_eq!(client.wait(process).await, ExitStatus::Code(0));
    });
}

#[test]
fn stdin_stderr_env_and_cwd_reach_the_process() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut input = guest.stream(10).await;
        let mut out = guest.stream(11).await;
        let mut err = guest.stream(12).await;
        let mut sh = request(&["sh", "-c", "cat; echo \"$GREETING $(pwd)\" >&2"]);
        sh.env.push("GREETING=hi".into());
        sh.cwd = Some("/tmp".into());
        (sh.stdin, sh.stdout, sh.stderr) = (Some(10), Some(11), Some(12));
        let process = client.exec(sh).await;
        input.write_all(b"through cat").await.unwrap();
        input.shutdown().await.unwrap();
        assert_eq!(read_all(&mut out).await, b"through cat");
        assert_eq!(read_all(&mut err).await, b"hi /tmp\n");
        assert_eq!(client.wait(process).await, ExitStatus::Code(0));
    });
}

#[test]
fn exit_codes_signals_and_exec_failures() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let exit3 = client.exec(request(&["sh", "-c", "exit 3"])).await;
        assert_eq!(client.wait(exit3).await, ExitStatus::Code(3));
        // Waited for: gone.
        assert_eq!(
            kind(client.call(RequestBody::Wait { process: exit3 }).await),
            ErrorKind::NotFound
        );

        let sleeper = client.exec(request(&["sleep", "100"])).await;
        for bad in [0, 65, -1] {
            let signal = RequestBody::Signal {
                process: sleeper,
                signal: bad,
            };
            assert_eq!(kind(client.call(signal).await), ErrorKind::InvalidRequest);
        }
        let kill = RequestBody::Signal {
            process: sleeper,
            signal: 9,
        };
        assert_eq!(client.call(kill).await, Ok(ResponseBody::Done));
        assert_eq!(client.wait(sleeper).await, ExitStatus::Signal(9));
        let unknown = RequestBody::Signal {
            process: 999,
            signal: 9,
        };
        assert_eq!(kind(client.call(unknown).await), ErrorKind::NotFound);

        let missing = client
            .call(RequestBody::Exec(request(&["/no/such/program"])))
            .await;
        match missing {
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::System);
                assert!(e.message.contains("/no/such/program"), "{}", e.message);
            }
            other => panic!("exec of a missing program: {other:?}"),
        }
        let not_executable = client
            .call(RequestBody::Exec(request(&["/etc/passwd"])))
            .await;
        assert_eq!(kind(not_executable), ErrorKind::System);
        let empty = client.call(RequestBody::Exec(request(&[]))).await;
        assert_eq!(kind(empty), ErrorKind::InvalidRequest);
        let nul = client.call(RequestBody::Exec(request(&["ec\0ho"]))).await;
        assert_eq!(kind(nul), ErrorKind::InvalidRequest);
        // Failed execs leave nothing behind.
        assert!(client.list().await.is_empty());
    });
}

#[test]
fn a_wait_does_not_hold_up_other_requests() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let sleeper = client.exec(request(&["sleep", "100"])).await;
        let wait = client.send(RequestBody::Wait { process: sleeper }).await;
        let version = client.send(RequestBody::Version).await;
        assert_eq!(client.recv().await.id, version);
        let kill = client
            .send(RequestBody::Signal {
                process: sleeper,
                signal: 15,
            })
            .await;
        let mut answers = [client.recv().await, client.recv().await];
        answers.sort_by_key(|r| r.id);
        assert_eq!(answers[0].id, wait);
        assert_eq!(
            answers[0].result,
            Ok(ResponseBody::Exited {
                process: sleeper,
                status: ExitStatus::Signal(15)
            })
        );
        assert_eq!(answers[1].id, kill);
    });
}

#[test]
fn exited_processes_are_listed_until_waited_for() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let quick = client.exec(request(&["true"])).await;
        let sleeper = client.exec(request(&["sleep", "100"])).await;
        assert_eq!(client.until_exited(quick).await, ExitStatus::Code(0));
        let signal = RequestBody::Signal {
            process: quick,
            signal: 9,
        };
        assert_eq!(kind(client.call(signal).await), ErrorKind::NotFound);
        let list = client.list().await;
        let info = list.iter().find(|p| p.process == sleeper).unwrap();
        assert_eq!(info.argv, vec!["sleep", "100"]);
        assert_eq!(info.exited, None);
        assert_eq!(client.wait(quick).await, ExitStatus::Code(0));
        assert!(client.list().await.iter().all(|p| p.process != quick));
        let kill = RequestBody::Signal {
            process: sleeper,
            signal: 9,
        };
        client.call(kill).await.unwrap();
        client.wait(sleeper).await;
    });
}

#[test]
fn an_exec_waits_briefly_for_its_streams() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut echo = request(&["echo", "late"]);
        echo.stdout = Some(20);
        let id = client.send(RequestBody::Exec(echo)).await;
        sleep(Duration::from_millis(50)).await;
        let mut out = guest.stream(20).await;
        let response = client.recv().await;
        assert_eq!(response.id, id);
        let Ok(ResponseBody::Started { process, .. }) = response.result else {
            panic!("exec failed: {:?}", response.result)
        };
        assert_eq!(read_all(&mut out).await, b"late\n");
        client.wait(process).await;

        // A stream that never comes fails the exec; the streams that did
        // come stay parked for another try.
        let _present = guest.stream(31).await;
        let mut missing = request(&["true"]);
        (missing.stdout, missing.stderr) = (Some(31), Some(30));
        let started = Instant::now();
        let result = client.call(RequestBody::Exec(missing)).await;
        match result {
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::NotFound);
                assert!(e.message.contains("30"), "{}", e.message);
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(250));
        let mut again = request(&["true"]);
        again.stdout = Some(31);
        let process = client.exec(again).await;
        client.wait(process).await;
    });
}

#[test]
fn bad_hellos_and_duplicate_tokens_are_refused() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut junk = UnixStream::connect(guest.dir.join("stream")).await.unwrap();
        junk.write_all(b"HELLO 1\n").await.unwrap();
        assert!(closed_by_agent(&mut junk).await);
        let mut long = UnixStream::connect(guest.dir.join("stream")).await.unwrap();
        long.write_all(&[b'7'; 64]).await.unwrap();
        assert!(closed_by_agent(&mut long).await);
        let mut silent = UnixStream::connect(guest.dir.join("stream")).await.unwrap();
        let started = Instant::now();
        assert!(closed_by_agent(&mut silent).await);
        assert!(started.elapsed() >= Duration::from_millis(900));

        let mut first = guest.stream(40).await;
        let mut second = guest.stream(40).await;
        assert!(closed_by_agent(&mut second).await);
        let mut echo = request(&["echo", "first"]);
        echo.stdout = Some(40);
        let process = client.exec(echo).await;
        assert_eq!(read_all(&mut first).await, b"first\n");
        client.wait(process).await;
    });
}

#[test]
fn unclaimed_streams_expire() {
    run(async {
        let guest = Guest::start(Limits {
            parked_ttl: Duration::from_millis(200),
            ..limits()
        });
        let mut client = guest.control().await;
        let mut stream = guest.stream(50).await;
        assert!(closed_by_agent(&mut stream).await);
        let mut echo = request(&["true"]);
        echo.stdout = Some(50);
        let result = client.call(RequestBody::Exec(echo)).await;
        assert_eq!(kind(result), ErrorKind::NotFound);
    });
}

#[test]
fn garbage_is_answered_and_other_clients_carry_on() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let frame = |body: &[u8]| {
            let mut f = (body.len() as u32).to_be_bytes().to_vec();
            f.extend_from_slice(body);
            f
        };
        client
            .conn
            .write_all(&frame(br#"{"id":5,"body":{"op":"frobnicate"}}"#))
            .await
            .unwrap();
        let answer = client.recv().await;
        assert_eq!(answer.id, 5);
        assert_eq!(kind(answer.result), ErrorKind::InvalidRequest);
        client.conn.write_all(&frame(b"{oops")).await.unwrap();
        let answer = client.recv().await;
        assert_eq!(answer.id, 0);
        assert_eq!(kind(answer.result), ErrorKind::InvalidRequest);
        assert!(client.call(RequestBody::Version).await.is_ok());

        let mut huge = guest.control().await;
        huge.conn.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let answer = huge.recv().await;
        assert_eq!(
            (answer.id, kind(answer.result)),
            (0, ErrorKind::InvalidRequest)
        );
        let mut byte = [0u8; 1];
        assert_eq!(huge.conn.read(&mut byte).await.unwrap(), 0);

        assert!(client.call(RequestBody::Version).await.is_ok());
        let mut third = guest.control().await;
        assert!(third.call(RequestBody::Version).await.is_ok());
    });
}

#[test]
fn a_terminal_process_has_a_controlling_pty() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut terminal = guest.stream(60).await;
        let mut sh = request(&[
            "sh",
            "-c",
            "test -t 0 && test -t 1 && test -t 2 && echo tty; read line; \
             stty size; echo \"got $line\"",
        ]);
        sh.terminal = true;
        sh.stdin = Some(60);
        let process = client.exec(sh).await;
        let resize = RequestBody::ResizeTerminal {
            process,
            rows: 24,
            columns: 80,
        };
        assert_eq!(client.call(resize).await, Ok(ResponseBody::Done));
        terminal.write_all(b"go\n").await.unwrap();
        let output = String::from_utf8_lossy(&read_all(&mut terminal).await).into_owned();
        assert!(output.contains("tty\r\n"), "{output:?}");
        assert!(output.contains("24 80\r\n"), "{output:?}");
        assert!(output.contains("got go\r\n"), "{output:?}");
        client.wait(process).await;

        let plain = client.exec(request(&["sleep", "100"])).await;
        let resize = RequestBody::ResizeTerminal {
            process: plain,
            rows: 1,
            columns: 1,
        };
        assert_eq!(kind(client.call(resize).await), ErrorKind::InvalidRequest);
        let kill = RequestBody::Signal {
            process: plain,
            signal: 9,
        };
        client.call(kill).await.unwrap();
        client.wait(plain).await;
    });
}

#[test]
fn close_stdin_ends_the_input() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let _input = guest.stream(70).await;
        let mut out = guest.stream(71).await;
        let mut cat = request(&["cat"]);
        (cat.stdin, cat.stdout) = (Some(70), Some(71));
        let process = client.exec(cat).await;
        let close = RequestBody::CloseStdin { process };
        assert_eq!(client.call(close.clone()).await, Ok(ResponseBody::Done));
        assert_eq!(read_all(&mut out).await, b"");
        assert_eq!(client.call(close).await, Ok(ResponseBody::Done));
        assert_eq!(client.wait(process).await, ExitStatus::Code(0));
    });
}

#[test]
fn a_host_that_hangs_up_stdout_gives_the_process_sigpipe() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut out = guest.stream(80).await;
        let mut yes = request(&["yes"]);
        yes.stdout = Some(80);
        let process = client.exec(yes).await;
        let mut some = [0u8; 4096];
        out.read_exact(&mut some).await.unwrap();
        assert!(some.starts_with(b"y\ny\n"));
        drop(out);
        assert_eq!(
            client.wait(process).await,
            ExitStatus::Signal(libc::SIGPIPE)
        );
    });
}

#[test]
fn megabytes_come_through_byte_exact() {
    run(async {
        let guest = Guest::start(limits());
        let mut client = guest.control().await;
        let mut out = guest.stream(90).await;
        let mut seq = request(&["seq", "1", "1000000"]);
        seq.stdout = Some(90);
        let process = client.exec(seq).await;
        let got = read_all(&mut out).await;
        let mut expected = String::new();
        for i in 1..=1_000_000 {
            expected.push_str(&i.to_string());
            expected.push('\n');
        }
        assert_eq!(got.len(), expected.len());
        assert!(got == expected.as_bytes());
        assert_eq!(client.wait(process).await, ExitStatus::Code(0));
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
