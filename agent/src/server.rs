//! The agent's API server: control connections, stream connections, the
//! process table and the reaper, on one thread.
//!
//! What a host can rely on:
//! - Requests on one control connection are handled concurrently; answers
//!   carry the request id and may come out of order. Closing (or
//!   half-closing) the connection cancels its pending requests; the
//!   processes it started live on. A malformed request is answered with
//!   `InvalidRequest` (id 0 when its id cannot be read); an oversized frame
//!   is answered so, then the connection is closed.
//! - A stream connection must send its hello within 5 s; it is parked for
//!   30 s at most. An `Exec` waits up to 5 s for the streams it names, then
//!   fails with `NotFound` (streams that did arrive stay parked).
//! - An output stream (stdout, stderr, terminal) is half-closed once the
//!   process side reaches end of file; the agent then waits (10 s at most)
//!   for the host to close its end before it closes the connection, so
//!   that no output is lost in transit. The host should close a stream once
//!   it has read end of file.
//! - Stdin ends (the process reads end of file) when the host half-closes
//!   or closes the stream, on `CloseStdin`, or when the process exits. On a
//!   terminal, this only stops the input; the terminal stays up.
//! - `Wait` answers once the process has exited; several may wait at once.
//!   An exited process stays in the table until waited for (the oldest 128
//!   unwaited ones are kept), then its id is gone: `Wait`, `Signal` and the
//!   rest answer `NotFound`, as does `Signal` to a process that exited.
//!
//! Everything runs as tasks of one tokio `LocalSet` on a current-thread
//! runtime: no locks, no extra threads, and nothing wakes up while the
//! guest is idle. The server takes its listeners and its child-exit event
//! source as plain descriptors, so the tests run the very same code over
//! Unix sockets on the host.

use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use runvm_agent_api::{
    codec, read_frame_bytes, AgentError, ErrorKind, ExecRequest, FrameError, Request, RequestBody,
    Response, ResponseBody, StreamHello, PROTOCOL_VERSION,
};
use serde::Deserialize;
use tokio::io::BufReader;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{spawn_local, JoinSet};
use tokio::time::{sleep, timeout};

use crate::container;
use crate::exec::{self, invalid, system, StreamConn};
use crate::fdio::{Fd, Listener};
use crate::processes::{Lookup, WaitOutcome};
use crate::reaper;
pub use crate::state::{Agent, Limits, OnShutdown};
use crate::state::{Slot, Stream};

/// Serves until the guest powers off. Must run inside a `LocalSet`.
/// `child_events` becomes readable when a child may have exited (a
/// signalfd for SIGCHLD in the guest).
pub async fn serve(agent: Rc<Agent>, control: Listener, streams: Listener, child_events: Fd) {
    spawn_local(reap_children(agent.clone(), child_events));
    spawn_local(accept_streams(agent.clone(), streams));
    accept_control(agent, control).await
}

/// Pause after a failed accept (say, out of descriptors) so that a
/// listener that stays readable does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

