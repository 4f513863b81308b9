//! How big a VM is: memory and vCPUs, from the container that owns it.
//!
//! - A standalone container: its own memory limit plus the guest's
//!   overhead, or [`DEFAULT_GUEST_MIB`]; one vCPU.
//! - A sandbox: the pod's size when the caller sends it (containerd's
//!   `io.kubernetes.cri.sandbox-memory` / `-cpu-quota` / `-cpu-period`,
//!   CRI-O's `pod-linux-resources.crio.io`, formerly
//!   `io.kubernetes.cri-o.PodLinuxResources`, a JSON LinuxContainerResources)
//!   plus the guest's overhead, else [`DEFAULT_SANDBOX_MIB`] and one vCPU.
//! - Either, overridden by runvm's own annotations [`MEMORY_ANNOTATION`]
//!   (MiB) and [`VCPUS_ANNOTATION`].

use std::collections::HashMap;

use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use super::SandboxError;
use crate::bundle;

/// Guest memory beyond the containers' own limits: the guest kernel, the
/// agent and the page cache.
pub const GUEST_OVERHEAD_MIB: u64 = 128;
/// A container without a memory limit gets a VM of this size (as
/// Firecracker's default): the guest kernel initialises every page of its
/// memory at boot, and on an emulating host each 128 MiB cost ~0.85 s.
pub const DEFAULT_GUEST_MIB: u64 = 128;
/// A pod without a size: room for a pause container and a few small ones.
pub const DEFAULT_SANDBOX_MIB: u64 = 256;
/// Bounds of what a VM may be given.
pub const MIN_MIB: u64 = 64;
pub const MAX_MIB: u64 = 1 << 20;
pub const MAX_VCPUS: u64 = 32;

pub const MEMORY_ANNOTATION: &str = "io.runvm.vm.memory-mib";
pub const VCPUS_ANNOTATION: &str = "io.runvm.vm.vcpus";
pub const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
pub const CRI_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const CRI_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const CRIO_POD_RESOURCES: &str = "pod-linux-resources.crio.io";
pub const CRIO_POD_RESOURCES_OLD: &str = "io.kubernetes.cri-o.PodLinuxResources";

/// A VM's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSize {
    pub memory_mib: u32,
    pub vcpus: u8,
}

impl VmSize {
    /// Memory left for containers once the guest has its share.
    pub fn container_mib(&self) -> u64 {
        u64::from(self.memory_mib).saturating_sub(GUEST_OVERHEAD_MIB)
    }
}

/// The guest's RAM for a standalone container of `spec`.
pub fn guest_memory_mib(spec: &Spec) -> u32 {
    let mib = match memory_limit_mib(spec) {
        Some(limit) => limit + GUEST_OVERHEAD_MIB,
        None => DEFAULT_GUEST_MIB,
    };
    clamp_u32(mib)
}

/// The container's memory limit in MiB (rounded up), if it has one.
pub fn memory_limit_mib(spec: &Spec) -> Option<u64> {
    bundle::memory_limit(spec)
        .and_then(|bytes| u64::try_from(bytes).ok())
        .filter(|bytes| *bytes > 0)
        .map(|bytes| bytes.div_ceil(1 << 20))
}

fn clamp_u32(mib: u64) -> u32 {
    u32::try_from(mib.clamp(MIN_MIB, MAX_MIB)).unwrap_or(u32::MAX)
}

/// The pod's own figures from CRI annotations: (memory bytes, cpu quota,
/// cpu period), each when given and sensible.
#[derive(Debug, Default, PartialEq, Eq)]
struct PodResources {
    memory: Option<u64>,
    quota: Option<u64>,
    period: Option<u64>,
}

/// CRI-O's JSON: CRI's LinuxContainerResources (snake_case names).
#[derive(Deserialize)]
struct CrioResources {
    #[serde(default)]
    cpu_period: i64,
    #[serde(default)]
    cpu_quota: i64,
    #[serde(default)]
    memory_limit_in_bytes: i64,
}

fn positive(value: i64) -> Option<u64> {
    u64::try_from(value).ok().filter(|v| *v > 0)
}

/// What the CRI callers say of the pod. Malformed values are ignored: a
/// Kubernetes user cannot fix what their runtime wrote.
fn pod_resources(annotations: &HashMap<String, String>) -> PodResources {
    let number = |name: &str| {
        annotations
            .get(name)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .and_then(positive)
    };
    let containerd = PodResources {
        memory: number(CRI_SANDBOX_MEMORY),
        quota: number(CRI_SANDBOX_CPU_QUOTA),
        period: number(CRI_SANDBOX_CPU_PERIOD),
    };
    if containerd != PodResources::default() {
        return containerd;
    }
    let crio = [CRIO_POD_RESOURCES, CRIO_POD_RESOURCES_OLD]
        .iter()
        .filter_map(|name| annotations.get(*name))
        // A bounded text: the JSON of a handful of numbers.
        .filter(|text| text.len() <= 64 * 1024)
        .find_map(|text| serde_json::from_str::<CrioResources>(text).ok());
    match crio {
        Some(r) => PodResources {
            memory: positive(r.memory_limit_in_bytes),
            quota: positive(r.cpu_quota),
            period: positive(r.cpu_period),
        },
        None => PodResources::default(),
    }
}

