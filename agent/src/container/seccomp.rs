//! The OCI `linux.seccomp` section as seccomp BPF, built with seccompiler.
//!
//! An OCI profile gives each syscall rule its own action, over a default
//! action. A seccompiler filter has one action for a match and one for the
//! rest, so the profile becomes a small stack of filters, which the kernel
//! runs all of, taking the most restrictive answer (KILL_PROCESS >
//! KILL_THREAD > TRAP > ERRNO > TRACE > LOG > ALLOW):
//!
//! - per action A other than ALLOW used by a rule: the rules with action A
//!   match to A, everything else is ALLOW;
//! - unless the default is ALLOW: every rule (whatever its action) matches
//!   to ALLOW, everything else gets the default action.
//!
//! A call that a rule matches thus gets that rule's action (the default
//! filter lets it through), one that no rule matches gets the default.
//! Where two rules with different actions match the same call, the more
//! restrictive wins.
//!
//! As in runc: rules naming syscalls this architecture does not have are
//! skipped, rules with the default action are redundant and skipped, and
//! conditions on the same call are ANDed within a rule, rules ORed. What
//! cannot be honoured (notify, a listener, other architectures only)
//! is refused with a message naming it.
//!
//! Below whatever the spec asks, the agent takes vsock away from every
//! container process: with runvm's guest kernel by a prctl (see
//! `finish::deny_vsock`), elsewhere with a filter of its own
//! ([`vsock_guard`]).

use std::collections::BTreeMap;
use std::io;

use runvm_agent_api::oci::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[cfg(target_arch = "x86_64")]
#[path = "syscalls_x86_64.rs"]
mod table;

#[cfg(target_arch = "x86_64")]
const TARGET: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "x86_64")]
const NATIVE_ARCH: &str = "SCMP_ARCH_X86_64";

/// The syscall number of `name` on this architecture.
pub fn syscall_number(name: &str) -> Option<i64> {
    table::SYSCALLS
        .binary_search_by(|(n, _)| (*n).cmp(name))
        .ok()
        .map(|i| table::SYSCALLS[i].1)
}

/// Filters ready to install, in order, and the flags to install them with.
#[derive(Debug, Clone, Default)]
pub struct SeccompProgram {
    pub filters: Vec<BpfProgram>,
    pub flags: libc::c_ulong,
    /// Syscall names the profile gave that this architecture lacks.
    pub skipped: Vec<String>,
}

const EPERM: u32 = libc::EPERM as u32;

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, String> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(EPERM)),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(EPERM)),
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActNotify => {
            return Err("seccomp action SCMP_ACT_NOTIFY is not supported by runvm".into())
        }
    })
}

fn operator(op: LinuxSeccompOperator, value: u64, value_two: Option<u64>) -> (SeccompCmpOp, u64) {
    match op {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, value),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, value),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, value),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, value),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, value),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, value),
        // OCI: `value` is the mask, `valueTwo` what the masked bits must be.
        LinuxSeccompOperator::ScmpCmpMaskedEq => {
            (SeccompCmpOp::MaskedEq(value), value_two.unwrap_or(0))
        }
    }
}

/// The rules for one syscall: any unconditional rule makes all of them
/// unconditional (an empty list to seccompiler).
#[derive(Default, Clone)]
struct Chain {
    unconditional: bool,
    rules: Vec<SeccompRule>,
}

impl Chain {
    fn add(&mut self, rule: Option<SeccompRule>) {
        match rule {
            None => {
                self.unconditional = true;
                self.rules.clear();
            }
            Some(rule) if !self.unconditional => self.rules.push(rule),
            Some(_) => {}
        }
    }

    fn into_rules(self) -> Vec<SeccompRule> {
        if self.unconditional {
            Vec::new()
        } else {
            self.rules
        }
    }
}

type Chains = BTreeMap<i64, Chain>;

fn add_rule(chains: &mut Chains, nr: i64, rule: Option<SeccompRule>) {
    chains.entry(nr).or_default().add(rule);
}

