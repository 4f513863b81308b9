//! What a container process gets from the kernel's scheduler before it
//! execs, as runc gives it: `process.scheduler` (sched_setattr),
//! `process.ioPriority` (ioprio_set), `process.execCPUAffinity`
//! (sched_setaffinity; CPU numbers are the guest's vCPUs) and the
//! container's `linux.personality` (personality). Names are checked when
//! the plan is made; the kernel judges the values (a real-time policy
//! needs CAP_SYS_NICE, a CPU the guest lacks is refused).

use runvm_agent_api::oci::{ExecCpuAffinity, IoPriority, LinuxPersonality, Process, Scheduler};

/// `struct sched_attr` of sched_setattr(2), first version (48 bytes).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedAttr {
    pub size: u32,
    pub policy: u32,
    pub flags: u64,
    pub nice: i32,
    pub priority: u32,
    pub runtime: u64,
    pub deadline: u64,
    pub period: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessAttrs {
    pub scheduler: Option<SchedAttr>,
    /// The value for ioprio_set(2): class << 13 | priority.
    pub io_priority: Option<libc::c_int>,
    /// CPUs to run on.
    pub cpus: Option<Vec<usize>>,
    pub personality: Option<libc::c_ulong>,
}

fn sched_policy(name: &str) -> Option<u32> {
    Some(match name {
        "SCHED_OTHER" => 0,
        "SCHED_FIFO" => 1,
        "SCHED_RR" => 2,
        "SCHED_BATCH" => 3,
        "SCHED_ISO" => 4,
        "SCHED_IDLE" => 5,
        "SCHED_DEADLINE" => 6,
        _ => return None,
    })
}

fn sched_flag(name: &str) -> Option<u64> {
    Some(match name {
        "SCHED_FLAG_RESET_ON_FORK" => 0x01,
        "SCHED_FLAG_RECLAIM" => 0x02,
        "SCHED_FLAG_DL_OVERRUN" => 0x04,
        "SCHED_FLAG_KEEP_POLICY" => 0x08,
        "SCHED_FLAG_KEEP_PARAMS" => 0x10,
        "SCHED_FLAG_UTIL_CLAMP_MIN" => 0x20,
        "SCHED_FLAG_UTIL_CLAMP_MAX" => 0x40,
        _ => return None,
    })
}

fn scheduler(s: &Scheduler) -> Result<SchedAttr, String> {
    let policy = sched_policy(&s.policy)
        .ok_or_else(|| format!("scheduler policy {:?} is unknown", s.policy))?;
    let mut flags = 0;
    for name in s.flags.iter().flatten() {
        flags |= sched_flag(name).ok_or_else(|| format!("scheduler flag {name:?} is unknown"))?;
    }
    let nice = s.nice.unwrap_or(0);
    if !(-20..=19).contains(&nice) {
        return Err(format!("scheduler nice {nice} is out of range (-20 to 19)"));
    }
    let priority = u32::try_from(s.priority.unwrap_or(0))
        .map_err(|_| "scheduler priority is negative".to_string())?;
    Ok(SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy,
        flags,
        nice,
        priority,
        runtime: s.runtime.unwrap_or(0),
        deadline: s.deadline.unwrap_or(0),
        period: s.period.unwrap_or(0),
    })
}

fn io_priority(p: &IoPriority) -> Result<libc::c_int, String> {
    let class = match p.class.as_str() {
        "IOPRIO_CLASS_RT" => 1,
        "IOPRIO_CLASS_BE" => 2,
        "IOPRIO_CLASS_IDLE" => 3,
        other => return Err(format!("I/O priority class {other:?} is unknown")),
    };
    if !(0..=7).contains(&p.priority) {
        return Err(format!(
            "I/O priority {} is out of range (0 to 7)",
            p.priority
        ));
    }
    Ok((class << 13) | p.priority as libc::c_int)
}

