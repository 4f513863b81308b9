//! A new container's cgroup: below its pod's when it has one (see `pod`),
//! with its limits and device rules; undone on failure.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use runvm_agent_api::{AgentError, PodPlacement};
use tokio::task::spawn_local;

use super::cgroups::{self, Cgroup};
use super::phases::phase;
use super::spec::ContainerPlan;
use super::{conflict, devices, pod};
use crate::exec::{invalid, system};
use crate::state::Agent;

/// A container's cgroup and its pod's; `None` without cgroup v2.
pub struct Cgroups {
    pub own: Option<Rc<Cgroup>>,
    pub pod: Option<PathBuf>,
}

/// Sets up the container's cgroup, in its pod's when it has one.
pub fn make_cgroup(
    agent: &Agent,
    id: &str,
    plan: &ContainerPlan,
    pod: Option<&PodPlacement>,
) -> Result<Cgroups, AgentError> {
    let root = agent.containers.borrow().cgroup_root.clone();
    let pod_limits = match pod.and_then(|p| p.resources.as_deref()) {
        Some(resources) => {
            cgroups::render(resources).map_err(|e| invalid(format!("the pod's resources: {e}")))?
        }
        None => Vec::new(),
    };
    let Some(root) = root else {
        if plan
            .resources
            .iter()
            .chain(&pod_limits)
            .any(|w| w.needs_cgroup())
        {
            return Err(system(
                "resource limits need cgroup v2, which this agent does not have",
            ));
        }
        return Ok(Cgroups {
            own: None,
            pod: None,
        });
    };
    let wanted = cgroups::controllers_for(plan.resources.iter().chain(&pod_limits));
    agent
        .containers
        .borrow_mut()
        .ensure_controllers(&wanted)
        .map_err(|e| system(format!("cannot enable the cgroup controllers: {e}")))?;
    phase("cg:enable");
    let pod_dir = match pod {
        // A pod's directory only serves its limits: a pod without limits
        // of its own (the pod of one `runvm run`, say) leaves its
        // containers at the root, one cgroup each instead of two levels.
        Some(pod) if !pod_limits.is_empty() || has_pod_dir(agent, &root, &pod.id) => {
            let outside = agent
                .containers
                .borrow()
                .by_id
                .get(&pod.id)
                .is_some_and(|c| c.cgroup.is_some() && c.pod_cgroup.is_none());
            if outside {
                return Err(conflict(format!(
                    "pod {:?} is the id of a container outside any pod",
                    pod.id
                )));
            }
            let dir = pod::cgroup_dir(&root, &pod.id).map_err(invalid)?;
            if let Err(e) = pod::make_cgroup(&dir, &pod_limits, &wanted) {
                pod::remove_cgroup_if_empty(&dir);
                return Err(invalid(format!("the pod's cgroup: {e}")));
            }
            Some(dir)
        }
        Some(_) | None => None,
    };
    let parent = pod_dir.as_deref().unwrap_or(&root);
    let undo = |cgroup: Option<&Cgroup>| {
        if let Some(cgroup) = cgroup {
            let _ = std::fs::remove_dir(&cgroup.path);
        }
        if let Some(dir) = &pod_dir {
            pod::remove_cgroup_if_empty(dir);
        }
    };
    let cgroup = Cgroup::create(parent, id).map_err(|e| {
        undo(None);
        system(e.to_string())
    })?;
    phase("cg:mkdir");
    if let Err(e) = cgroup.apply(&plan.resources) {
        undo(Some(&cgroup));
        return Err(invalid(e.to_string()));
    }
    phase("cg:limits");
    if let Some(program) = &plan.device_program {
        let loaded = agent.containers.borrow_mut().device_programs.load(program);
        if let Err(e) = loaded.and_then(|fd| devices::attach(&fd, &cgroup.path)) {
            undo(Some(&cgroup));
            return Err(system(e));
        }
    }
    phase("cg:devices");
    Ok(Cgroups {
        own: Some(Rc::new(cgroup)),
        pod: pod_dir,
    })
}

/// Removes the cgroup of a container that failed half way (its process
/// killed already) once it is empty, and its pod's if it was the last.
pub fn abandon(cgroups: Cgroups) {
    if let Some(cgroup) = cgroups.own {
        spawn_local(async move {
            if let Err(e) = cgroup.destroy(Duration::from_secs(10)).await {
                agent_log!("cleaning up a failed container: {e}");
            }
            if let Some(dir) = cgroups.pod {
                pod::remove_cgroup_if_empty(&dir);
            }
        });
    }
}

/// Whether a container of pod `pod` already sits in the pod's own
/// directory (made by the pod's first container, which brought limits).
fn has_pod_dir(agent: &Agent, root: &std::path::Path, pod: &str) -> bool {
    let Ok(dir) = pod::cgroup_dir(root, pod) else {
        return false;
    };
    agent
        .containers
        .borrow()
        .by_id
        .values()
        .any(|c| c.pod_cgroup.as_deref() == Some(dir.as_path()))
}
