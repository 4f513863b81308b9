//! The process part of a container process's set-up, the last steps
//! before its program runs (for the init and for execs alike): the
//! agent's guard filter, scheduling attributes, limits, user,
//! capabilities, working directory, environment, the spec's seccomp
//! filter, exec.

use std::ffi::{CStr, CString};
use std::io;
use std::path::PathBuf;

use runvm_agent_api::passwd::{self, home_of};

use super::init::check;
use super::phases::phase;
use super::rootfs::c;
use super::seccomp::SeccompProgram;
use super::spec::ProcessPlan;

/// What a set-up that ends in exec returns: only its errors.
pub enum Never {}

fn errno(what: impl std::fmt::Display) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn mask64(list: &[caps::Capability]) -> u64 {
    list.iter().fold(0, |m, c| m | c.bitmask())
}

/// The guest kernel's `PR_CAPBSET_KEEP_ONLY` (runvm's patch 0016): the
/// bounding set becomes its intersection with a mask, in one call.
const PR_CAPBSET_KEEP_ONLY: libc::c_int = 0x52564d03;

/// Narrows the bounding set to `keep`: in one prctl where the guest
/// kernel has it (dropping capabilities one by one makes a new set of
/// credentials each: ~0.15 s of emulated kernel work for runc's default
/// set), else one by one. A capability the kernel does not know (EINVAL)
/// is gone already; any other failure is an error, as with runc.
fn narrow_bounding(keep: &[caps::Capability]) -> Result<(), String> {
    let mask = mask64(keep);
    let (low, high) = (mask & 0xffff_ffff, mask >> 32);
    // SAFETY: prctl(2) with plain integers.
    let ret = unsafe {
        libc::prctl(
            PR_CAPBSET_KEEP_ONLY,
            low as libc::c_ulong,
            high as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if ret == 0 {
        return Ok(());
    }
    if io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(errno("cannot narrow the bounding set"));
    }
    for cap in caps::all().into_iter().filter(|c| !keep.contains(c)) {
        // SAFETY: prctl(2) with plain integers.
        let dropped = unsafe {
            libc::prctl(
                libc::PR_CAPBSET_DROP,
                libc::c_ulong::from(cap.index()),
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if dropped < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            return Err(errno(format_args!(
                "cannot drop {cap} from the bounding set"
            )));
        }
    }
    Ok(())
}

/// Sets the effective, permitted and inheritable sets in one capset(2).
fn capset(plan: &super::spec::CapsPlan) -> Result<(), String> {
    let (e, p, i) = (
        mask64(&plan.effective),
        mask64(&plan.permitted),
        mask64(&plan.inheritable),
    );
    let header = CapHeader {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        CapData {
            effective: e as u32,
            permitted: p as u32,
            inheritable: i as u32,
        },
        CapData {
            effective: (e >> 32) as u32,
            permitted: (p >> 32) as u32,
            inheritable: (i >> 32) as u32,
        },
    ];
    // SAFETY: capset(2) reads the header and two data words.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    check(ret as libc::c_int, "cannot set the capabilities (capset)")
}

/// The process part: the agent's guard filter, scheduling attributes,
/// limits, user, capabilities, directory, environment, seccomp, then
/// exec. `before_exec` runs last before the late seccomp filter (the init
/// waits for start there).
pub fn finish(
    process: &ProcessPlan,
    seccomp: Option<&SeccompProgram>,
    guard: Option<&SeccompProgram>,
    before_exec: impl FnOnce() -> Result<(), String>,
) -> Result<Never, String> {
    if let Some(guard) = guard {
        deny_vsock(guard)?;
    }
    phase("f:guard");
    // While the process is still privileged (a real-time policy needs
    // CAP_SYS_NICE).
    process.attrs.apply()?;
    phase("f:attrs");
    for r in &process.rlimits {
        let limit = libc::rlimit {
            rlim_cur: r.soft,
            rlim_max: r.hard,
        };
        // SAFETY: setrlimit(2) reads our struct.
        check(
            unsafe { libc::setrlimit(r.resource as _, &limit) },
            format_args!("cannot set rlimit {}", r.resource),
        )?;
    }
    phase("f:rlimits");
    // Before any filter of the spec's: one that refuses prctl must not
    // leave the bounding set whole (needs CAP_SETPCAP only; installing a
    // filter without no_new_privs needs CAP_SYS_ADMIN, which stays
    // effective).
    if let Some(caps) = &process.caps {
        narrow_bounding(&caps.bounding)?;
        // Keep the permitted set across the change of uid.
        // SAFETY: prctl(2).
        check(
            unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) },
            "PR_SET_KEEPCAPS",
        )?;
    }
    phase("f:bounding");
    if process.no_new_privileges {
        // SAFETY: prctl(2).
        check(
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) },
            "cannot set no_new_privileges",
        )?;
    }
    if let (Some(filter), false) = (seccomp, process.no_new_privileges) {
        // Without no_new_privs, installing needs CAP_SYS_ADMIN: now, while
        // the process has it.
        filter
            .install()
            .map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
    }
    phase("f:nnp+seccomp");
    // Before the change of user, a directory only root may enter is still
    // reachable; after it, one that root may not enter (root squash) is.
    let cwd = c(&process.cwd)?;
    // SAFETY: chdir(2).
    let early_chdir = unsafe { libc::chdir(cwd.as_ptr()) } == 0;
    let groups: Vec<libc::gid_t> = process.additional_gids.clone();
    // SAFETY: setgroups/setresgid/setresuid act on this process only.
    unsafe {
        if libc::setgroups(groups.len(), groups.as_ptr()) < 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
        {
            return Err(errno("setgroups"));
        }
        check(
            libc::setresgid(process.gid, process.gid, process.gid),
            format_args!("cannot set gid {}", process.gid),
        )?;
        check(
            libc::setresuid(process.uid, process.uid, process.uid),
            format_args!("cannot set uid {}", process.uid),
        )?;
    }
    phase("f:chdir+ids");
    if let Some(caps) = &process.caps {
        // SAFETY: prctl(2).
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
        capset(caps)?;
        // An ambient capability must be inheritable and permitted too; runc
        // only warns about one that is not (`runc spec` of 1.1 listed
        // ambient capabilities without inheritable ones), so it is skipped
        // here as well. Other failures are errors.
        for cap in &caps.ambient {
            let permitted_and_inheritable =
                caps.permitted.contains(cap) && caps.inheritable.contains(cap);
            if !permitted_and_inheritable {
                continue;
            }
            caps::raise(None, caps::CapSet::Ambient, *cap)
                .map_err(|e| format!("cannot raise ambient {cap}: {e}"))?;
        }
    }
    // SAFETY: umask(2).
    unsafe { libc::umask(process.umask.unwrap_or(0o022) as libc::mode_t) };
    if !early_chdir {
        // SAFETY: chdir(2).
        check(
            unsafe { libc::chdir(cwd.as_ptr()) },
            format_args!(
                "cannot change to the working directory {}",
                process.cwd.display()
            ),
        )?;
    }
    phase("f:capset+umask");
    let env = finish_env(&process.env, process.uid);
    // The host's answer when it gave one and this user may run it (as the
    // search would check it), else the PATH search.
    let program = match process.program.as_ref().filter(|p| runnable(p)) {
        Some(found) => found.clone(),
        None => find_program(&process.args[0], &env)?,
    };
    let env: Vec<CString> = env
        .into_iter()
        .map(|e| CString::new(e).map_err(|_| "environment contains a NUL byte".to_string()))
        .collect::<Result<_, _>>()?;
    // Nothing of the agent's but stdio goes to the program.
    // SAFETY: close_range(2) only marks descriptors close-on-exec.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    phase("f:env+find+close");
    before_exec()?;
    if let (Some(filter), true) = (seccomp, process.no_new_privileges) {
        // As late as possible: the program's own calls are all that the
        // filter has to allow.
        filter
            .install()
            .map_err(|e| format!("cannot install the seccomp filter: {e}"))?;
    }
    phase("f:seccomp");
    let mut argv: Vec<*const libc::c_char> = process.args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    // SAFETY: execve(2) with NUL-terminated arrays of C strings that live
    // until it returns.
    unsafe { libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(errno(format_args!(
        "cannot run {:?}",
        process.args[0].to_string_lossy()
    )))
}

