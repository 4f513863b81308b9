//! What the agent holds, shared by the API server (`crate::server`) and
//! the request handlers (`crate::container`, processes, streams): the
//! limits, the process and container tables, the parked stream
//! connections and the connection counts. The handlers see only this,
//! never the server's connection code.

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use runvm_agent_api::{AgentError, ErrorKind};
use tokio::sync::Notify;
use tokio::time::{timeout_at, Instant};

use crate::container::Containers;
use crate::exec::{self, invalid, ExecStdio, StreamConn};
use crate::processes::ProcessTable;
use crate::streams::StreamTable;

/// The bounds on what a host can make the agent hold.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Control connections open at once.
    pub control_connections: usize,
    /// Requests of one control connection being handled at once; past
    /// that, the agent stops reading it until one is answered.
    pub in_flight: usize,
    /// Stream connections open at once: greeting, parked or pumping.
    pub streams: usize,
    /// Streams parked and not yet claimed by an exec.
    pub parked: usize,
    /// How long a new stream connection has to send its hello line.
    pub hello_timeout: Duration,
    /// How long a parked stream waits for its exec.
    pub parked_ttl: Duration,
    /// How long an exec waits for a stream it names to arrive.
    pub exec_stream_wait: Duration,
    /// Exited processes kept for a `Wait` that has not come yet.
    pub unwaited_exits: usize,
    /// How long a finished output stream waits for the host to close it.
    pub linger: Duration,
    /// Pause between answering `Shutdown` and powering off, so that the
    /// answer leaves the guest.
    pub shutdown_settle: Duration,
    /// Where cgroup v2 is mounted for containers' cgroups; `None` runs
    /// containers without cgroups (and refuses resource limits).
    pub cgroup_root: Option<PathBuf>,
    /// Bring `lo` up before the first container (the guest's agent; not
    /// the tests on a host, whose `lo` is the host's).
    pub loopback: bool,
    /// How long a container process may take over one step of its set-up
    /// (every guest syscall may be emulated).
    pub container_setup: Duration,
    /// Where the agent mounts the empty read-only tmpfs that containers
    /// mask directories with (see `container::rootfs::Masker`); `None`:
    /// each container mounts its own (the tests on a host, whose mount
    /// tree is the host's).
    pub shared_mask: Option<PathBuf>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            control_connections: 16,
            in_flight: 64,
            streams: 256,
            parked: 128,
            hello_timeout: Duration::from_secs(5),
            parked_ttl: Duration::from_secs(30),
            exec_stream_wait: Duration::from_secs(5),
            unwaited_exits: 128,
            linger: Duration::from_secs(10),
            shutdown_settle: Duration::from_millis(50),
            cgroup_root: None,
            loopback: false,
            container_setup: Duration::from_secs(60),
            shared_mask: None,
        }
    }
}

/// What `Shutdown` does after answering.
pub enum OnShutdown {
    /// SIGKILL every process in the guest, then power off (PID 1).
    PowerOff,
    /// SIGKILL the processes in the table, then notify (tests).
    #[cfg(test)]
    Notify(Rc<Notify>),
}

/// A counted place among a bounded number of connections.
#[derive(Clone)]
pub(crate) struct Slots {
    used: Rc<Cell<usize>>,
    cap: usize,
}

pub(crate) struct Slot(Rc<Cell<usize>>);

impl Slots {
    pub(crate) fn new(cap: usize) -> Slots {
        Slots {
            used: Rc::new(Cell::new(0)),
            cap,
        }
    }

    pub(crate) fn try_take(&self) -> Option<Slot> {
        let used = self.used.get();
        if used >= self.cap {
            return None;
        }
        self.used.set(used + 1);
        Some(Slot(self.used.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

pub(crate) type Stream = StreamConn<Slot>;

pub struct Agent {
    pub(crate) limits: Limits,
    pub(crate) processes: RefCell<ProcessTable>,
    pub(crate) containers: RefCell<Containers>,
    pub(crate) streams: RefCell<StreamTable<Stream>>,
    /// Woken whenever a stream is parked.
    pub(crate) stream_arrived: Notify,
    pub(crate) control_slots: Slots,
    pub(crate) stream_slots: Slots,
    pub(crate) on_shutdown: OnShutdown,
}

impl Agent {
    pub fn new(limits: Limits, on_shutdown: OnShutdown) -> Rc<Agent> {
        crate::exec::note_ignored_signals();
        Rc::new(Agent {
            processes: RefCell::new(ProcessTable::new(limits.unwaited_exits)),
            containers: RefCell::new(Containers::new(
                limits.cgroup_root.clone(),
                limits.loopback,
                limits.shared_mask.clone(),
            )),
            streams: RefCell::new(StreamTable::new(limits.parked)),
            stream_arrived: Notify::new(),
            control_slots: Slots::new(limits.control_connections),
            stream_slots: Slots::new(limits.streams),
            on_shutdown,
            limits,
        })
    }
}

impl Agent {
    /// The host's streams that a process names as its stdin, stdout and
    /// stderr (`named`: their tokens), as its stdio; waits a little for
    /// any that has not arrived yet.
    pub async fn take_stdio(
        &self,
        terminal: bool,
        named: [Option<u64>; 3],
    ) -> Result<ExecStdio<Slot>, AgentError> {
        let tokens = exec::stream_tokens(terminal, named[0], named[1], named[2])?;
        let streams = take_streams(self, &tokens).await?;
        assign_streams(terminal, named, streams)
    }
}

fn not_found(message: String) -> AgentError {
    AgentError {
        kind: ErrorKind::NotFound,
        message,
    }
}

/// Takes the streams an exec names, waiting a little for any that has not
/// arrived yet (the host's connect may complete before its hello is read).
async fn take_streams(agent: &Agent, tokens: &[u64]) -> Result<Vec<Stream>, AgentError> {
    let deadline = Instant::now() + agent.limits.exec_stream_wait;
    loop {
        // Registered before looking, so an arrival in between is not missed.
        let arrived = agent.stream_arrived.notified();
        if let Some(streams) = agent.streams.borrow_mut().take_all(tokens) {
            return Ok(streams);
        }
        if timeout_at(deadline, arrived).await.is_err() {
            let mut parked = agent.streams.borrow_mut();
            if let Some(streams) = parked.take_all(tokens) {
                return Ok(streams);
            }
            let missing = parked.first_missing(tokens).unwrap_or_default();
            return Err(not_found(format!("stream {missing} is not connected")));
        }
    }
}

/// The streams taken for `named` (stdin, stdout, stderr tokens, in that
/// order, as `exec::stream_tokens` listed them) as a process's stdio.
fn assign_streams(
    terminal: bool,
    named: [Option<u64>; 3],
    streams: Vec<Stream>,
) -> Result<ExecStdio<Slot>, AgentError> {
    let mut streams = streams.into_iter();
    if terminal {
        return match streams.next() {
            Some(conn) => Ok(ExecStdio::Terminal(conn)),
            None => Err(invalid("a terminal needs its stream")),
        };
    }
    let mut next_if = |named: Option<u64>| named.and_then(|_| streams.next());
    Ok(ExecStdio::Pipes {
        stdin: next_if(named[0]),
        stdout: next_if(named[1]),
        stderr: next_if(named[2]),
    })
}