/// A CPU list: `0-3,7`.
pub fn cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let bad = || format!("CPU list {text:?} is not like 0-3,7");
    let mut cpus = Vec::new();
    for part in text.split(',') {
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let first: usize = first.trim().parse().map_err(|_| bad())?;
        let last: usize = last.trim().parse().map_err(|_| bad())?;
        if first > last || last >= libc::CPU_SETSIZE as usize {
            return Err(bad());
        }
        cpus.extend(first..=last);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

fn affinity(a: &ExecCpuAffinity) -> Result<Option<Vec<usize>>, String> {
    // The guest has no parent process in between: the final list applies,
    // else the initial one.
    match a.final_.as_deref().or(a.initial.as_deref()) {
        Some(list) if !list.is_empty() => cpu_list(list).map(Some),
        _ => Ok(None),
    }
}

/// The container's execution domain.
pub fn personality(p: &LinuxPersonality) -> Result<libc::c_ulong, String> {
    // Flags are ignored, as runc ignores them (with a warning).
    match p.domain.as_str() {
        "LINUX" => Ok(0),
        "LINUX32" => Ok(0x0008),
        other => Err(format!("personality domain {other:?} is unknown")),
    }
}

/// The process's own attributes (the personality is the container's).
pub fn plan(process: &Process) -> Result<ProcessAttrs, String> {
    Ok(ProcessAttrs {
        scheduler: process.scheduler.as_ref().map(scheduler).transpose()?,
        io_priority: process.io_priority.as_ref().map(io_priority).transpose()?,
        cpus: match &process.exec_cpu_affinity {
            Some(a) => affinity(a)?,
            None => None,
        },
        personality: None,
    })
}

fn check(ret: libc::c_long, what: &str) -> Result<(), String> {
    if ret < 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

impl ProcessAttrs {
    /// Applies them to the calling process (before it drops privileges).
    pub fn apply(&self) -> Result<(), String> {
        if let Some(domain) = self.personality {
            // SAFETY: personality(2).
            check(
                unsafe { libc::personality(domain) } as libc::c_long,
                "cannot set the personality",
            )?;
        }
        if let Some(cpus) = &self.cpus {
            // SAFETY: a zeroed cpu_set_t is empty; CPU_SET stays within it
            // (cpu_list keeps numbers below CPU_SETSIZE).
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            for cpu in cpus {
                unsafe { libc::CPU_SET(*cpu, &mut set) };
            }
            // SAFETY: sched_setaffinity(2) reads the set.
            check(
                unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) }
                    as libc::c_long,
                "cannot set the CPU affinity",
            )?;
        }
        if let Some(attr) = &self.scheduler {
            // SAFETY: sched_setattr(2) reads `size` bytes of attr.
            check(
                unsafe { libc::syscall(libc::SYS_sched_setattr, 0, attr as *const SchedAttr, 0) },
                "cannot set the scheduler",
            )?;
        }
        if let Some(prio) = self.io_priority {
            // SAFETY: ioprio_set(2) on this process (IOPRIO_WHO_PROCESS, 0).
            check(
                unsafe { libc::syscall(libc::SYS_ioprio_set, 1, 0, prio) },
                "cannot set the I/O priority",
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(extra: serde_json::Value) -> Process {
        let mut json = serde_json::json!({"user": {"uid": 0, "gid": 0}, "cwd": "/"});
        for (k, v) in extra.as_object().unwrap() {
            json[k] = v.clone();
        }
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn names_map_to_the_kernels_numbers() {
        let attrs = plan(&process(serde_json::json!({
            "scheduler": {"policy": "SCHED_DEADLINE", "flags": ["SCHED_FLAG_RESET_ON_FORK",
                          "SCHED_FLAG_DL_OVERRUN"], "runtime": 10, "deadline": 20,
                          "period": 30},
            "ioPriority": {"class": "IOPRIO_CLASS_IDLE", "priority": 7},
            "execCPUAffinity": {"initial": "0-3", "final": "1,3-4,3"}
        })))
        .unwrap();
        let s = attrs.scheduler.unwrap();
        assert_eq!((s.size, s.policy, s.flags), (48, 6, 0x05));
        assert_eq!((s.runtime, s.deadline, s.period), (10, 20, 30));
        assert_eq!(attrs.io_priority, Some((3 << 13) | 7));
        assert_eq!(attrs.cpus, Some(vec![1, 3, 4]));
        assert_eq!(
            personality(&serde_json::from_str(r#"{"domain":"LINUX32"}"#).unwrap()),
            Ok(8)
        );
        assert_eq!(
            plan(&process(serde_json::json!({}))).unwrap(),
            ProcessAttrs::default()
        );
    }

    #[test]
    fn unknown_names_and_bad_values_are_refused() {
        for (extra, expected) in [
            (
                serde_json::json!({"scheduler": {"policy": "SCHED_FAST"}}),
                "SCHED_FAST",
            ),
            (
                serde_json::json!({"scheduler": {"policy": "SCHED_OTHER", "flags": ["X"]}}),
                "flag",
            ),
            (
                serde_json::json!({"scheduler": {"policy": "SCHED_OTHER", "nice": 20}}),
                "nice",
            ),
            (
                serde_json::json!({"ioPriority": {"class": "IOPRIO_CLASS_X", "priority": 0}}),
                "IOPRIO_CLASS_X",
            ),
            (
                serde_json::json!({"ioPriority": {"class": "IOPRIO_CLASS_BE", "priority": 8}}),
                "out of range",
            ),
            (
                serde_json::json!({"execCPUAffinity": {"final": "3-1"}}),
                "CPU list",
            ),
            (
                serde_json::json!({"execCPUAffinity": {"final": "a"}}),
                "CPU list",
            ),
        ] {
            let err = plan(&process(extra)).unwrap_err();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
        let err = personality(&serde_json::from_str(r#"{"domain":"SVR4"}"#).unwrap()).unwrap_err();
        assert!(err.contains("SVR4"), "{err}");
    }

    /// Applied for real to a child process (the test's own must keep its
    /// scheduling): batch policy, nice 5, idle I/O class, CPU 0.
    #[test]
    fn they_take_effect() {
        let attrs = plan(&process(serde_json::json!({
            "scheduler": {"policy": "SCHED_BATCH", "nice": 5},
            "ioPriority": {"class": "IOPRIO_CLASS_IDLE", "priority": 0},
            "execCPUAffinity": {"final": "0"}
        })))
        .unwrap();
        // The server tests reap with waitpid(-1): not while our child runs.
        let _serial = crate::server::tests::one_at_a_time();
        // SAFETY: fork(2); the child only makes syscalls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = attrs.apply().is_ok()
                && unsafe { libc::sched_getscheduler(0) } == 3
                && unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) } == 5
                && unsafe { libc::syscall(libc::SYS_ioprio_get, 1, 0) } == 3 << 13;
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(status, 0, "the child could not apply them");
    }
}
