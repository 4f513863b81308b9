//! The init's monitor. A container that owns a VM (a sandbox, or a
//! standalone container) boots it here, creates its init in it and serves
//! the sandbox's control socket (see [`crate::sandbox`]); a member asks its
//! sandbox to bind it into the VM's share and creates its init over a
//! connection of its own to the VM's agent. Either way the monitor then
//! relays the init's stdio and signals and exits with its status; a VM
//! owner's monitor stops the members and the VM first.

use std::os::fd::OwnedFd;
use std::path::Path;

use super::handshake::{Report, Sync};
use super::{
    host_io, join_cgroup, supervise, HostIo, MonitorArgs, MonitorError, DRAIN_PATIENCE,
    KILLED_DRAIN_PATIENCE, STATUS_LOST,
};
use crate::agent_client::AgentClient;
use crate::assets::Assets;
use crate::bundle::Bundle;
use crate::container_client::{ContainerClient, ContainerProcess};
use crate::deadlines;
use crate::sandbox::{self, control, Home, Sandbox, VmSize};
use crate::state::{HostProcess, Record, StateRoot, Status};
use crate::terminal::RawMode;
use crate::vm::VmSpec;

/// Where the init runs: in the VM this process owns, or in a sandbox's.
enum Place {
    Owner(Sandbox),
    Member { home: Home, agent: AgentClient },
}

impl Place {
    fn agent(&self) -> &AgentClient {
        match self {
            Place::Owner(sandbox) => sandbox.agent(),
            Place::Member { agent, .. } => agent,
        }
    }

    async fn helpers(&self) -> Vec<HostProcess> {
        match self {
            Place::Owner(sandbox) => sandbox.helpers().await,
            Place::Member { .. } => Vec::new(),
        }
    }

    /// Undoes the container: the whole VM, or the member in the sandbox.
    async fn undo(self, id: &str) {
        match self {
            Place::Owner(sandbox) => sandbox.shut_down().await,
            Place::Member { home, agent } => {
                drop(agent);
                let _ = control::remove(&home, id).await;
            }
        }
    }

    /// After the init ended: a VM owner stops its members and its VM; a
    /// member stays in the sandbox (stopped) until it is deleted.
    async fn end(self) {
        if let Place::Owner(sandbox) = self {
            sandbox.shut_down().await;
        }
    }
}

/// A container created, its init held.
struct CreatedInit {
    place: Place,
    init: ContainerProcess,
    size_from: Option<OwnedFd>,
    _raw: Option<RawMode<'static>>,
}

/// What every init's monitor does first: joins the container's cgroup
/// (so that a VMM and virtiofsd are born in it), reads the bundle and
/// takes the stdio for the init.
fn begin(args: &MonitorArgs, record: &Record) -> Result<(Bundle, HostIo), MonitorError> {
    join_cgroup(record.cgroup.as_ref())?;
    let bundle = Bundle::load(&record.bundle)?;
    let terminal = bundle.terminal();
    let host = host_io(args, terminal)?;
    Ok((bundle, host))
}

async fn create_owner(
    root: &StateRoot,
    args: &MonitorArgs,
    record: &Record,
) -> Result<CreatedInit, MonitorError> {
    let (bundle, mut host) = begin(args, record)?;
    let assets = Assets::locate()?;
    let size = record.vm.unwrap_or(VmSize {
        memory_mib: sandbox::size::guest_memory_mib(&bundle.spec),
        vcpus: 1,
    });
    let vm_spec = VmSpec::with_share(assets, size);
    let home = Home::of(root.dir(), record);
    // This monitor joined the container's cgroup: the VM is born in it.
    let booted = sandbox::boot(root, home, &vm_spec, record.netns.as_deref(), None).await?;
    let guest_network = booted.guest_network();
    // Dropped last on failure: after the VM that uses its taps.
    let attached = booted.network;
    let mut sandbox = booted.sandbox;
    let io = host.io.take().ok_or(MonitorError::NotRunning)?;
    let init = deadlines::within("create", deadlines::CREATE, async {
        let prepared = sandbox.prepare(&args.id, &bundle).await?;
        let init = ContainerClient::new(sandbox.agent())
            .create_in_pod(&args.id, prepared, io, guest_network)
            .await?;
        Ok::<_, MonitorError>(init)
    })
    .await?;
    sandbox.serve()?;
    if let Some(attached) = attached {
        attached.keep();
    }
    Ok(CreatedInit {
        place: Place::Owner(sandbox),
        init,
        size_from: host.size_from,
        _raw: host._raw,
    })
}

