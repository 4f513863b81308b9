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
        Some(pod) => {
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
        None => None,
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
