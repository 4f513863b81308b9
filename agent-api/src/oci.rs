//! The OCI runtime spec (`config.json`) as the container requests carry
//! it: the same JSON, with the names of the OCI runtime spec, but only the
//! parts the agent acts on.
//!
//! These types are lean on purpose: the agent is the guest's whole image,
//! and a full OCI crate (oci-spec) brought regex and its automata into it,
//! which more than doubled its size. Unknown fields are ignored on input,
//! as the spec asks of runtimes. Features the agent refuses are kept, as
//! loosely typed [`serde_json::Value`]s where it only needs to see that
//! they are set, so a spec that asks for them is refused by name instead
//! of silently losing them on the way. Fields the agent ignores on purpose
//! (hooks, AppArmor/SELinux labels) are not carried; annotations are, for
//! the few `io.runvm.*` ones the agent reads.
//!
//! Validation that needs more than the JSON's shape (capability names,
//! paths, propagation types, ...) is the agent's, so its messages name the
//! problem.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Whether a loosely kept field asks for something: set and not an empty
/// list or map.
pub fn is_set(value: &Option<Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

/// The root object of `config.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub oci_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Root>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<Mount>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<Process>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domainname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linux: Option<Linux>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Root {
    #[serde(default)]
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub destination: PathBuf,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
    /// Id-mapped mounts: refused by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid_mappings: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid_mappings: Option<Value>,
}

/// A container process: the init's (`process`) or an exec's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_size: Option<ConsoleSize>,
    /// Required by the OCI spec, as `cwd` is.
    pub user: User,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    pub cwd: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<LinuxCapabilities>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rlimits: Option<Vec<PosixRlimit>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_new_privileges: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<Scheduler>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_priority: Option<IoPriority>,
    #[serde(
        default,
        rename = "execCPUAffinity",
        skip_serializing_if = "Option::is_none"
    )]
    pub exec_cpu_affinity: Option<ExecCpuAffinity>,
}

/// `process.scheduler`: sched_setattr(2)'s settings. Policy and flag names
/// are kept as text; the agent maps them and refuses unknown ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scheduler {
    pub policy: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nice: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
}

/// `process.ioPriority`: an I/O scheduling class (`IOPRIO_CLASS_RT`, `_BE`,
/// `_IDLE`) and a priority within it (0..7).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoPriority {
    pub class: String,
    #[serde(default)]
    pub priority: i64,
}

/// `process.execCPUAffinity`: CPU lists such as `0-3,7`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecCpuAffinity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
    #[serde(default, rename = "final", skip_serializing_if = "Option::is_none")]
    pub final_: Option<String>,
}

/// `linux.personality`: the execution domain (`LINUX`, `LINUX32`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxPersonality {
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleSize {
    #[serde(default)]
    pub height: u64,
    #[serde(default)]
    pub width: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub additional_gids: Option<Vec<u32>>,
}

/// Capability names as the spec writes them (`CAP_KILL`); the agent maps
/// them to the kernel's numbers and refuses unknown ones.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxCapabilities {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bounding: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inheritable: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permitted: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ambient: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PosixRlimitType {
    RlimitCpu,
    RlimitFsize,
    RlimitData,
    RlimitStack,
    RlimitCore,
    RlimitRss,
    RlimitNproc,
    RlimitNofile,
    RlimitMemlock,
    RlimitAs,
    RlimitLocks,
    RlimitSigpending,
    RlimitMsgqueue,
    RlimitNice,
    RlimitRtprio,
    RlimitRttime,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosixRlimit {
    #[serde(rename = "type")]
    pub typ: PosixRlimitType,
    #[serde(default)]
    pub hard: u64,
    #[serde(default)]
    pub soft: u64,
}

