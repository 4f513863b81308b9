//! The shim's record of one process (a container's init or an exec): what
//! containerd asked for, where it is in its life, and how it ended.

use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::types::task::Status;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::stdio::{StdinCloser, StdioPaths};

/// How a process ended.
#[derive(Clone, Debug)]
pub struct Exit {
    pub status: u32,
    pub at: Timestamp,
}

pub fn now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut timestamp = Timestamp::new();
    timestamp.seconds = since_epoch.as_secs() as i64;
    timestamp.nanos = since_epoch.subsec_nanos() as i32;
    timestamp
}

pub struct Process {
    pub stdio: StdioPaths,
    pub closer: StdinCloser,
    /// The guest's pid, once it runs (the init's from `Create`).
    pub pid: u32,
    /// The agent's id for the process, once it exists in the guest.
    pub guest: Option<u64>,
    /// An exec's process spec (the agent's form) until it is started.
    pub spec: Option<runvm_agent_api::oci::Process>,
    pub started: bool,
    /// `Some` once it has ended and its output has been passed on.
    pub exit: std::sync::Arc<watch::Sender<Option<Exit>>>,
    /// The task that waits for it to end.
    pub waiter: Option<JoinHandle<()>>,
}

impl Process {
    pub fn new(stdio: StdioPaths) -> Process {
        Process {
            stdio,
            closer: StdinCloser::default(),
            pid: 0,
            guest: None,
            spec: None,
            started: false,
            exit: std::sync::Arc::new(watch::channel(None).0),
            waiter: None,
        }
    }

    pub fn exited(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    pub fn status(&self) -> Status {
        match (self.exited(), self.started) {
            (Some(_), _) => Status::STOPPED,
            (None, true) => Status::RUNNING,
            (None, false) => Status::CREATED,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            waiter.abort();
        }
    }
}
