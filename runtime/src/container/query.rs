//! state, list, ps, events: looking at containers without changing them.

use std::path::PathBuf;
use std::time::Duration;

use runvm_agent_api::{ContainerEvent, ContainerStats, GuestProcess};

use crate::agent_client::{AgentClient, ClientError};
use crate::container_client::ContainerClient;
use crate::deadlines;
use crate::state::{self, Record, Status};

use super::{block_on, ContainerError, Context, Result};

/// Container `id`'s OCI state (its status as of now).
pub fn state(context: &Context, id: &str) -> Result<serde_json::Value> {
    Ok(state::peek(&context.root()?, id)?.oci_state())
}

/// The records of every container whose state is readable.
pub fn list(context: &Context) -> Result<Vec<Record>> {
    let root = context.root()?;
    Ok(root
        .ids()?
        .iter()
        .filter_map(|id| state::peek(&root, id).ok())
        .collect())
}

fn running_agent_socket(context: &Context, id: &str) -> Result<PathBuf> {
    let root = context.root()?;
    let record = state::peek(&root, id)?;
    if record.status() == Status::Stopped {
        return Err(ContainerError::NotRunning);
    }
    Ok(crate::sandbox::Home::of(root.dir(), &record).vsock_socket())
}

/// Container `id`'s processes as the guest sees them (its init and the
/// processes exec'd into it).
pub fn processes(context: &Context, id: &str) -> Result<Vec<GuestProcess>> {
    let socket = running_agent_socket(context, id)?;
    Ok(block_on(deadlines::within(
        "ps",
        deadlines::QUERY,
        async {
            let agent = AgentClient::connect(&socket).await?;
            ContainerClient::new(&agent).processes(id).await
        },
    ))??)
}

/// What `events` reports.
#[derive(Debug)]
pub enum Event {
    Stats(ContainerStats),
    /// A process of the container was OOM-killed.
    Oom,
}

/// What `events` is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventsOptions {
    /// One stats event, then return.
    pub once: bool,
    /// How often stats are reported otherwise.
    pub interval: Duration,
}

/// Container `id`'s stats (once, or every interval) and OOM events as
/// they come, each handed to `emit`, until the container stops.
pub fn events(
    context: &Context,
    id: &str,
    options: EventsOptions,
    mut emit: impl FnMut(Event),
) -> Result {
    let socket = running_agent_socket(context, id)?;
    block_on(async move {
        let agent =
            deadlines::within("events", deadlines::QUERY, AgentClient::connect(&socket)).await?;
        let containers = ContainerClient::new(&agent);
        let stats = |id| deadlines::within("events", deadlines::QUERY, containers.stats(id));
        if options.once {
            emit(Event::Stats(stats(id).await?));
            return Ok::<_, ClientError>(());
        }
        let mut ticker = tokio::time::interval(options.interval);
        let mut after = 0;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    match stats(id).await {
                        Ok(stats) => emit(Event::Stats(stats)),
                        // A guest that stopped answering is an error; a
                        // closed connection is a container that ended.
                        Err(e @ ClientError::Deadline { .. }) => return Err(e),
                        Err(_) => return Ok(()),
                    }
                }
                event = containers.next_event(after) => {
                    let (seq, event) = match event {
                        Ok(event) => event,
                        Err(_) => return Ok(()),
                    };
                    after = seq;
                    match event {
                        ContainerEvent::Oom { id: of, .. } if of == id => emit(Event::Oom),
                        ContainerEvent::Exited { id: of, .. } if of == id => return Ok(()),
                        _ => {}
                    }
                }
            }
        }
    })??;
    Ok(())
}