async fn create_member(
    root: &StateRoot,
    args: &MonitorArgs,
    record: &Record,
) -> Result<CreatedInit, MonitorError> {
    let (_, mut host) = begin(args, record)?;
    let io = host.io.take().ok_or(MonitorError::NotRunning)?;
    let home = Home::of(root.dir(), record);
    let prepared = control::add(&home, &args.id).await?;
    let created = deadlines::within("create", deadlines::CREATE, async {
        let agent = AgentClient::connect(&home.vsock_socket()).await?;
        let init = ContainerClient::new(&agent)
            .create_in_pod(&args.id, prepared, io, None)
            .await?;
        Ok::<_, MonitorError>((agent, init))
    })
    .await;
    match created {
        Ok((agent, init)) => Ok(CreatedInit {
            place: Place::Member { home, agent },
            init,
            size_from: host.size_from,
            _raw: host._raw,
        }),
        Err(e) => {
            let _ = control::remove(&home, &args.id).await;
            Err(e)
        }
    }
}

pub(super) async fn run_init(root: &Path, args: &MonitorArgs) -> i32 {
    let mut sync = Sync::from_fd(args.sync_fd);
    let created = async {
        let root = StateRoot::open(root)?;
        let record = crate::state::peek(&root, &args.id)?;
        let created = match record.sandbox {
            None => create_owner(&root, args, &record).await?,
            Some(_) => create_member(&root, args, &record).await?,
        };
        Ok::<_, MonitorError>((root, created))
    };
    let (root, created) = match created.await {
        Ok(created) => created,
        Err(e) => {
            // Dropping what was made (the VM above) has undone it.
            sync.report(&Report::Error(e.to_string()));
            return STATUS_LOST;
        }
    };
    let CreatedInit {
        place,
        init,
        size_from,
        _raw,
    } = created;
    sync.report(&Report::Ready {
        helpers: place.helpers().await,
    });
    if sync.wait_go().await.is_err() {
        place.undo(&args.id).await;
        return STATUS_LOST;
    }
    let containers = ContainerClient::new(place.agent());
    let process = init.started.process;
    let status = supervise(
        place.agent(),
        containers.wait(&args.id),
        |signal| {
            let containers = &containers;
            let id = &args.id;
            async move {
                let signalled = containers.signal(id, signal, false);
                let _ = deadlines::within("kill", deadlines::KILL, signalled).await;
            }
        },
        process,
        size_from.as_ref(),
    )
    .await;
    // A SIGKILL'd init is reported at once, while the guest still tears
    // its processes down (and they still hold its output open): what they
    // wrote has had its chance to arrive after a short wait.
    let patience = match status {
        Ok(runvm_agent_api::ExitStatus::Signal(libc::SIGKILL)) => KILLED_DRAIN_PATIENCE,
        _ => DRAIN_PATIENCE,
    };
    let _ = tokio::time::timeout(patience, init.drain()).await;
    let code = status.map_or(STATUS_LOST, |status| status.shell_code());
    record_stopped(&root, &args.id, code);
    place.end().await;
    code
}

/// Writes that the container stopped with `code`.
fn record_stopped(root: &StateRoot, id: &str, code: i32) {
    let Ok(container) = root.open_container(id) else {
        return;
    };
    if let Ok(mut record) = container.load() {
        record.status = Status::Stopped;
        record.exit_status = Some(code);
        let _ = container.save(&record);
    }
}