/// vCPUs for a CPU quota per period (rounded up), within bounds.
fn vcpus_for(quota: Option<u64>, period: Option<u64>) -> u64 {
    match (quota, period) {
        (Some(quota), Some(period)) => quota.div_ceil(period).clamp(1, MAX_VCPUS),
        _ => 1,
    }
}

/// The pod's own limits for its cgroup in the guest, from the CRI sizing
/// annotations of its sandbox's config.json (memory, CPU quota per
/// period); `None` without them. The VM is sized for them too, so the
/// limit keeps the pod's containers together off the memory the guest
/// itself needs.
pub fn pod_limits(spec: &Spec) -> Option<runvm_agent_api::oci::LinuxResources> {
    let annotations = spec.annotations().as_ref()?;
    let pod = pod_resources(annotations);
    if pod == PodResources::default() {
        return None;
    }
    let mut limits = runvm_agent_api::oci::LinuxResources::default();
    if let Some(bytes) = pod.memory.and_then(|b| i64::try_from(b).ok()) {
        limits.memory = Some(runvm_agent_api::oci::LinuxMemory {
            limit: Some(bytes),
            ..Default::default()
        });
    }
    if let Some(quota) = pod.quota.and_then(|q| i64::try_from(q).ok()) {
        limits.cpu = Some(runvm_agent_api::oci::LinuxCpu {
            quota: Some(quota),
            period: pod.period,
            ..Default::default()
        });
    }
    Some(limits)
}

/// One of runvm's own annotations as a number within `1..=max`.
fn override_value(
    annotations: &HashMap<String, String>,
    name: &str,
    max: u64,
) -> Result<Option<u64>, SandboxError> {
    let Some(text) = annotations.get(name) else {
        return Ok(None);
    };
    let problem = || SandboxError::Annotation {
        name: name.to_owned(),
        problem: format!("{text:?} is not a whole number from 1 to {max}"),
    };
    let value: u64 = text.trim().parse().map_err(|_| problem())?;
    if !(1..=max).contains(&value) {
        return Err(problem());
    }
    Ok(Some(value))
}

/// The size of the VM a container that owns one gets (`sandbox`: a pod's
/// sandbox rather than a standalone container).
pub fn for_owner(spec: &Spec, sandbox: bool) -> Result<VmSize, SandboxError> {
    let empty = HashMap::new();
    let annotations = spec.annotations().as_ref().unwrap_or(&empty);
    let (mut memory, mut vcpus) = if sandbox {
        let pod = pod_resources(annotations);
        let pod_mib = pod.memory.map(|bytes| bytes.div_ceil(1 << 20));
        let own_mib = memory_limit_mib(spec);
        let memory = match pod_mib.into_iter().chain(own_mib).max() {
            Some(mib) => mib.saturating_add(GUEST_OVERHEAD_MIB),
            None => DEFAULT_SANDBOX_MIB,
        };
        (memory, vcpus_for(pod.quota, pod.period))
    } else {
        (u64::from(guest_memory_mib(spec)), 1)
    };
    if let Some(mib) = override_value(annotations, MEMORY_ANNOTATION, MAX_MIB)? {
        if mib < MIN_MIB {
            return Err(SandboxError::Annotation {
                name: MEMORY_ANNOTATION.to_owned(),
                problem: format!("{mib} MiB is below the {MIN_MIB} MiB a guest needs"),
            });
        }
        memory = mib;
    }
    if let Some(count) = override_value(annotations, VCPUS_ANNOTATION, MAX_VCPUS)? {
        vcpus = count;
    }
    Ok(VmSize {
        memory_mib: clamp_u32(memory),
        vcpus: u8::try_from(vcpus.clamp(1, MAX_VCPUS)).unwrap_or(1),
    })
}

/// Whether a member of `spec` fits a VM of `size`: its memory limit must
/// fit what the guest leaves to containers, its CPU quota the vCPUs.
pub fn check_member(spec: &Spec, size: &VmSize) -> Result<(), String> {
    if let Some(limit) = memory_limit_mib(spec) {
        if limit > size.container_mib() {
            return Err(format!(
                "its memory limit ({limit} MiB) is larger than the {} MiB the VM ({} MiB) leaves to containers",
                size.container_mib(),
                size.memory_mib
            ));
        }
    }
    let cpu = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.cpu().as_ref());
    if let Some(cpu) = cpu {
        let quota = cpu.quota().and_then(positive);
        let period = cpu.period().filter(|p| *p > 0);
        if let (Some(quota), Some(period)) = (quota, period) {
            let wanted = quota.div_ceil(period);
            if wanted > u64::from(size.vcpus) {
                return Err(format!(
                    "its CPU quota ({quota} per {period} µs) needs {wanted} vCPUs; the VM has {}",
                    size.vcpus
                ));
            }
        }
    }
    Ok(())
}
