//! The host limits of a container's cgroup: they bound the VM as a whole,
//! while the guest enforces the container's own limits inside.
//!
//! - memory: only when the container (or the pod a sandbox sizes its VM
//!   for) has a limit, the guest's RAM (the limit plus the guest's own
//!   overhead, see `sandbox::size`)
//!   plus what the host processes around it need ([`HOST_OVERHEAD_MIB`]);
//! - CPU: `linux.resources.cpu` quota, period and shares as they are (on
//!   cgroup2: `cpu.max`, and `cpu.weight` converted from the shares);
//! - pids: not applied on the host. The container's pids limit counts the
//!   guest's processes, which are not host processes; what the host
//!   cgroup holds is runvm's own: the monitors, the VMM's threads (one per
//!   vCPU, plus its I/O threads) and virtiofsd's thread pool. A limit
//!   meant for the container's processes (`--pids-limit 20`, or a pod's
//!   limit) would starve those instead, so the guest alone enforces it.

use oci_spec::runtime::Spec;

use super::{write, CgroupError, HostCgroup};

/// Host memory beyond the guest's RAM, for the processes that carry the
/// VM: [`HOST_OVERHEAD_MIB`] plus 1/[`HOST_OVERHEAD_PER_GUEST`] of the
/// guest's RAM. Measured on the project's (emulating, shadow-paging) host
/// with a 64 MiB container (192 MiB VM) that wrote 56 MiB through
/// virtio-fs, then ran two detached execs (v1 memory.stat, /proc status):
/// - the guest's RAM is a memfd shared by the VMM and virtiofsd, counted
///   once as shmem (83 MiB touched of 192), and never more than the VM's
///   size;
/// - anonymous memory of all the host processes: 1.1 MiB (monitor 0.65,
///   VMM 0.3, virtiofsd 0.3 + 0.45 for its sandboxed child); each exec's
///   monitor adds 0.6 MiB;
/// - kernel memory (KVM's shadow page tables, page tables, slab): 2.0 MiB
///   after boot, 4.3 MiB with 83 MiB of guest RAM touched: it grows with
///   the guest memory in use, hence the proportional term;
/// - program text (runvm 4.6 MiB, runvm-vmm 2.6, virtiofsd 3.4), charged
///   to whichever cgroup first reads it;
/// - the host's page cache of files virtiofsd read or wrote (here 76 MiB
///   for the 56 MiB file): charged to this cgroup too, but reclaimable:
///   under the limit it is written back and dropped, so it throttles a
///   container writing much to its rootfs rather than killing it.
///
/// So ~15 MiB must stay resident beside the guest; 64 MiB leaves room for
/// dozens of execs and a working set of page cache.
pub const HOST_OVERHEAD_MIB: u64 = 64;
/// The part of the overhead that grows with the guest (KVM's structures
/// for its memory): kernel memory grew by 2.3 MiB for 63 MiB more guest
/// RAM touched (3.6%, some of it the slab of the host's page cache, which
/// the fixed part covers); 1/32 (3.1%) on top of the fixed part.
pub const HOST_OVERHEAD_PER_GUEST: u64 = 32;

/// What the host cgroup is set to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Bytes; `None`: no limit.
    pub memory: Option<u64>,
    pub cpu: CpuLimits,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuLimits {
    pub shares: Option<u64>,
    /// Microseconds per period; negative: no quota.
    pub quota: Option<i64>,
    pub period: Option<u64>,
}

impl CpuLimits {
    pub fn of(spec: &Spec) -> CpuLimits {
        let cpu = spec
            .linux()
            .as_ref()
            .and_then(|l| l.resources().as_ref())
            .and_then(|r| r.cpu().as_ref());
        CpuLimits {
            shares: cpu.and_then(|c| c.shares()).filter(|s| *s > 0),
            quota: cpu.and_then(|c| c.quota()).filter(|q| *q != 0),
            period: cpu.and_then(|c| c.period()).filter(|p| *p > 0),
        }
    }

