//! Requests on containers that exist: signals, waits, deletion, state,
//! figures, freezing, limits, events, and the OOM watch behind them.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use runvm_agent_api::{
    AgentError, ContainerEvent, ContainerState, ContainerStatus, ExitStatus, ResponseBody,
};
use tokio::task::spawn_local;
use tokio::time::timeout;

use super::cgroups::{self, Cgroup};
use super::phases::{self, phase};
use super::{conflict, kill, not_found, procs};
use crate::exec::{invalid, system};
use crate::fdio::Fd;
use crate::state::Agent;

pub fn signal(agent: &Agent, id: &str, signal: i32, all: bool) -> Result<ResponseBody, AgentError> {
    if !(1..=libc::SIGRTMAX()).contains(&signal) {
        return Err(invalid(format!("no signal {signal}")));
    }
    let init = {
        let containers = agent.containers.borrow();
        let c = containers.get(id)?;
        if c.status == ContainerStatus::Stopped && !all {
            return Err(conflict(format!("container {id:?} is not running")));
        }
        if all {
            if let Some(cgroup) = &c.cgroup {
                cgroup
                    .signal_all(signal)
                    .map_err(|e| system(e.to_string()))?;
            } else {
                for pid in &c.execs {
                    let _ = kill(*pid, signal);
                }
            }
        }
        if c.status == ContainerStatus::Stopped {
            return Ok(ResponseBody::Done);
        }
        if !all || c.cgroup.is_none() {
            kill(c.pid, signal).map_err(|e| system(format!("kill({}, {signal}): {e}", c.pid)))?;
        }
        c.pid
    };
    if signal == libc::SIGKILL {
        // Nothing stops a SIGKILL, so the init has ended as far as anyone
        // waiting for it is concerned; tearing it (and, in its pid
        // namespace, every other process) down is emulated kernel work
        // of seconds on a slow host, and callers such as podman give the
        // pid-file process only a few seconds after their SIGKILL. The
        // reaper finds the same end later and changes nothing. An init
        // already on its way out (it exited and its namespace is being
        // emptied, or it is a zombie not yet reaped) keeps the status it
        // exited with.
        let status = exiting_status(init).unwrap_or(ExitStatus::Signal(libc::SIGKILL));
        agent.containers.borrow_mut().record_exit(init, status);
    }
    Ok(ResponseBody::Done)
}

/// The status of a process that has begun to exit (PF_EXITING in
/// /proc/<pid>/stat), from its exit code there; `None` while it runs.
fn exiting_status(pid: i32) -> Option<ExitStatus> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    exiting_status_of(&stat)
}

fn exiting_status_of(stat: &str) -> Option<ExitStatus> {
    const PF_EXITING: u64 = 0x4;
    // Fields after the command name, which ends at the last ')': state is
    // field 3, flags field 9, exit_code field 52.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let flags: u64 = fields.get(9 - 3)?.parse().ok()?;
    if flags & PF_EXITING == 0 {
        return None;
    }
    let code: i32 = fields.get(52 - 3)?.parse().ok()?;
    Some(if code & 0x7f == 0 {
        ExitStatus::Code((code >> 8) & 0xff)
    } else {
        ExitStatus::Signal(code & 0x7f)
    })
}

/// `ContainerProcesses`: what is in its cgroup; without a cgroup, its init
/// and execs while it runs.
pub fn processes(agent: &Agent, id: &str) -> Result<ResponseBody, AgentError> {
    let containers = agent.containers.borrow();
    let c = containers.get(id)?;
    let pids = match &c.cgroup {
        Some(cgroup) => procs::cgroup_pids(&cgroup.path).map_err(|e| {
            system(format!(
                "cannot list the processes of container {id:?}: {e}"
            ))
        })?,
        None if c.status == ContainerStatus::Stopped => Vec::new(),
        None => std::iter::once(c.pid)
            .chain(c.execs.iter().copied())
            .collect(),
    };
    Ok(ResponseBody::ContainerProcesses {
        processes: procs::describe_all(&pids),
    })
}

pub async fn wait(agent: &Agent, id: &str) -> Result<ResponseBody, AgentError> {
    let (process, mut exited) = {
        let containers = agent.containers.borrow();
        let c = containers.get(id)?;
        (c.process, c.exited.subscribe())
    };
    let status = exited
        .wait_for(Option::is_some)
        .await
        .map(|s| *s)
        .map_err(|_| not_found(format!("container {id:?} was deleted")))?;
    match status {
        Some(status) => Ok(ResponseBody::Exited { process, status }),
        None => Err(system("no status")),
    }
}