/// runvm's guest kernel: takes AF_VSOCK sockets away from this process
/// and everything it runs, for good (guest kernel patch 0015).
const PR_SET_VSOCK_DENIED: libc::c_int = 0x5256_4d01;
const DENIED: libc::c_ulong = 1;
const NONE: libc::c_ulong = 0;

/// Takes vsock away from the process: with the guest kernel's prctl,
/// which costs one call, or, on a kernel without it, with the agent's
/// `guard` filter. The filter goes first, while the process has
/// CAP_SYS_ADMIN for it whatever the spec's no_new_privileges; the set-up
/// left makes no vsock socket.
fn deny_vsock(guard: &SeccompProgram) -> Result<(), String> {
    // SAFETY: prctl(2) on this process.
    if unsafe { libc::prctl(PR_SET_VSOCK_DENIED, DENIED, NONE, NONE, NONE) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EINVAL) {
        return Err(format!("cannot take vsock away from the process: {e}"));
    }
    guard
        .install()
        .map_err(|e| format!("cannot install the agent's seccomp filter: {e}"))
}

/// The environment plus HOME from /etc/passwd when it lacks one.
fn finish_env(env: &[String], uid: u32) -> Vec<String> {
    let mut env = env.to_vec();
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        // The host fills HOME in when it can read the rootfs's passwd file
        // as the container will see it (see the runtime's `home_dir`).
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        env.push(format!(
            "HOME={}",
            home_of(&passwd, uid).unwrap_or(passwd::DEFAULT_HOME)
        ));
    }
    env
}