    /// The CPU limits an update gives (an `update` of the container that
    /// owns the VM: the VM as a whole gets them); `None` without any.
    pub fn of_update(resources: &runvm_agent_api::oci::LinuxResources) -> Option<CpuLimits> {
        resources.cpu.as_ref().map(|cpu| CpuLimits {
            shares: cpu.shares.filter(|s| *s > 0),
            quota: cpu.quota.filter(|q| *q != 0),
            period: cpu.period.filter(|p| *p > 0),
        })
    }

    fn is_empty(&self) -> bool {
        *self == CpuLimits::default()
    }
}

impl Limits {
    /// The limits for a container whose VM gets `guest_memory_mib` of RAM.
    /// The memory is limited when the container is, or, for a pod's
    /// sandbox, when the pod is (the CRI sizing annotations of its
    /// config.json: see [`crate::sandbox::size`]).
    pub fn for_vm(spec: &Spec, guest_memory_mib: u32) -> Limits {
        let own = crate::bundle::memory_limit(spec).is_some_and(|limit| limit > 0);
        let pod = crate::sandbox::size::pod_limits(spec)
            .and_then(|limits| limits.memory)
            .and_then(|memory| memory.limit)
            .is_some_and(|limit| limit > 0);
        let limited = own || pod;
        Limits {
            memory: limited.then(|| {
                let guest = u64::from(guest_memory_mib);
                (guest + HOST_OVERHEAD_MIB + guest / HOST_OVERHEAD_PER_GUEST) << 20
            }),
            cpu: CpuLimits::of(spec),
        }
    }
}

impl HostCgroup {
    /// Sets the memory limit (v1 `memory.limit_in_bytes`, cgroup2
    /// `memory.max`) on a directory runvm made; one that existed is
    /// joined but keeps its owner's limits. Without a memory hierarchy on a v1 host nothing is
    /// set; a cgroup2 host whose memory controller cannot be used here is
    /// an error, as with runc.
    pub fn set_memory(&self, bytes: Option<u64>) -> Result<(), CgroupError> {
        let Some(bytes) = bytes else {
            return Ok(());
        };
        let value = bytes.to_string();
        match self.dir_for("memory") {
            // An existing cgroup keeps its owner's limits.
            Some(dir) if !dir.made_here() => Ok(()),
            Some(dir) if dir.unified => write(&dir.path.join("memory.max"), &value),
            Some(dir) => write(&dir.path.join("memory.limit_in_bytes"), &value),
            None if self.unified_mode() => Err(self.no_controller("the memory limit")),
            None => Ok(()),
        }
    }

    /// Sets the CPU limits (v1 `cpu.cfs_period_us`, `cpu.cfs_quota_us`,
    /// `cpu.shares`; cgroup2 `cpu.max`, `cpu.weight`).
    pub fn set_cpu(&self, cpu: &CpuLimits) -> Result<(), CgroupError> {
        if cpu.is_empty() {
            return Ok(());
        }
        let Some(dir) = self.dir_for("cpu") else {
            if self.unified_mode() {
                return Err(self.no_controller("the CPU limits"));
            }
            return Ok(());
        };
        if !dir.made_here() {
            // An existing cgroup keeps its owner's limits.
            return Ok(());
        }
        if dir.unified {
            if let Some(shares) = cpu.shares {
                write(
                    &dir.path.join("cpu.weight"),
                    &runvm_agent_api::oci::cpu_shares_to_weight(shares).to_string(),
                )?;
            }
            if cpu.quota.is_some() || cpu.period.is_some() {
                // An update may give only one of the two: the other
                // stays as it is (runc merges with what it set before).
                let file = dir.path.join("cpu.max");
                let current = std::fs::read_to_string(&file).unwrap_or_default();
                write(&file, &cpu_max(&merged_cpu_max(cpu, &current)))?;
            }
            return Ok(());
        }
        if let Some(period) = cpu.period {
            write(&dir.path.join("cpu.cfs_period_us"), &period.to_string())?;
        }
        if let Some(quota) = cpu.quota {
            let quota = if quota < 0 { -1 } else { quota };
            write(&dir.path.join("cpu.cfs_quota_us"), &quota.to_string())?;
        }
        if let Some(shares) = cpu.shares {
            write(&dir.path.join("cpu.shares"), &shares.to_string())?;
        }
        Ok(())
    }