/// The `linux` section.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid_mappings: Option<Vec<LinuxIdMapping>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid_mappings: Option<Vec<LinuxIdMapping>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sysctl: Option<HashMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<LinuxResources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<LinuxNamespace>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<LinuxDevice>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<LinuxSeccomp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_propagation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly_paths: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub personality: Option<LinuxPersonality>,
    // Refused by the agent when set: kept only to be seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intel_rdt: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_policy: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_offsets: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_devices: Option<Value>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxIdMapping {
    #[serde(default, rename = "containerID")]
    pub container_id: u32,
    #[serde(default, rename = "hostID")]
    pub host_id: u32,
    #[serde(default)]
    pub size: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinuxNamespaceType {
    Mount,
    Cgroup,
    Uts,
    Ipc,
    User,
    Pid,
    Network,
    Time,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxNamespace {
    #[serde(rename = "type")]
    pub typ: LinuxNamespaceType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinuxDeviceType {
    /// All (device cgroup rules only).
    A,
    B,
    C,
    U,
    P,
}

/// A device node to create in the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxDevice {
    #[serde(default)]
    pub path: PathBuf,
    #[serde(rename = "type")]
    pub typ: LinuxDeviceType,
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// A device cgroup rule of `linux.resources.devices`; absent numbers are
/// wildcards, an absent type is `a` (all).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxDeviceCgroup {
    #[serde(default)]
    pub allow: bool,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub typ: Option<LinuxDeviceType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
}

/// `linux.resources`: the cgroup limits.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxResources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<LinuxMemory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<LinuxCpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<LinuxPids>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unified: Option<HashMap<String, String>>,
    #[serde(default, rename = "blockIO", skip_serializing_if = "Option::is_none")]
    pub block_io: Option<LinuxBlockIo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hugepage_limits: Option<Vec<LinuxHugepageLimit>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<LinuxDeviceCgroup>>,
    // Refused by the agent when set: kept only to be seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma: Option<Value>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxMemory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<i64>,
    #[serde(
        default,
        rename = "disableOOMKiller",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_oom_killer: Option<bool>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxCpu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime_runtime: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime_period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mems: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<i64>,
}