pub async fn delete(agent: &Agent, id: &str, force: bool) -> Result<ResponseBody, AgentError> {
    phase("d:request");
    let (pid, alive, cgroup, execs, mut exited) = {
        let containers = agent.containers.borrow();
        let c = containers.get(id)?;
        if c.status == ContainerStatus::Running && !force {
            return Err(conflict(format!(
                "container {id:?} is running; stop it first or delete with force"
            )));
        }
        (
            c.pid,
            c.status != ContainerStatus::Stopped,
            c.cgroup.clone(),
            c.execs.clone(),
            c.exited.subscribe(),
        )
    };
    if alive {
        let _ = kill(pid, libc::SIGKILL);
    }
    match &cgroup {
        Some(cgroup) => {
            let _ = cgroup.signal_all(libc::SIGKILL);
        }
        None => {
            for pid in execs {
                let _ = kill(pid, libc::SIGKILL);
            }
        }
    }
    if alive {
        let ended = timeout(Duration::from_secs(10), exited.wait_for(Option::is_some)).await;
        if ended.is_err() {
            return Err(system(format!(
                "the init of container {id:?} did not end after SIGKILL"
            )));
        }
    }
    phase("d:kill");
    if let Some(cgroup) = &cgroup {
        cgroup
            .destroy(Duration::from_secs(10))
            .await
            .map_err(|e| system(e.to_string()))?;
    }
    phase("d:cgroup-rmdir");
    let mut containers = agent.containers.borrow_mut();
    if let Some(c) = containers.by_id.remove(id) {
        if let (Some(wd), Some(inotify)) = (c.oom_watch, &containers.inotify) {
            // SAFETY: inotify_rm_watch(2); the watch may be gone already
            // with the cgroup.
            unsafe { libc::inotify_rm_watch(inotify.raw(), wd) };
        }
        crate::share::release_rootfs(&c.rootfs);
        // The last hold on the container's mount namespace: its
        // filesystems are unmounted here, before the answer.
        drop(c.mount_ns);
        if let Some(dir) = &c.pod_cgroup {
            // The last container of its pod takes the pod's cgroup along.
            super::pod::remove_cgroup_if_empty(dir);
        }
    }
    phase("d:release-rootfs");
    phases::report("delete");
    Ok(ResponseBody::Done)
}

pub fn state(agent: &Agent, id: &str) -> Result<ResponseBody, AgentError> {
    let containers = agent.containers.borrow();
    let c = containers.get(id)?;
    let exited = *c.exited.borrow();
    let state = ContainerState {
        id: id.to_string(),
        status: c.status,
        process: c.process,
        pid: c.pid,
        rootfs: c.rootfs.clone(),
        exited,
    };
    Ok(ResponseBody::ContainerState(state))
}

fn cgroup_of(agent: &Agent, id: &str) -> Result<Rc<Cgroup>, AgentError> {
    let containers = agent.containers.borrow();
    let c = containers.get(id)?;
    c.cgroup
        .clone()
        .ok_or_else(|| not_found(format!("container {id:?} has no cgroup")))
}

/// `runc pause` / `runc resume`: the container's cgroup is frozen or
/// thawed; a container whose init has ended cannot be.
pub async fn freeze(agent: &Agent, id: &str, frozen: bool) -> Result<ResponseBody, AgentError> {
    {
        let containers = agent.containers.borrow();
        let c = containers.get(id)?;
        if c.exited.borrow().is_some() {
            return Err(conflict(format!("container {id:?} is not running")));
        }
    }
    let cgroup = cgroup_of(agent, id)?;
    cgroup
        .freeze(frozen, Duration::from_secs(10))
        .await
        .map_err(|e| system(e.to_string()))?;
    Ok(ResponseBody::Done)
}

/// `runc update`: the limits given are written to the container's cgroup.
pub fn update(
    agent: &Agent,
    id: &str,
    resources: &runvm_agent_api::oci::LinuxResources,
) -> Result<ResponseBody, AgentError> {
    let cgroup = cgroup_of(agent, id)?;
    let writes = cgroups::render(resources).map_err(invalid)?;
    // A limit of a kind the container was created without needs its
    // controller turned on first: at the root, then in the pod's cgroup.
    let wanted = cgroups::controllers_for(&writes);
    let enabled = {
        let mut containers = agent.containers.borrow_mut();
        let pod_dir = containers.get(id)?.pod_cgroup.clone();
        containers
            .ensure_controllers(&wanted)
            .and_then(|()| match &pod_dir {
                Some(dir) => cgroups::enable_controllers(dir, &wanted),
                None => Ok(()),
            })
    };
    enabled.map_err(|e| system(format!("cannot enable the cgroup controllers: {e}")))?;
    cgroup.apply(&writes).map_err(|e| system(e.to_string()))?;
    Ok(ResponseBody::Done)
}

pub fn stats(agent: &Agent, id: &str) -> Result<ResponseBody, AgentError> {
    let containers = agent.containers.borrow();
    let c = containers.get(id)?;
    let cgroup = c
        .cgroup
        .clone()
        .ok_or_else(|| not_found(format!("container {id:?} has no cgroup")))?;
    drop(containers);
    cgroup
        .stats()
        .map(ResponseBody::ContainerStats)
        .map_err(|e| system(e.to_string()))
}