    /// The host uses cgroup2 alone (no v1 hierarchy in the record).
    fn unified_mode(&self) -> bool {
        !self.dirs.is_empty() && self.dirs.iter().all(|d| d.unified)
    }

    fn no_controller(&self, what: &'static str) -> CgroupError {
        CgroupError::NoController {
            what,
            path: self
                .dirs
                .first()
                .map(|d| d.path.join("cgroup.controllers"))
                .unwrap_or_default(),
        }
    }
}

/// cgroup2's `cpu.max`: "quota period", "max" for no quota; the period
/// defaults to 100 ms as the kernel's does.
fn cpu_max(cpu: &CpuLimits) -> String {
    let period = cpu.period.unwrap_or(100_000);
    match cpu.quota {
        Some(quota) if quota > 0 => format!("{quota} {period}"),
        _ => format!("max {period}"),
    }
}

/// `cpu` with the quota or period it leaves out taken from `current`,
/// the text of cpu.max ("quota period" or "max period").
fn merged_cpu_max(cpu: &CpuLimits, current: &str) -> CpuLimits {
    let mut fields = current.split_whitespace();
    let quota = match fields.next() {
        Some("max") => Some(-1),
        Some(text) => text.parse().ok(),
        None => None,
    };
    let period = fields.next().and_then(|text| text.parse().ok());
    CpuLimits {
        shares: cpu.shares,
        quota: cpu.quota.or(quota),
        period: cpu.period.or(period),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(resources: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "linux": {"resources": resources}
        }))
        .expect("spec")
    }

    #[test]
    fn memory_only_with_a_container_limit() {
        let limited = spec(serde_json::json!({"memory": {"limit": 64 << 20}}));
        assert_eq!(
            Limits::for_vm(&limited, 192).memory,
            Some((192 + 64 + 6) << 20)
        );
        let unlimited = spec(serde_json::json!({"memory": {"limit": -1}}));
        assert_eq!(Limits::for_vm(&unlimited, 128).memory, None);
        assert_eq!(
            Limits::for_vm(&spec(serde_json::json!({})), 128),
            Limits::default()
        );
    }

    #[test]
    fn a_sized_pods_sandbox_is_limited_too() {
        // containerd's sandbox: no limit of its own, the pod's in the
        // sizing annotations (the VM was sized for it).
        let sandbox: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.kubernetes.cri.sandbox-memory": "134217728"},
            "linux": {"resources": {"cpu": {"shares": 2}}}
        }))
        .expect("spec");
        let limits = Limits::for_vm(&sandbox, 256);
        assert_eq!(limits.memory, Some((256 + 64 + 8) << 20));
        assert_eq!(limits.cpu.shares, Some(2));
        let unsized_pod: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "annotations": {"io.kubernetes.cri.sandbox-memory": "0"}
        }))
        .expect("spec");
        assert_eq!(Limits::for_vm(&unsized_pod, 256).memory, None);
    }

    #[test]
    fn cpu_limits_as_given() {
        let s = spec(serde_json::json!({"cpu": {"quota": 50000, "period": 100000, "shares": 512}}));
        let cpu = Limits::for_vm(&s, 128).cpu;
        assert_eq!(
            cpu,
            CpuLimits {
                shares: Some(512),
                quota: Some(50000),
                period: Some(100000)
            }
        );
        assert_eq!(cpu_max(&cpu), "50000 100000");
        let no_quota = CpuLimits {
            quota: Some(-1),
            ..CpuLimits::default()
        };
        assert_eq!(cpu_max(&no_quota), "max 100000");
        // An update of one of the two keeps the other.
        let period_only = CpuLimits {
            period: Some(50_000),
            ..CpuLimits::default()
        };
        assert_eq!(
            cpu_max(&merged_cpu_max(&period_only, "20000 100000\n")),
            "20000 50000"
        );
        let quota_only = CpuLimits {
            quota: Some(30_000),
            ..CpuLimits::default()
        };
        assert_eq!(
            cpu_max(&merged_cpu_max(&quota_only, "max 250000\n")),
            "30000 250000"
        );
        assert_eq!(cpu_max(&merged_cpu_max(&quota_only, "")), "30000 100000");
    }
}
