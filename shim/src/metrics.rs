//! `Stats`: a container's figures from its guest cgroup (the agent's
//! `ContainerStats`) in containerd's cgroup v2 metrics type, which the CRI
//! plugin reads for `ContainerStats` (memory usage and working set, CPU
//! time). A limit the guest reports as unlimited is 0, as containerd's
//! own cgroup v2 reading gives "max"; figures the agent does not collect
//! stay 0.

use containerd_shim::protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use runvm_agent_api::ContainerStats;

pub fn of(stats: &ContainerStats) -> Metrics {
    let mut metrics = Metrics::new();
    let mut memory = MemoryStat::new();
    memory.usage = stats.memory_usage;
    memory.usage_limit = stats.memory_limit.unwrap_or(0);
    metrics.memory = Some(memory).into();
    let mut events = MemoryEvents::new();
    events.oom_kill = stats.oom_kills;
    metrics.memory_events = Some(events).into();
    let mut cpu = CPUStat::new();
    cpu.usage_usec = stats.cpu_usage_usec;
    cpu.user_usec = stats.cpu_user_usec;
    cpu.system_usec = stats.cpu_system_usec;
    metrics.cpu = Some(cpu).into();
    let mut pids = PidsStat::new();
    pids.current = stats.pids_current;
    pids.limit = stats.pids_limit.unwrap_or(0);
    metrics.pids = Some(pids).into();
    metrics
}

/// [`of`] packed as containerd unpacks it (the type URL is the message's
/// full name, `io.containerd.cgroups.v2.Metrics`).
pub fn packed(stats: &ContainerStats) -> Result<Any, String> {
    containerd_shim::util::convert_to_any(Box::new(of(stats))).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_figures_become_containerds_v2_metrics() {
        let stats = ContainerStats {
            memory_usage: 5 << 20,
            memory_limit: Some(16 << 20),
            oom_kills: 2,
            cpu_usage_usec: 1500,
            cpu_user_usec: 1000,
            cpu_system_usec: 500,
            pids_current: 3,
            pids_limit: None,
        };
        let any = packed(&stats).expect("packed");
        assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
        let metrics = of(&stats);
        assert_eq!(metrics.memory.usage, 5 << 20);
        assert_eq!(metrics.memory.usage_limit, 16 << 20);
        assert_eq!(metrics.memory_events.oom_kill, 2);
        assert_eq!(metrics.cpu.usage_usec, 1500);
        assert_eq!((metrics.pids.current, metrics.pids.limit), (3, 0));
    }
}
