//! The processes of a container, for `runc ps`: every process in its
//! cgroup and the cgroups below it, described from the guest's /proc.
//!
//! What a container puts in its cgroups and in /proc is its own: the walk
//! is bounded in depth and in the cgroups and processes it visits, each
//! description in size, and the whole by what its JSON can take, so the
//! answer always fits one frame.

use std::fs;
use std::path::Path;

use runvm_agent_api::GuestProcess;

/// At most this many processes are described (a pids limit is usually far
/// lower; beyond this the answer would not fit a frame).
pub const MAX_PROCESSES: usize = 2048;
/// Cgroup nesting below the container's own that is followed.
const MAX_DEPTH: usize = 8;
/// Bytes of a command line that are kept.
const MAX_CMDLINE: usize = 256;
/// Cgroup directories visited at most.
const MAX_CGROUPS: usize = 256;
/// What the described processes may take in the answer, counting every
/// byte of text as JSON's worst case (a control byte is `\u00XX`), well
/// within a frame.
const ANSWER_BUDGET: usize = 768 << 10;

/// The pids in the cgroup at `dir` and in every cgroup below it, in the
/// order found, at most [`MAX_PROCESSES`].
pub fn cgroup_pids(dir: &Path) -> std::io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    let mut visited = 0;
    collect(dir, 0, &mut visited, &mut pids)?;
    Ok(pids)
}

fn collect(
    dir: &Path,
    depth: usize,
    visited: &mut usize,
    pids: &mut Vec<i32>,
) -> std::io::Result<()> {
    *visited += 1;
    let procs = fs::read_to_string(dir.join("cgroup.procs"))?;
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if pids.len() >= MAX_PROCESSES {
            return Ok(());
        }
        pids.push(pid);
    }
    if depth >= MAX_DEPTH {
        return Ok(());
    }
    for entry in fs::read_dir(dir)?.flatten() {
        if pids.len() >= MAX_PROCESSES || *visited >= MAX_CGROUPS {
            break;
        }
        // Children that vanish meanwhile are skipped.
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = collect(&entry.path(), depth + 1, visited, pids);
        }
    }
    Ok(())
}

/// Describes each of `pids` that still exists.
pub fn describe_all(pids: &[i32]) -> Vec<GuestProcess> {
    let mut spent = 0;
    let mut described = Vec::new();
    for &pid in pids.iter().take(MAX_PROCESSES) {
        let Some(process) = describe(Path::new("/proc"), pid) else {
            continue;
        };
        let text: usize = process.argv.iter().map(String::len).sum::<usize>()
            + process.name.len()
            + process.state.len();
        spent += 6 * text + 128;
        if spent > ANSWER_BUDGET {
            break;
        }
        described.push(process);
    }
    described
}

/// One process from `<proc>/<pid>/status` and `cmdline`; `None` if it is
/// gone.
fn describe(proc: &Path, pid: i32) -> Option<GuestProcess> {
    let dir = proc.join(pid.to_string());
    let status = fs::read_to_string(dir.join("status")).ok()?;
    let mut process = parse_status(pid, &status);
    let mut cmdline = Vec::with_capacity(MAX_CMDLINE);
    if let Ok(file) = fs::File::open(dir.join("cmdline")) {
        // Only what is kept is read.
        if std::io::Read::read_to_end(
            &mut std::io::Read::take(file, MAX_CMDLINE as u64),
            &mut cmdline,
        )
        .is_ok()
        {
            process.argv = parse_cmdline(&cmdline);
        }
    }
    Some(process)
}

fn parse_status(pid: i32, status: &str) -> GuestProcess {
    let mut process = GuestProcess {
        pid,
        ppid: 0,
        uid: 0,
        state: String::new(),
        name: String::new(),
        argv: Vec::new(),
    };
    for line in status.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Name" => process.name = value.chars().take(64).collect(),
            "State" => process.state = value.chars().take(1).collect(),
            "PPid" => process.ppid = value.parse().unwrap_or(0),
            "Uid" => {
                process.uid = value
                    .split_whitespace()
                    .next()
                    .and_then(|uid| uid.parse().ok())
                    .unwrap_or(0)
            }
            _ => {}
        }
    }
    process
}

/// NUL-separated arguments, the whole cut to [`MAX_CMDLINE`] bytes.
fn parse_cmdline(cmdline: &[u8]) -> Vec<String> {
    let kept = &cmdline[..cmdline.len().min(MAX_CMDLINE)];
    kept.split(|&b| b == 0)
        .filter(|arg| !arg.is_empty())
        .map(|arg| String::from_utf8_lossy(arg).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read() {
        let status = "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t12\n\
                      Pid:\t12\nPPid:\t7\nUid:\t1000\t1000\t1000\t1000\n";
        let p = parse_status(12, status);
        assert_eq!(
            (p.pid, p.ppid, p.uid, p.state.as_str(), p.name.as_str()),
            (12, 7, 1000, "S", "sleep")
        );
    }

    #[test]
    fn garbage_status_gives_defaults() {
        let p = parse_status(3, "PPid:\tlots\nUid:\nno colon here\n");
        assert_eq!((p.ppid, p.uid, p.state.as_str()), (0, 0, ""));
    }

    #[test]
    fn cmdline_is_split_and_bounded() {
        assert_eq!(parse_cmdline(b"sleep\x001000\x00"), ["sleep", "1000"]);
        assert!(parse_cmdline(b"").is_empty());
        let long = vec![b'a'; 10_000];
        assert_eq!(parse_cmdline(&long)[0].len(), MAX_CMDLINE);
    }

    #[test]
    fn this_process_is_described() {
        let me = std::process::id() as i32;
        let p = describe(Path::new("/proc"), me).expect("we exist");
        assert_eq!(p.pid, me);
        assert!(p.ppid > 0);
        assert!(!p.argv.is_empty());
        assert!(describe(Path::new("/proc"), i32::MAX).is_none());
    }

    #[test]
    fn nested_cgroups_are_walked() {
        let dir = std::env::temp_dir().join(format!("runvm-procs-{}", std::process::id()));
        fs::create_dir_all(dir.join("child/grandchild")).expect("dirs");
        fs::write(dir.join("cgroup.procs"), "1\n2\n").expect("write");
        fs::write(dir.join("child/cgroup.procs"), "3\n").expect("write");
        fs::write(dir.join("child/grandchild/cgroup.procs"), "4\nnot a pid\n").expect("write");
        let mut pids = cgroup_pids(&dir).expect("walk");
        pids.sort();
        assert_eq!(pids, [1, 2, 3, 4]);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
