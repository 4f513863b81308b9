//! The OCI runtime spec turned into a plan: everything checked, converted
//! and allocated before the agent forks, so the container's processes only
//! carry it out. Pure: all of it is tested on the host.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use runvm_agent_api::oci::{
    self, LinuxDeviceType, LinuxIdMapping, LinuxNamespaceType, PosixRlimitType, Process, Spec,
};

use super::cgroups::{self, CgroupWrite};
use super::devices;
use super::mountopts::{self, MountOptions};
use super::procattrs::{self, ProcessAttrs};
use super::seccomp::{self, SeccompProgram};
use super::sysctl;

/// A namespace the container has: created, or joined by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    /// CLONE_NEW* flag.
    pub flag: libc::c_int,
    /// Its name under /proc/<pid>/ns.
    pub name: &'static str,
    /// Join this one instead of creating it.
    pub path: Option<PathBuf>,
    /// Join this container's instead of creating it (a pod's shared
    /// namespace: see `pod`).
    pub shared_with: Option<String>,
}

impl Namespace {
    /// Neither joined by path nor shared: created for the container.
    pub fn is_new(&self) -> bool {
        self.path.is_none() && self.shared_with.is_none()
    }
}

pub fn namespace_flag(kind: LinuxNamespaceType) -> Result<(libc::c_int, &'static str), String> {
    Ok(match kind {
        LinuxNamespaceType::Mount => (libc::CLONE_NEWNS, "mnt"),
        LinuxNamespaceType::Cgroup => (libc::CLONE_NEWCGROUP, "cgroup"),
        LinuxNamespaceType::Uts => (libc::CLONE_NEWUTS, "uts"),
        LinuxNamespaceType::Ipc => (libc::CLONE_NEWIPC, "ipc"),
        LinuxNamespaceType::User => (libc::CLONE_NEWUSER, "user"),
        LinuxNamespaceType::Pid => (libc::CLONE_NEWPID, "pid"),
        LinuxNamespaceType::Network => (libc::CLONE_NEWNET, "net"),
        LinuxNamespaceType::Time => return Err("time namespaces are not supported by runvm".into()),
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// Bind `source` (a guest path).
    Bind { source: PathBuf },
    /// A new filesystem of this type.
    Fs { fstype: String, source: String },
    /// cgroup2: the container's own cgroup (its namespace's root).
    Cgroup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountPlan {
    pub destination: PathBuf,
    pub kind: MountKind,
    pub options: MountOptions,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevicePlan {
    /// Path inside the container, e.g. /dev/null.
    pub path: PathBuf,
    /// S_IFCHR, S_IFBLK or S_IFIFO, with the permission bits.
    pub mode: libc::mode_t,
    pub major: u32,
    pub minor: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The devices every container gets in a /dev of its own, as runc creates
/// them.
pub const DEFAULT_DEVICES: &[(&str, u32, u32)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Symlinks in a /dev of the container's own: (link, target).
pub const DEV_SYMLINKS: &[(&str, &str)] = &[
    ("/dev/fd", "/proc/self/fd"),
    ("/dev/stdin", "/proc/self/fd/0"),
    ("/dev/stdout", "/proc/self/fd/1"),
    ("/dev/stderr", "/proc/self/fd/2"),
    ("/dev/ptmx", "pts/ptmx"),
];

/// Capabilities by set, as the kernel numbers them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapsPlan {
    pub bounding: Vec<caps::Capability>,
    pub effective: Vec<caps::Capability>,
    pub permitted: Vec<caps::Capability>,
    pub inheritable: Vec<caps::Capability>,
    pub ambient: Vec<caps::Capability>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: libc::c_int,
    pub soft: u64,
    pub hard: u64,
}

/// What a container process (the init or an exec) runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessPlan {
    pub args: Vec<CString>,
    /// The environment, HOME and the variables PID 1 passes on included
    /// once known (see `finish_env`).
    pub env: Vec<String>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub umask: Option<u32>,
    pub terminal: bool,
    pub console_size: Option<(u16, u16)>,
    pub caps: Option<CapsPlan>,
    pub rlimits: Vec<Rlimit>,
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
    /// Scheduler, I/O priority, CPU affinity, personality.
    pub attrs: ProcessAttrs,
    /// `args[0]` as the host found it in PATH (see [`found_by_host`]);
    /// `None`: the process searches its PATH.
    pub program: Option<CString>,
}

/// A whole container.
#[derive(Debug, Clone)]
pub struct ContainerPlan {
    pub namespaces: Vec<Namespace>,
    pub uid_map: Option<String>,
    pub gid_map: Option<String>,
    pub rootfs: PathBuf,
    pub readonly_root: bool,
    pub root_propagation: MsFlags,
    pub mounts: Vec<MountPlan>,
    /// Give the container a /dev of its own: default devices and symlinks.
    pub setup_dev: bool,
    pub devices: Vec<DevicePlan>,
    pub masked_paths: Vec<PathBuf>,
    pub readonly_paths: Vec<PathBuf>,
    pub hostname: Option<String>,
    pub domainname: Option<String>,
    /// (path under /proc/sys, value)
    pub sysctl: Vec<(PathBuf, String)>,
    pub process: ProcessPlan,
    pub seccomp: Option<SeccompProgram>,
    /// The agent's own filter under the spec's (see `seccomp::guard_for`).
    pub guard: Option<SeccompProgram>,
    pub resources: Vec<CgroupWrite>,
    /// The cgroup device program (`devices`); `None` allows every device.
    pub device_program: Option<Vec<u64>>,
}

impl ContainerPlan {
    pub fn has_namespace(&self, flag: libc::c_int) -> bool {
        self.namespaces.iter().any(|n| n.flag == flag)
    }

    /// CLONE_NEW* flags of the namespaces to create.
    pub fn clone_flags(&self) -> libc::c_int {
        self.namespaces
            .iter()
            .filter(|n| n.is_new())
            .fold(0, |flags, n| flags | n.flag)
    }
}

fn cstring(s: &str, what: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{what} {s:?} contains a NUL byte"))
}

fn rlimit_resource(kind: PosixRlimitType) -> libc::c_int {
    (match kind {
        PosixRlimitType::RlimitCpu => libc::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => libc::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => libc::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => libc::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => libc::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => libc::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => libc::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => libc::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => libc::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => libc::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => libc::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => libc::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => libc::RLIMIT_RTTIME,
    }) as libc::c_int
}

/// An OCI capability name as the kernel numbers it. Like runc and
/// oci-spec, the case and the `CAP_` prefix do not matter (Kubernetes
/// writes `NET_ADMIN`).
pub fn capability(name: &str) -> Result<caps::Capability, String> {
    let upper = name.to_ascii_uppercase();
    let mut bare = upper.as_str();
    while let Some(rest) = bare.strip_prefix("CAP_") {
        bare = rest;
    }
    format!("CAP_{bare}")
        .parse()
        .map_err(|_| format!("capability {name:?} is unknown to runvm"))
}

fn cap_list(set: &Option<Vec<String>>) -> Result<Vec<caps::Capability>, String> {
    let mut list = set
        .iter()
        .flatten()
        .map(|name| capability(name))
        .collect::<Result<Vec<_>, _>>()?;
    list.sort_by_key(|c| c.index());
    list.dedup();
    Ok(list)
}

/// The variables PID 1 passes to every process it starts (see
/// `exec::PASSED_ON_FROM_INIT`): what the agent's environment has for them.
pub fn passed_on_env() -> Vec<(String, String)> {
    crate::exec::PASSED_ON_FROM_INIT
        .iter()
        .filter_map(|name| Some((name.to_string(), std::env::var(name).ok()?)))
        .collect()
}

/// The plan for an OCI process (the init's or an exec's).
pub fn process_plan(
    process: &Process,
    inherited: &[(String, String)],
) -> Result<ProcessPlan, String> {
    let args = process.args.clone().unwrap_or_default();
    if args.is_empty() {
        return Err("process.args is empty".into());
    }
    let args = args
        .iter()
        .map(|a| cstring(a, "argument"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut env = Vec::new();
    for entry in process.env.iter().flatten() {
        match entry.split_once('=') {
            Some((name, _)) if !name.is_empty() => {}
            _ => return Err(format!("environment entry {entry:?} is not NAME=value")),
        }
        if entry.contains('\0') {
            return Err(format!("environment entry {entry:?} contains a NUL byte"));
        }
        env.push(entry.clone());
    }
    for (name, value) in inherited {
        if !env
            .iter()
            .any(|e| e.split_once('=').is_some_and(|(n, _)| n == name))
        {
            env.push(format!("{name}={value}"));
        }
    }
    let cwd = process.cwd.clone();
    if !cwd.is_absolute() {
        return Err(format!("process.cwd {} is not absolute", cwd.display()));
    }
    let user = &process.user;
    let caps = match &process.capabilities {
        None => None,
        Some(c) => Some(CapsPlan {
            bounding: cap_list(&c.bounding)?,
            effective: cap_list(&c.effective)?,
            permitted: cap_list(&c.permitted)?,
            inheritable: cap_list(&c.inheritable)?,
            ambient: cap_list(&c.ambient)?,
        }),
    };
    let mut rlimits: Vec<Rlimit> = Vec::new();
    for r in process.rlimits.iter().flatten() {
        let resource = rlimit_resource(r.typ);
        if rlimits.iter().any(|o| o.resource == resource) {
            return Err(format!("rlimit {:?} is given twice", r.typ));
        }
        if r.soft > r.hard {
            return Err(format!(
                "rlimit {:?}: soft limit above the hard limit",
                r.typ
            ));
        }
        rlimits.push(Rlimit {
            resource,
            soft: r.soft,
            hard: r.hard,
        });
    }
    let console_size = process.console_size.map(|b| {
        (
            u16::try_from(b.height).unwrap_or(u16::MAX),
            u16::try_from(b.width).unwrap_or(u16::MAX),
        )
    });
    Ok(ProcessPlan {
        args,
        env,
        cwd,
        uid: user.uid,
        gid: user.gid,
        additional_gids: user.additional_gids.clone().unwrap_or_default(),
        umask: user.umask,
        terminal: process.terminal.unwrap_or(false),
        console_size,
        caps,
        rlimits,
        no_new_privileges: process.no_new_privileges.unwrap_or(false),
        oom_score_adj: process.oom_score_adj,
        attrs: procattrs::plan(process)?,
        program: None,
    })
}

/// The host's answer to the PATH search for `args0`, when it is one the
/// search could give: an absolute path ending in `/args0`. Anything else
/// is dropped, and the process searches as without one.
pub fn found_by_host(found: Option<&str>, args0: &CStr) -> Option<CString> {
    let found = found?;
    let name = args0.to_str().ok()?;
    let dir = found.strip_suffix(name)?.strip_suffix('/')?;
    let plain = (dir.is_empty() || dir.starts_with('/'))
        && !name.contains('/')
        && !found.split('/').any(|c| c == "." || c == "..");
    plain.then(|| CString::new(found).ok()).flatten()
}

fn id_map(mappings: &Option<Vec<LinuxIdMapping>>) -> Option<String> {
    let mappings = mappings.as_ref().filter(|m| !m.is_empty())?;
    Some(
        mappings
            .iter()
            .map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size))
            .collect(),
    )
}

fn propagation(name: &str) -> Result<MsFlags, String> {
    Ok(match name {
        "" | "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        other => {
            return Err(format!(
                "rootfsPropagation {other:?} is not a propagation type"
            ))
        }
    })
}

fn device_mode(kind: LinuxDeviceType) -> Result<libc::mode_t, String> {
    Ok(match kind {
        LinuxDeviceType::C | LinuxDeviceType::U => libc::S_IFCHR,
        LinuxDeviceType::B => libc::S_IFBLK,
        LinuxDeviceType::P => libc::S_IFIFO,
        LinuxDeviceType::A => return Err("device type \"a\" names no device to create".into()),
    })
}

fn container_path(path: &Path, what: &str) -> Result<PathBuf, String> {
    let text = path.to_string_lossy();
    if text.contains('\0') {
        return Err(format!("{what} {text:?} contains a NUL byte"));
    }
    if !path.is_absolute() {
        return Err(format!("{what} {} is not absolute", path.display()));
    }
    Ok(path.to_path_buf())
}

/// Checks and converts `spec` for a container whose root is `rootfs`.
pub fn container_plan(
    spec: &Spec,
    rootfs: &Path,
    inherited: &[(String, String)],
) -> Result<ContainerPlan, String> {
    if !rootfs.is_absolute() {
        return Err(format!(
            "the rootfs {} is not an absolute path",
            rootfs.display()
        ));
    }
    let process = spec.process.as_ref().ok_or("the spec has no process")?;
    let mut process = process_plan(process, inherited)?;
    let no_linux = oci::Linux::default();
    let linux = spec.linux.as_ref().unwrap_or(&no_linux);
    process.attrs.personality = match &linux.personality {
        Some(p) => Some(procattrs::personality(p)?),
        None => None,
    };

    let mut namespaces: Vec<Namespace> = Vec::new();
    for ns in linux.namespaces.iter().flatten() {
        let (flag, name) = namespace_flag(ns.typ)?;
        if namespaces.iter().any(|n| n.flag == flag) {
            return Err(format!("namespace {name} is given twice"));
        }
        let path = match &ns.path {
            Some(p) => Some(container_path(p, "namespace path")?),
            None => None,
        };
        namespaces.push(Namespace {
            flag,
            name,
            path,
            shared_with: None,
        });
    }
    let has = |flag| namespaces.iter().any(|n: &Namespace| n.flag == flag);
    let scopes = sysctl::Scopes {
        ipc: has(libc::CLONE_NEWIPC),
        net: has(libc::CLONE_NEWNET),
        uts: has(libc::CLONE_NEWUTS),
        hostname: spec.hostname.as_ref().is_some_and(|h| !h.is_empty()),
    };
    if !has(libc::CLONE_NEWNS) {
        return Err("the container needs a mount namespace (linux.namespaces: mount)".into());
    }
    if (spec.hostname.as_ref().is_some_and(|h| !h.is_empty())
        || spec.domainname.as_ref().is_some_and(|h| !h.is_empty()))
        && !has(libc::CLONE_NEWUTS)
    {
        return Err("setting the hostname needs a UTS namespace".into());
    }
    let new_userns = namespaces
        .iter()
        .any(|n| n.flag == libc::CLONE_NEWUSER && n.path.is_none());
    let uid_map = id_map(&linux.uid_mappings);
    let gid_map = id_map(&linux.gid_mappings);
    if new_userns && (uid_map.is_none() || gid_map.is_none()) {
        return Err("a new user namespace needs linux.uidMappings and gidMappings".into());
    }
    if !new_userns && (uid_map.is_some() || gid_map.is_some()) {
        return Err("uid/gid mappings are given without a new user namespace".into());
    }
    // The VM is the pod's sandbox, and its network namespace is the pod's
    // (as with Kata): a container that asks for a new network namespace
    // runs in the guest's, which holds the pod's interfaces (today only
    // `lo`, what a new namespace would show too). Creating one and tearing
    // it down cost the emulated guest kernel ~0.45 s per container. Not so
    // with a new user namespace, which must own the network namespace for
    // the container to mount sysfs.
    if !new_userns {
        namespaces.retain(|n| !(n.flag == libc::CLONE_NEWNET && n.path.is_none()));
    }
    for (what, set) in [
        ("linux.intelRdt", linux.intel_rdt.is_some()),
        ("linux.memoryPolicy", linux.memory_policy.is_some()),
        ("linux.timeOffsets", oci::is_set(&linux.time_offsets)),
        ("linux.netDevices", oci::is_set(&linux.net_devices)),
    ] {
        if set {
            return Err(format!("{what} is not supported by runvm"));
        }
    }

    let mut mounts = Vec::new();
    let mut dev_is_bind = false;
    for m in spec.mounts.iter().flatten() {
        let destination = container_path(&m.destination, "mount destination")?;
        if m.uid_mappings.is_some() || m.gid_mappings.is_some() {
            return Err(format!(
                "id-mapped mounts ({}) are not supported by runvm",
                destination.display()
            ));
        }
        let options = mountopts::parse(m.options.as_deref().unwrap_or_default())?;
        let fstype = m.typ.clone().unwrap_or_default();
        let kind = if options.bind || fstype == "bind" {
            let source = m
                .source
                .clone()
                .ok_or_else(|| format!("bind mount on {} has no source", destination.display()))?;
            let source = container_path(&source, "bind mount source")?;
            MountKind::Bind { source }
        } else if fstype == "cgroup" || fstype == "cgroup2" {
            MountKind::Cgroup
        } else if fstype.is_empty() {
            return Err(format!("mount on {} has no type", destination.display()));
        } else {
            MountKind::Fs {
                source: m
                    .source
                    .as_ref()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| fstype.clone()),
                fstype,
            }
        };
        if destination == Path::new("/dev") && matches!(kind, MountKind::Bind { .. }) {
            dev_is_bind = true;
        }
        mounts.push(MountPlan {
            destination,
            kind,
            options,
        });
    }

    let mut devices: Vec<DevicePlan> = DEFAULT_DEVICES
        .iter()
        .map(|(path, major, minor)| DevicePlan {
            path: PathBuf::from(path),
            mode: libc::S_IFCHR | 0o666,
            major: *major,
            minor: *minor,
            uid: 0,
            gid: 0,
        })
        .collect();
    for d in linux.devices.iter().flatten() {
        let path = container_path(&d.path, "device path")?;
        if !path.starts_with("/dev") {
            return Err(format!("device {} is not under /dev", path.display()));
        }
        let plan = DevicePlan {
            mode: device_mode(d.typ)? | (d.file_mode.unwrap_or(0o666) & 0o7777),
            major: u32::try_from(d.major).map_err(|_| "device major out of range")?,
            minor: u32::try_from(d.minor).map_err(|_| "device minor out of range")?,
            uid: d.uid.unwrap_or(0),
            gid: d.gid.unwrap_or(0),
            path,
        };
        devices.retain(|o| o.path != plan.path);
        devices.push(plan);
    }

    let paths = |list: &Option<Vec<String>>, what: &str| -> Result<Vec<PathBuf>, String> {
        list.iter()
            .flatten()
            .map(|p| container_path(Path::new(p), what))
            .collect()
    };
    let mut sysctl = Vec::new();
    if let Some(map) = &linux.sysctl {
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        for key in keys {
            let valid = !key.is_empty()
                && key
                    .split(['.', '/'])
                    .all(|part| !part.is_empty() && part != ".." && part != ".")
                && !key.contains('\0');
            if !valid {
                return Err(format!("sysctl {key:?} is not a sysctl name"));
            }
            sysctl::check(key, scopes)?;
            let path = key.replace('.', "/");
            sysctl.push((PathBuf::from("/proc/sys").join(path), map[key].clone()));
        }
    }
    let seccomp = match &linux.seccomp {
        Some(profile) => Some(seccomp::translate(profile)?),
        None => None,
    };
    let resources = match &linux.resources {
        Some(r) => cgroups::render(r)?,
        None => Vec::new(),
    };
    let device_rules = devices::rules(
        linux.resources.as_ref().and_then(|r| r.devices.as_deref()),
        &devices,
    )?;
    Ok(ContainerPlan {
        namespaces,
        uid_map,
        gid_map,
        rootfs: rootfs.to_path_buf(),
        readonly_root: spec.root.as_ref().and_then(|r| r.readonly).unwrap_or(false),
        root_propagation: propagation(linux.rootfs_propagation.as_deref().unwrap_or(""))?,
        mounts,
        setup_dev: !dev_is_bind,
        devices,
        masked_paths: paths(&linux.masked_paths, "masked path")?,
        readonly_paths: paths(&linux.readonly_paths, "readonly path")?,
        hostname: spec.hostname.clone().filter(|h| !h.is_empty()),
        domainname: spec.domainname.clone().filter(|h| !h.is_empty()),
        sysctl,
        process,
        seccomp,
        guard: seccomp::guard_for(spec.annotations.as_ref())?,
        resources,
        device_program: devices::program(&device_rules)?,
    })
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