async fn accept_control(agent: Rc<Agent>, listener: Listener) {
    loop {
        match listener.accept().await {
            Ok(conn) => match agent.control_slots.try_take() {
                Some(slot) => {
                    spawn_local(serve_control(agent.clone(), conn, slot));
                }
                None => agent_log!("too many control connections; refusing one"),
            },
            Err(e) => {
                agent_log!("accept on the control port failed: {e}");
                sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn accept_streams(agent: Rc<Agent>, listener: Listener) {
    loop {
        match listener.accept().await {
            Ok(fd) => match agent.stream_slots.try_take() {
                Some(slot) => {
                    spawn_local(greet_stream(agent.clone(), StreamConn { fd, _slot: slot }));
                }
                None => agent_log!("too many stream connections; refusing one"),
            },
            Err(e) => {
                agent_log!("accept on the stream port failed: {e}");
                sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Reads a stream's hello line and parks it under its token.
async fn greet_stream(agent: Rc<Agent>, conn: Stream) {
    let mut line = [0u8; StreamHello::MAX_LEN];
    let token = match timeout(agent.limits.hello_timeout, conn.fd.read_line(&mut line)).await {
        Ok(Ok(len)) => match StreamHello::parse(&line[..len]) {
            Some(hello) => hello.token,
            None => {
                agent_log!(
                    "stream connection with a bad hello {:?}; closed",
                    String::from_utf8_lossy(&line[..len])
                );
                return;
            }
        },
        Ok(Err(e)) => {
            agent_log!("stream connection without a hello line ({e}); closed");
            return;
        }
        Err(_) => {
            agent_log!("stream connection sent no hello in time; closed");
            return;
        }
    };
    let parked = agent.streams.borrow_mut().park(token, conn);
    let serial = match parked {
        Ok(serial) => serial,
        Err(e) => {
            agent_log!("stream {token} refused: {e}");
            return;
        }
    };
    agent.stream_arrived.notify_waiters();
    let ttl = agent.limits.parked_ttl;
    let owner = agent.clone();
    let timer = spawn_local(async move {
        sleep(ttl).await;
        let expired = owner.streams.borrow_mut().expire(token, serial);
        if expired.is_some() {
            agent_log!("stream {token} was not claimed in {ttl:?}; closed");
        }
    });
    agent
        .streams
        .borrow_mut()
        .set_expiry(token, serial, timer.abort_handle());
}

/// Runs the reaper whenever `events` says a child may have ended.
async fn reap_children(agent: Rc<Agent>, events: Fd) {
    // Room for a few signalfd records (128 bytes each) or an eventfd count.
    let mut buf = [0u8; 512];
    loop {
        reaper::reap_ready(|pid, status| {
            agent.processes.borrow_mut().record_exit(pid, status);
            agent.containers.borrow_mut().record_exit(pid, status);
        });
        match events.read(&mut buf).await {
            Ok(0) => {
                agent_log!("the child-exit event source closed; no more reaping");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                agent_log!("reading child-exit events failed: {e}");
                sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A response on its way to the writer; `written` fires once it is.
struct Outgoing {
    response: Response,
    written: Option<oneshot::Sender<()>>,
}

/// Writes the responses of one control connection in order, whole frames
/// only, so a cancelled handler never leaves half a frame behind. The
/// writer is the last to hold the connection, so it holds its slot.
async fn write_responses(conn: Rc<Fd>, mut queue: mpsc::Receiver<Outgoing>, _slot: Slot) {
    while let Some(out) = queue.recv().await {
        let id = out.response.id;
        let frame = codec::encode(&out.response).or_else(|e| {
            codec::encode(&Response {
                id,
                result: Err(system(format!("cannot encode the answer: {e}"))),
            })
        });
        let Ok(frame) = frame else { continue };
        if conn.write_all(&frame).await.is_err() {
            // The client is gone; its reader sees that too.
            return;
        }
        container::phases::phase("srv:written");
        container::phases::report("reply");
        if let Some(written) = out.written {
            let _ = written.send(());
        }
    }
}

/// Recovers the id of a request that does not parse, to answer it.
fn request_id(bytes: &[u8]) -> u64 {
    #[derive(Deserialize)]
    struct JustId {
        id: u64,
    }
    serde_json::from_slice::<JustId>(bytes).map_or(0, |r| r.id)
}

fn answer(id: u64, result: Result<ResponseBody, AgentError>) -> Outgoing {
    Outgoing {
        response: Response { id, result },
        written: None,
    }
}

/// One control connection: requests are read in order and handled
/// concurrently (a `Wait` does not hold up the rest); each answer carries
/// its request's id. When the client closes (or half-closes) the
/// connection, its pending requests are cancelled; its processes live on.
async fn serve_control(agent: Rc<Agent>, conn: Fd, slot: Slot) {
    let conn = Rc::new(conn);
    let (queue, writer_queue) = mpsc::channel(agent.limits.in_flight);
    spawn_local(write_responses(conn.clone(), writer_queue, slot));
    let permits = Arc::new(Semaphore::new(agent.limits.in_flight));
    let mut handlers = JoinSet::new();
    let mut reader = BufReader::with_capacity(4096, &*conn);
    loop {
        while handlers.try_join_next().is_some() {}
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let bytes = match read_frame_bytes(&mut reader).await {
            Ok(bytes) => bytes,
            Err(FrameError::Closed) => break,
            Err(e @ FrameError::TooLarge(_)) => {
                // Out of step with the client: say why, then hang up.
                agent_log!("control connection: {e}; closing it");
                let _ = queue.send(answer(0, Err(invalid(e.to_string())))).await;
                break;
            }
            Err(_) => break,
        };
        container::phases::init();
        container::phases::phase("srv:frame");
        let request: Request = match serde_json::from_slice(&bytes) {
            Ok(request) => request,
            Err(e) => {
                let id = request_id(&bytes);
                agent_log!("malformed request (id {id}): {e}");
                let error = invalid(format!("malformed request: {e}"));
                if queue.send(answer(id, Err(error))).await.is_err() {
                    break;
                }
                continue;
            }
        };
        let id = request.id;
        if let RequestBody::Shutdown = request.body {
            shut_down(&agent, id, &queue).await;
            break;
        }
        let agent = agent.clone();
        let queue = queue.clone();
        handlers.spawn_local(async move {
            // A bug must not leave the client waiting: a panic (its message
            // is on the console) is answered as an error.
            let result = CatchUnwind(Box::pin(dispatch(&agent, request.body)))
                .await
                .unwrap_or_else(|()| Err(system("internal error in the agent")));
            let _ = queue.send(answer(id, result)).await;
            drop(permit);
        });
    }
    // Dropping `handlers` cancels what is still pending; the writer sends
    // what is queued and closes the connection.
}

/// Turns a panic while polling the inner future into `Err(())`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// `Shutdown`: answer, then SIGKILL the remaining processes and power off.
async fn shut_down(agent: &Agent, id: u64, queue: &mpsc::Sender<Outgoing>) {
    agent_log!("shutdown requested");
    let (written, was_written) = oneshot::channel();
    let out = Outgoing {
        response: Response {
            id,
            result: Ok(ResponseBody::Done),
        },
        written: Some(written),
    };
    if queue.send(out).await.is_ok() {
        let _ = timeout(Duration::from_secs(1), was_written).await;
    }
    match &agent.on_shutdown {
        OnShutdown::PowerOff => {
            // SAFETY: kill(2); -1 is every process but PID 1 itself.
            unsafe { libc::kill(-1, libc::SIGKILL) };
            sleep(agent.limits.shutdown_settle).await;
            crate::power::power_off()
        }
        #[cfg(test)]
        OnShutdown::Notify(done) => {
            let pids = agent.processes.borrow().live_pids();
            for pid in pids {
                // SAFETY: kill(2) on a live child of ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            done.notify_one();
        }
    }
}

fn not_found(message: String) -> AgentError {
    AgentError {
        kind: ErrorKind::NotFound,
        message,
    }
}

fn lookup_error(process: u64, lookup: Lookup) -> AgentError {
    match lookup {
        Lookup::NoSuchProcess => not_found(format!("no process {process}")),
        Lookup::Exited => not_found(format!("process {process} has exited")),
    }
}

async fn dispatch(agent: &Rc<Agent>, body: RequestBody) -> Result<ResponseBody, AgentError> {
    match body {
        RequestBody::Version => Ok(ResponseBody::Version {
            agent: env!("CARGO_PKG_VERSION").to_string(),
            protocol: PROTOCOL_VERSION,
        }),
        RequestBody::Exec(request) => exec_process(agent, request).await,
        RequestBody::Signal { process, signal } => {
            if !(1..=libc::SIGRTMAX()).contains(&signal) {
                return Err(invalid(format!("no signal {signal}")));
            }
            let pid = agent
                .processes
                .borrow()
                .live_pid(process)
                .map_err(|l| lookup_error(process, l))?;
            // SAFETY: kill(2). The pid is a live or not yet reaped child:
            // only this thread reaps, so it cannot have been reused.
            if unsafe { libc::kill(pid, signal) } < 0 {
                let e = io::Error::last_os_error();
                return Err(system(format!("kill({pid}, {signal}): {e}")));
            }
            Ok(ResponseBody::Done)
        }
        RequestBody::Wait { process } => {
            let outcome = agent.processes.borrow_mut().wait(process);
            let status = match outcome {
                None => return Err(not_found(format!("no process {process}"))),
                Some(WaitOutcome::Exited(status)) => status,
                Some(WaitOutcome::Running(mut exited)) => {
                    let status = exited.wait_for(Option::is_some).await.map(|s| *s);
                    match status {
                        Ok(Some(status)) => status,
                        _ => return Err(system(format!("process {process} was lost"))),
                    }
                }
            };
            Ok(ResponseBody::Exited { process, status })
        }
        RequestBody::CloseStdin { process } => {
            let mut processes = agent.processes.borrow_mut();
            let io = processes
                .io_mut(process)
                .ok_or_else(|| not_found(format!("no process {process}")))?;
            if let Some(close) = io.stdin_close.take() {
                close.notify_one();
            }
            Ok(ResponseBody::Done)
        }
        RequestBody::ResizeTerminal {
            process,
            rows,
            columns,
        } => {
            let processes = agent.processes.borrow();
            let io = processes
                .io(process)
                .ok_or_else(|| not_found(format!("no process {process}")))?;
            let terminal = io
                .terminal
                .as_ref()
                .ok_or_else(|| invalid(format!("process {process} has no terminal")))?;
            let master = terminal
                .upgrade()
                .ok_or_else(|| not_found(format!("the terminal of process {process} is closed")))?;
            exec::resize(&master, rows, columns)
                .map_err(|e| system(format!("cannot resize the terminal: {e}")))?;
            Ok(ResponseBody::Done)
        }
        RequestBody::ListProcesses => Ok(ResponseBody::Processes {
            processes: agent.processes.borrow().list(),
        }),
        // Handled by the connection itself, which stops reading.
        RequestBody::Shutdown => Err(invalid("shutdown is not handled here")),
        RequestBody::CreateContainer(request) => container::create(agent, *request).await,
        RequestBody::StartContainer { id } => container::start(agent, &id).await,
        RequestBody::ExecInContainer(request) => container::exec_in(agent, *request).await,
        RequestBody::SignalContainer { id, signal, all } => {
            container::signal(agent, &id, signal, all)
        }
        RequestBody::WaitContainer { id } => container::wait(agent, &id).await,
        RequestBody::DeleteContainer { id, force } => container::delete(agent, &id, force).await,
        RequestBody::ContainerState { id } => container::state(agent, &id),
        RequestBody::ContainerStats { id } => container::stats(agent, &id),
        RequestBody::ContainerProcesses { id } => container::processes(agent, &id),
        RequestBody::WaitEvent { after } => container::wait_event(agent, after).await,
        RequestBody::MountShare { tag } => crate::share::mount_share(&tag),
        RequestBody::FreezeContainer { id, frozen } => container::freeze(agent, &id, frozen).await,
        RequestBody::UpdateContainer { id, resources } => container::update(agent, &id, &resources),
        RequestBody::Reseed {
            entropy,
            realtime_ns,
            cards,
        } => crate::reseed::reseed(&entropy, realtime_ns, &cards),
    }
}

async fn exec_process(agent: &Rc<Agent>, request: ExecRequest) -> Result<ResponseBody, AgentError> {
    exec::validate(&request)?;
    let stdio = agent
        .take_stdio(
            request.terminal,
            [request.stdin, request.stdout, request.stderr],
        )
        .await?;
    let spawned = exec::spawn(&request, stdio, agent.limits.linger)?;
    let process = agent
        .processes
        .borrow_mut()
        .insert(spawned.pid, &request.argv, spawned.io);
    for pump in spawned.pumps {
        spawn_local(pump);
    }
    Ok(ResponseBody::Started {
        process,
        pid: spawned.pid,
    })
}

/// The server as PID 1 runs it: vsock listeners on the API ports, SIGCHLD
/// through a signalfd. Calls `ready` once both listeners are bound. Returns
/// only if the server cannot start (or, which should not happen, stops).
/// What the agent does between binding its ports and serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Ready line first, then the kernel filesystems.
    Plain,
    /// Kernel filesystems and [`container::warm_up`] first, then the ready
    /// line (at which the host saves the VM as a template).
    Template,
}

pub fn run_in_guest(start: Start, ready: impl FnOnce(), mount: impl FnOnce()) -> io::Error {
    use runvm_agent_api::{CONTROL_PORT, STREAM_PORT};
    use std::os::fd::OwnedFd;

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return e,
    };
    let bind = |port: u32| -> io::Result<Listener> {
        let listener = vsock::VsockListener::bind_with_cid_port(libc::VMADDR_CID_ANY, port)
            .map_err(|e| io::Error::new(e.kind(), format!("vsock port {port}: {e}")))?;
        Listener::host_only(OwnedFd::from(listener))
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        // The stream port first: the kernel queues connections as soon as a
        // port listens, and a host that got through to the control port
        // may open streams right away.
        let streams = match bind(STREAM_PORT) {
            Ok(l) => l,
            Err(e) => return e,
        };
        let control = match bind(CONTROL_PORT) {
            Ok(l) => l,
            Err(e) => return e,
        };
        let events = match reaper::sigchld_fd().and_then(Fd::new) {
            Ok(fd) => fd,
            Err(e) => return io::Error::new(e.kind(), format!("signalfd: {e}")),
        };
        let mut ready = Some(ready);
        if start == Start::Plain {
            if let Some(announce) = ready.take() {
                announce();
            }
        }
        mount();
        let limits = Limits {
            cgroup_root: crate::mounts::cgroup2_root(),
            loopback: true,
            shared_mask: Some(container::SHARED_MASK_DIR.into()),
            ..Limits::default()
        };
        // A current-thread runtime with no blocking pool in use: the
        // agent keeps one thread, so containers launch without a copy.
        container::init::agent_has_one_thread();
        let agent = Agent::new(limits, OnShutdown::PowerOff);
        if start == Start::Template {
            container::warm_up(&agent);
        }
        if let Some(announce) = ready.take() {
            announce();
        }
        serve(agent, control, streams, events).await;
        io::Error::other("the API server stopped")
    })
}

#[cfg(test)]
#[path = "server_tests.rs"]
pub(crate) mod tests;