pub async fn wait_event(agent: &Agent, after: u64) -> Result<ResponseBody, AgentError> {
    loop {
        let arrived = {
            let containers = agent.containers.borrow();
            if let Some((seq, event)) = containers.events.first_after(after) {
                return Ok(ResponseBody::Event { seq, event });
            }
            containers.events.arrived.clone()
        };
        // Nothing runs between the look above and this wait's registration
        // (one thread, no await in between), so no event is missed.
        arrived.notified().await;
    }
}

/// Watches `events_file` (memory.events) for changes; returns the watch
/// descriptor. The first watch starts the task that reads them.
pub(super) fn watch_oom(agent: &Rc<Agent>, events_file: &Path) -> Option<i32> {
    let inotify = {
        let mut containers = agent.containers.borrow_mut();
        match &containers.inotify {
            Some(fd) => fd.clone(),
            None => {
                // SAFETY: inotify_init1(2).
                let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
                if fd < 0 {
                    agent_log!(
                        "inotify: {}; OOM events are off",
                        io::Error::last_os_error()
                    );
                    return None;
                }
                // SAFETY: a new descriptor that we own.
                let fd = match Fd::new(unsafe { OwnedFd::from_raw_fd(fd) }) {
                    Ok(fd) => Rc::new(fd),
                    Err(e) => {
                        agent_log!("inotify: {e}; OOM events are off");
                        return None;
                    }
                };
                containers.inotify = Some(fd.clone());
                spawn_local(read_oom_events(agent.clone(), fd.clone()));
                fd
            }
        }
    };
    let path = std::ffi::CString::new(events_file.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: inotify_add_watch(2) with a C string.
    let wd = unsafe { libc::inotify_add_watch(inotify.raw(), path.as_ptr(), libc::IN_MODIFY) };
    if wd < 0 {
        agent_log!(
            "cannot watch {}: {}",
            events_file.display(),
            io::Error::last_os_error()
        );
        return None;
    }
    Some(wd)
}

/// Watch descriptors in a buffer of inotify events.
pub fn watch_descriptors(buf: &[u8]) -> Vec<i32> {
    const HEADER: usize = std::mem::size_of::<libc::inotify_event>();
    let mut wds = Vec::new();
    let mut at = 0;
    while at + HEADER <= buf.len() {
        let wd = i32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default());
        let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap_or_default());
        if !wds.contains(&wd) {
            wds.push(wd);
        }
        at += HEADER + len as usize;
    }
    wds
}

async fn read_oom_events(agent: Rc<Agent>, inotify: Rc<Fd>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match inotify.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut containers = agent.containers.borrow_mut();
        let mut found = Vec::new();
        for wd in watch_descriptors(&buf[..n]) {
            for (id, c) in containers.by_id.iter_mut() {
                if c.oom_watch != Some(wd) {
                    continue;
                }
                let Some(cgroup) = &c.cgroup else { continue };
                if let Ok(kills) = cgroup.oom_kills() {
                    if kills > c.oom_kills {
                        c.oom_kills = kills;
                        found.push((id.clone(), kills));
                    }
                }
            }
        }
        for (id, oom_kills) in found {
            containers
                .events
                .push(ContainerEvent::Oom { id, oom_kills });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exiting_process_keeps_its_status() {
        let fields = |flags: u64, code: i32| {
            let mut f = vec!["0".to_string(); 50];
            f[0] = "S".into();
            f[6] = flags.to_string();
            f[49] = code.to_string();
            format!("12 (a (b) c) {}", f.join(" "))
        };
        assert_eq!(exiting_status_of(&fields(0x400000, 0)), None);
        assert_eq!(
            exiting_status_of(&fields(0x400004, 3 << 8)),
            Some(ExitStatus::Code(3))
        );
        assert_eq!(
            exiting_status_of(&fields(0x4, 15)),
            Some(ExitStatus::Signal(15))
        );
        assert_eq!(exiting_status_of("garbage"), None);
        let me = std::fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(exiting_status_of(&me), None);
    }

    #[test]
    fn inotify_records_are_split_by_their_lengths() {
        let mut buf = Vec::new();
        for (wd, name_len) in [(3i32, 0u32), (5, 16), (3, 0)] {
            buf.extend_from_slice(&wd.to_ne_bytes());
            buf.extend_from_slice(&libc::IN_MODIFY.to_ne_bytes());
            buf.extend_from_slice(&0u32.to_ne_bytes());
            buf.extend_from_slice(&name_len.to_ne_bytes());
            buf.extend(std::iter::repeat_n(0u8, name_len as usize));
        }
        assert_eq!(watch_descriptors(&buf), vec![3, 5]);
    }
}