fn compile(
    chains: Chains,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, String> {
    let rules = chains
        .into_iter()
        .map(|(nr, chain)| (nr, chain.into_rules()))
        .collect();
    let filter = SeccompFilter::new(rules, mismatch, matched, TARGET)
        .map_err(|e| format!("seccomp filter: {e}"))?;
    BpfProgram::try_from(filter).map_err(|e| format!("seccomp filter: {e}"))
}

/// Translates an OCI seccomp section.
pub fn translate(profile: &LinuxSeccomp) -> Result<SeccompProgram, String> {
    if let Some(arches) = &profile.architectures {
        let native = arches
            .iter()
            .any(|a| a == "SCMP_ARCH_NATIVE" || a == NATIVE_ARCH);
        if !arches.is_empty() && !native {
            return Err(format!(
                "the seccomp profile is for {}; this guest runs {NATIVE_ARCH} only",
                arches.join(", ")
            ));
        }
    }
    if profile.listener_path.is_some() {
        return Err("a seccomp listener (listenerPath) is not supported by runvm".into());
    }
    let mut flags: libc::c_ulong = 0;
    for flag in profile.flags.iter().flatten() {
        flags |= match flag {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => libc::SECCOMP_FILTER_FLAG_LOG,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => {
                libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW
            }
            // The container's processes are single-threaded when the
            // filter goes on: there are no other threads to sync.
            LinuxSeccompFilterFlag::SeccompFilterFlagTsync => 0,
            LinuxSeccompFilterFlag::SeccompFilterFlagWaitKillableRecv => {
                return Err(
                    "seccomp flag SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV needs notify, which runvm does not support"
                        .into(),
                )
            }
        };
    }
    let default = action(profile.default_action, profile.default_errno_ret)?;
    let mut program = SeccompProgram {
        flags,
        ..SeccompProgram::default()
    };
    // Rules by action (in order of first use), and every rule for the
    // default filter.
    let mut by_action: Vec<(SeccompAction, Chains)> = Vec::new();
    let mut all = Chains::new();
    for syscall in profile.syscalls.iter().flatten() {
        let act = action(syscall.action, syscall.errno_ret)?;
        if act == default {
            continue;
        }
        let mut conditions = Vec::new();
        for arg in syscall.args.iter().flatten() {
            let index = u8::try_from(arg.index)
                .ok()
                .filter(|i| *i < 6)
                .ok_or_else(|| format!("seccomp argument index {} is not 0 to 5", arg.index))?;
            let (op, value) = operator(arg.op, arg.value, arg.value_two);
            conditions.push(
                SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
                    .map_err(|e| format!("seccomp condition: {e}"))?,
            );
        }
        let rule = if conditions.is_empty() {
            None
        } else {
            Some(SeccompRule::new(conditions).map_err(|e| format!("seccomp rule: {e}"))?)
        };
        for name in &syscall.names {
            let Some(nr) = syscall_number(name) else {
                if !program.skipped.contains(name) {
                    program.skipped.push(name.clone());
                }
                continue;
            };
            add_rule(&mut all, nr, rule.clone());
            if act == SeccompAction::Allow {
                continue;
            }
            let index = match by_action.iter().position(|(a, _)| *a == act) {
                Some(i) => i,
                None => {
                    by_action.push((act.clone(), Chains::new()));
                    by_action.len() - 1
                }
            };
            add_rule(&mut by_action[index].1, nr, rule.clone());
        }
    }
    for (act, chains) in by_action {
        program
            .filters
            .push(compile(chains, SeccompAction::Allow, act)?);
    }
    if default != SeccompAction::Allow {
        program
            .filters
            .push(compile(all, default, SeccompAction::Allow)?);
    }
    Ok(program)
}

/// The annotation by which a spec gives its processes vsock sockets.
pub const VSOCK_ANNOTATION: &str = "io.runvm.vsock";

/// The agent's own filter, for every container process unless the spec
/// opts in with [`VSOCK_ANNOTATION`], where the kernel has no
/// PR_SET_VSOCK_DENIED (see `finish::deny_vsock`): `socket` and `socketpair` of the
/// AF_VSOCK family fail with EAFNOSUPPORT, as on a kernel without vsock.
/// The guest's vsock is the agent's channel to the host: the agent
/// refuses peers other than the host, and without a socket a container
/// cannot even talk to the transport. The family is an `int`: only its
/// low 32 bits count, as in the kernel.
pub fn vsock_guard() -> Result<SeccompProgram, String> {
    let af_vsock = libc::AF_VSOCK as u64;
    let condition = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, af_vsock)
        .map_err(|e| format!("seccomp condition: {e}"))?;
    let rule = SeccompRule::new(vec![condition]).map_err(|e| format!("seccomp rule: {e}"))?;
    let mut chains = Chains::new();
    for nr in [libc::SYS_socket, libc::SYS_socketpair] {
        add_rule(&mut chains, nr, Some(rule.clone()));
    }
    let filter = compile(
        chains,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EAFNOSUPPORT as u32),
    )?;
    Ok(SeccompProgram {
        filters: vec![filter],
        ..SeccompProgram::default()
    })
}