/// The top directory of an absolute path two or more levels deep
/// (`/usr` of `/usr/local/bin`).
fn top_of(dir: &str) -> Option<&str> {
    let rest = dir.strip_prefix('/')?;
    let (top, below) = rest.split_once('/')?;
    (!top.is_empty() && !below.trim_matches('/').is_empty()).then(|| &dir[..top.len() + 1])
}

/// What the PATH search accepts: a file this process may execute.
fn runnable(path: &CStr) -> bool {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: access(2) with a C string.
    let may = unsafe { libc::access(path.as_ptr(), libc::X_OK) } == 0;
    may && std::fs::metadata(std::ffi::OsStr::from_bytes(path.to_bytes()))
        .is_ok_and(|m| m.is_file())
}

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `program` as execve needs it: as given when it has a `/`, else the
/// first executable file of that name in the process's PATH.
fn find_program(program: &CStr, env: &[String]) -> Result<CString, String> {
    let name = program
        .to_str()
        .map_err(|_| "the program name is not UTF-8")?;
    if name.contains('/') {
        // Checked here, before the init reports ready, so that a missing
        // program fails `create` as with runc, not `start`.
        use std::os::unix::fs::PermissionsExt;
        return match std::fs::metadata(name) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(program.to_owned()),
            Ok(m) if m.is_dir() => Err(format!("exec: {name:?}: is a directory")),
            Ok(_) => Err(format!("exec: {name:?}: permission denied")),
            Err(e) => Err(format!("exec: {name:?}: stat {name}: {e}")),
        };
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    // A missing top directory (`/usr` of `/usr/local/bin`) rules out every
    // entry below it at once: on a virtio-fs root, each lookup of a name
    // that is not there is a round trip to the host (misses are not
    // cached).
    let mut tops: Vec<(&str, bool)> = Vec::new();
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        if let Some(top) = top_of(dir) {
            let present = match tops.iter().find(|(t, _)| *t == top) {
                Some((_, present)) => *present,
                None => {
                    let present = std::fs::symlink_metadata(top).is_ok();
                    tops.push((top, present));
                    present
                }
            };
            if !present {
                continue;
            }
        }
        let candidate = PathBuf::from(dir).join(name);
        let Ok(c) = c(&candidate) else { continue };
        if runnable(&c) {
            return Ok(c);
        }
    }
    Err(format!(
        "executable file {name:?} not found in $PATH ({path})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_home_is_kept() {
        let env = finish_env(&["HOME=/x".into()], 0);
        assert_eq!(env, vec!["HOME=/x".to_string()]);
    }

    #[test]
    fn top_directories_are_found() {
        assert_eq!(top_of("/usr/local/bin"), Some("/usr"));
        assert_eq!(top_of("/usr/bin/"), Some("/usr"));
        assert_eq!(top_of("/bin"), None);
        assert_eq!(top_of("/bin/"), None);
        assert_eq!(top_of("bin/x"), None);
        assert_eq!(top_of("//x"), None);
    }

    #[test]
    fn programs_are_found_in_the_process_path() {
        let env = vec!["PATH=/nonexistent:/bin:/usr/bin".to_string()];
        let sh = find_program(c"sh", &env).unwrap();
        assert!(sh.to_str().unwrap().ends_with("/sh"));
        assert_eq!(
            find_program(c"/bin/sh", &env).unwrap().to_str().unwrap(),
            "/bin/sh"
        );
        let missing = find_program(c"/no/such/binary", &env).unwrap_err();
        assert!(missing.contains("stat /no/such/binary"), "{missing}");
        assert!(find_program(c"/", &env).unwrap_err().contains("directory"));
        assert!(find_program(c"/etc/passwd", &env)
            .unwrap_err()
            .contains("permission"));
        let err = find_program(c"no-such-program-here", &env).unwrap_err();
        assert!(err.contains("not found"));
        // Entries below a missing top directory are skipped, the rest
        // still searched.
        let env = vec!["PATH=/no-such-top/bin:/no-such-top/sbin:/usr/bin:/bin".to_string()];
        assert!(find_program(c"sh", &env).is_ok());
    }
}