/// `linux.resources.blockIO`: weights (10..1000, as cgroup v1 counted
/// them) and throttles, per device by its major and minor numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxBlockIo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_weight: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_device: Option<Vec<LinuxWeightDevice>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_read_bps_device: Option<Vec<LinuxThrottleDevice>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_write_bps_device: Option<Vec<LinuxThrottleDevice>>,
    #[serde(
        default,
        rename = "throttleReadIOPSDevice",
        skip_serializing_if = "Option::is_none"
    )]
    pub throttle_read_iops_device: Option<Vec<LinuxThrottleDevice>>,
    #[serde(
        default,
        rename = "throttleWriteIOPSDevice",
        skip_serializing_if = "Option::is_none"
    )]
    pub throttle_write_iops_device: Option<Vec<LinuxThrottleDevice>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxWeightDevice {
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leaf_weight: Option<u16>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxThrottleDevice {
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
    #[serde(default)]
    pub rate: u64,
}

/// One entry of `linux.resources.hugepageLimits`: at most `limit` bytes of
/// hugepages of `pageSize` (`2MB`, `1GB`, `64KB`: the cgroup's spelling).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxHugepageLimit {
    pub page_size: String,
    #[serde(default)]
    pub limit: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinuxPids {
    #[serde(default)]
    pub limit: i64,
}

/// `linux.seccomp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxSeccomp {
    pub default_action: LinuxSeccompAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    /// `SCMP_ARCH_*` names, kept as text: the agent only looks for its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<Vec<LinuxSeccompFilterFlag>>,
    /// Seccomp notify: refused by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscalls: Option<Vec<LinuxSyscall>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LinuxSeccompAction {
    ScmpActKill,
    ScmpActKillThread,
    ScmpActKillProcess,
    ScmpActTrap,
    ScmpActErrno,
    ScmpActNotify,
    ScmpActTrace,
    ScmpActLog,
    ScmpActAllow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LinuxSeccompFilterFlag {
    SeccompFilterFlagLog,
    SeccompFilterFlagTsync,
    SeccompFilterFlagSpecAllow,
    SeccompFilterFlagWaitKillableRecv,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LinuxSeccompOperator {
    ScmpCmpNe,
    ScmpCmpLt,
    ScmpCmpLe,
    ScmpCmpEq,
    ScmpCmpGe,
    ScmpCmpGt,
    ScmpCmpMaskedEq,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxSyscall {
    pub names: Vec<String>,
    pub action: LinuxSeccompAction,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<LinuxSeccompArg>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxSeccompArg {
    pub index: usize,
    pub value: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_two: Option<u64>,
    pub op: LinuxSeccompOperator,
}

/// cgroup v1 `cpu.shares` (2..=262144, default 1024) to a cgroup2
/// `cpu.weight` (1..=10000, default 100), linearly from end to end: the
/// mapping runc and crun use, so that a container gets the same weight
/// from either (and from the guest's cgroup and the host's). 0, no
/// shares, stays 0.
pub fn cpu_shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let shares = shares.clamp(2, 262_144);
    1 + (shares - 2) * 9_999 / 262_142
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config.json with every field these types know, in the spelling of
    /// the OCI runtime spec, plus fields they do not know.
    const FULL: &str = r#"{
        "ociVersion": "1.2.0",
        "process": {
            "terminal": true,
            "consoleSize": {"height": 24, "width": 80},
            "user": {"uid": 1000, "gid": 100, "umask": 18, "additionalGids": [10, 20]},
            "args": ["sh", "-c", "echo hi"],
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/home",
            "capabilities": {
                "bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                "inheritable": [], "permitted": ["CAP_KILL"], "ambient": ["CAP_KILL"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
            "noNewPrivileges": true,
            "oomScoreAdj": -100,
            "scheduler": {"policy": "SCHED_BATCH", "nice": 5, "priority": 0,
                          "flags": ["SCHED_FLAG_RECLAIM"], "runtime": 1,
                          "deadline": 2, "period": 3},
            "ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 4},
            "execCPUAffinity": {"initial": "0-3,7", "final": "0"}
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "box",
        "domainname": "example.org",
        "annotations": {"io.runvm.vsock": "allow"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "source": "/srv", "options": ["rbind", "ro"],
             "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}],
             "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1}]}
        ],
        "linux": {
            "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
            "sysctl": {"net.ipv4.ip_forward": "1"},
            "resources": {
                "memory": {"limit": 67108864, "reservation": -1, "swap": 134217728,
                           "disableOOMKiller": false},
                "cpu": {"shares": 1024, "quota": 50000, "burst": 1000, "period": 100000,
                        "realtimeRuntime": 1, "realtimePeriod": 2, "cpus": "0", "mems": "0",
                        "idle": 0},
                "pids": {"limit": 32},
                "unified": {"memory.high": "1000000"},
                "blockIO": {"weight": 10, "leafWeight": 10,
                            "weightDevice": [{"major": 8, "minor": 0, "weight": 500,
                                              "leafWeight": 300}],
                            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
                            "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 2}],
                            "throttleReadIOPSDevice": [{"major": 8, "minor": 16, "rate": 3}],
                            "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 4}]},
                "hugepageLimits": [{"pageSize": "2MB", "limit": 0},
                                   {"pageSize": "1GB", "limit": 1073741824}],
                "devices": [{"allow": false, "access": "rwm"},
                            {"allow": true, "type": "c", "major": 1, "minor": 3,
                             "access": "rw"}],
                "network": {"classID": 1},
                "rdma": {"mlx5_1": {"hcaHandles": 3}}
            },
            "namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"},
                           {"type": "mount"}, {"type": "ipc"}, {"type": "uts"},
                           {"type": "user"}, {"type": "cgroup"}, {"type": "time"}],
            "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229,
                         "fileMode": 438, "uid": 0, "gid": 0}],
            "seccomp": {
                "defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
                "flags": ["SECCOMP_FILTER_FLAG_LOG"],
                "listenerPath": "/run/seccomp.sock",
                "syscalls": [{"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                              "errnoRet": 1,
                              "args": [{"index": 0, "value": 255, "valueTwo": 8,
                                        "op": "SCMP_CMP_MASKED_EQ"}]}]
            },
            "rootfsPropagation": "rslave",
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"],
            "personality": {"domain": "LINUX32", "flags": []},
            "intelRdt": {"closID": "guaranteed_group"},
            "memoryPolicy": {"mode": "MPOL_BIND", "nodes": "0"},
            "timeOffsets": {"monotonic": {"secs": 1}},
            "netDevices": {"eth0": {"name": "eth1"}}
        }
    }"#;

    /// What the agent ignores: dropped on the way in.
    const IGNORED: &str = r#"{
        "ociVersion": "1.2.0",
        "process": {"user": {"uid": 0, "gid": 0, "username": "root"}, "cwd": "/",
                    "apparmorProfile": "p", "selinuxLabel": "l", "commandLine": "c"},
        "hooks": {"prestart": [{"path": "/bin/true"}]},
        "linux": {"cgroupsPath": "/c", "mountLabel": "l",
                  "resources": {"memory": {"kernel": 1, "kernelTCP": 1, "swappiness": 1}},
                  "seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "listenerMetadata": "m"}},
        "vm": {"hypervisor": {"path": "/bin/qemu"}},
        "somethingNew": {"x": 1}
    }"#;

    #[test]
    fn every_known_field_round_trips_in_oci_spelling() {
        let spec: Spec = serde_json::from_str(FULL).unwrap();
        let linux = spec.linux.as_ref().unwrap();
        assert_eq!(linux.namespaces.as_ref().unwrap().len(), 8);
        assert!(linux.personality.is_some());
        assert!(is_set(&linux.resources.as_ref().unwrap().rdma));
        let back = serde_json::to_value(&spec).unwrap();
        let original: Value = serde_json::from_str(FULL).unwrap();
        assert_eq!(back, original, "a field is lost or misspelt on the way");
    }

    #[test]
    fn unknown_and_ignored_fields_are_dropped() {
        let spec: Spec = serde_json::from_str(IGNORED).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "ociVersion": "1.2.0",
                "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/"},
                "linux": {"resources": {"memory": {}},
                          "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}}
            })
        );
    }

    #[test]
    fn empty_lists_and_maps_do_not_count_as_set() {
        for (json, set) in [
            ("null", false),
            ("[]", false),
            ("{}", false),
            ("[1]", true),
            (r#"{"a":1}"#, true),
            ("0", true),
        ] {
            let value: Option<Value> = serde_json::from_str(json).unwrap();
            assert_eq!(is_set(&value), set, "{json}");
        }
    }

    #[test]
    fn a_process_needs_user_and_cwd() {
        let missing = |json: &str| serde_json::from_str::<Process>(json).unwrap_err();
        assert!(missing(r#"{"cwd": "/"}"#).to_string().contains("user"));
        assert!(missing(r#"{"user": {}}"#).to_string().contains("cwd"));
    }

    /// The host may read config.json with the full OCI crate: what it
    /// writes reads the same here, and what these types write is valid
    /// OCI JSON for it.
    #[test]
    fn oci_spec_agrees_on_the_json() {
        let full: oci_spec::runtime::Spec = serde_json::from_str(FULL).unwrap();
        let from_full: Spec = serde_json::from_value(serde_json::to_value(&full).unwrap()).unwrap();
        let lean: Spec = serde_json::from_str(FULL).unwrap();
        assert_eq!(from_full, lean);
        let back: oci_spec::runtime::Spec =
            serde_json::from_value(serde_json::to_value(&lean).unwrap()).unwrap();
        assert_eq!(back, full);
    }
}