/// The guard a container gets: [`vsock_guard`] unless its annotations
/// say `io.runvm.vsock: allow`.
pub fn guard_for(
    annotations: Option<&std::collections::HashMap<String, String>>,
) -> Result<Option<SeccompProgram>, String> {
    match annotations
        .and_then(|a| a.get(VSOCK_ANNOTATION))
        .map(String::as_str)
    {
        Some("allow") => Ok(None),
        None | Some("deny") => vsock_guard().map(Some),
        Some(other) => Err(format!(
            "annotation {VSOCK_ANNOTATION}={other:?}: the values are \"allow\" and \"deny\""
        )),
    }
}

impl SeccompProgram {
    /// Installs every filter on the calling thread. Needs no_new_privs or
    /// CAP_SYS_ADMIN.
    pub fn install(&self) -> io::Result<()> {
        for filter in &self.filters {
            let prog = libc::sock_fprog {
                len: filter.len() as libc::c_ushort,
                // seccompiler's sock_filter has the kernel's layout.
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            // SAFETY: seccomp(2) reads the program, which outlives the call.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    self.flags,
                    &prog as *const libc::sock_fprog,
                )
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn the_table_is_sorted_and_agrees_with_libc() {
        assert!(table::SYSCALLS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(syscall_number("read"), Some(libc::SYS_read));
        assert_eq!(syscall_number("openat2"), Some(libc::SYS_openat2));
        assert_eq!(syscall_number("clone3"), Some(libc::SYS_clone3));
        assert_eq!(syscall_number("_sysctl"), Some(156));
        assert_eq!(syscall_number("fchmodat2"), Some(452));
        assert_eq!(syscall_number("no_such_call"), None);
    }

    #[test]
    fn an_allow_default_with_errno_rules_is_one_filter() {
        let p = translate(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],
                "syscalls":[{"names":["mkdir","mkdirat","not_a_syscall"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                            {"names":["getpid"],"action":"SCMP_ACT_ALLOW"}]}"#,
        ))
        .unwrap();
        assert_eq!(p.filters.len(), 1);
        assert_eq!(p.skipped, vec!["not_a_syscall".to_string()]);
        assert_eq!(p.flags, 0);
    }

    #[test]
    fn a_deny_default_adds_the_default_filter() {
        let p = translate(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":1,
                "flags":["SECCOMP_FILTER_FLAG_LOG"],
                "syscalls":[{"names":["read","write"],"action":"SCMP_ACT_ALLOW"},
                            {"names":["clone3"],"action":"SCMP_ACT_ERRNO","errnoRet":38},
                            {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                             "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]},
                            {"names":["kill"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        ))
        .unwrap();
        // ERRNO(38) for clone3, then the default filter; the ERRNO(1) rule
        // equals the default and is dropped.
        assert_eq!(p.filters.len(), 2);
        assert_eq!(p.flags, libc::SECCOMP_FILTER_FLAG_LOG);
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let err = |json: &str| translate(&profile(json)).unwrap_err();
        assert!(err(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#).contains("NOTIFY"));
        assert!(err(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_NOTIFY"}]}"#
        )
        .contains("NOTIFY"));
        assert!(
            err(r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_AARCH64"]}"#)
                .contains("X86_64")
                || cfg!(not(target_arch = "x86_64"))
        );
        assert!(
            err(r#"{"defaultAction":"SCMP_ACT_ALLOW","listenerPath":"/run/l.sock"}"#)
                .contains("listener")
        );
        assert!(err(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO",
                "args":[{"index":6,"value":1,"op":"SCMP_CMP_EQ"}]}]}"#
        )
        .contains("index 6"));
    }

    /// Forks, installs `program` with no_new_privs in the child, runs
    /// `check` there; the child's exit code is `check`'s answer.
    fn in_child(program: &SeccompProgram, check: fn() -> i32) -> i32 {
        // The server tests reap with waitpid(-1): not while our child runs.
        let _serial = crate::server::tests::one_at_a_time();
        // SAFETY: the child makes only raw syscalls and exits with _exit.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0);
            if pid == 0 {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(100);
                }
                if program.install().is_err() {
                    libc::_exit(101);
                }
                libc::_exit(check());
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            assert!(libc::WIFEXITED(status), "child status {status:#x}");
            libc::WEXITSTATUS(status)
        }
    }

    fn errno() -> i32 {
        io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn the_filters_do_what_the_profile_says() {
        let p = translate(&profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW",
                "syscalls":[{"names":["chdir"],"action":"SCMP_ACT_ERRNO","errnoRet":42},
                            {"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":7,
                             "args":[{"index":0,"value":57005,"op":"SCMP_CMP_EQ"}]}]}"#,
        ))
        .unwrap();
        let code = in_child(&p, || unsafe {
            if libc::syscall(libc::SYS_chdir, c"/".as_ptr()) != -1 || errno() != 42 {
                return 1;
            }
            if libc::syscall(libc::SYS_personality, 0xdead) != -1 || errno() != 7 {
                return 2;
            }
            // Another argument: allowed (0xffffffff only queries).
            if libc::syscall(libc::SYS_personality, 0xffff_ffffu64) < 0 {
                return 3;
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn the_vsock_guard_takes_vsock_sockets_only() {
        let guard = vsock_guard().unwrap();
        let code = in_child(&guard, || unsafe {
            let mut pair = [-1; 2];
            if libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0) != -1
                || errno() != libc::EAFNOSUPPORT
            {
                return 1;
            }
            // The high half of the register does not hide the family.
            let hidden = (1u64 << 32) | libc::AF_VSOCK as u64;
            if libc::syscall(libc::SYS_socket, hidden, libc::SOCK_STREAM, 0) != -1
                || errno() != libc::EAFNOSUPPORT
            {
                return 2;
            }
            if libc::socketpair(libc::AF_VSOCK, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) != -1
                || errno() != libc::EAFNOSUPPORT
            {
                return 3;
            }
            // Other families work as before.
            let unix = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            if unix < 0 {
                return 4;
            }
            libc::close(unix);
            if libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, pair.as_mut_ptr()) != 0 {
                return 5;
            }
            0
        });
        assert_eq!(code, 0);
    }

    #[test]
    fn a_deny_default_denies_what_no_rule_allows() {
        let p = translate(&profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":13,
                "syscalls":[{"names":["exit","exit_group"],"action":"SCMP_ACT_ALLOW"},
                            {"names":["getppid"],"action":"SCMP_ACT_ALLOW"},
                            {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                             "args":[{"index":0,"value":4294967295,"op":"SCMP_CMP_EQ"}]},
                            {"names":["umask"],"action":"SCMP_ACT_ERRNO","errnoRet":5}]}"#,
        ))
        .unwrap();
        let code = in_child(&p, || unsafe {
            if libc::syscall(libc::SYS_getpid) != -1 || errno() != 13 {
                return 1;
            }
            if libc::syscall(libc::SYS_getppid) < 0 {
                return 2;
            }
            if libc::syscall(libc::SYS_personality, 0xffff_ffffu64) < 0 {
                return 3;
            }
            if libc::syscall(libc::SYS_personality, 0) != -1 || errno() != 13 {
                return 4;
            }
            if libc::syscall(libc::SYS_umask, 0o22) != -1 || errno() != 5 {
                return 5;
            }
            0
        });
        assert_eq!(code, 0);
    }
}
