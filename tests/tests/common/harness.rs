//! The harness of the runc command-line tests (`runc_cli.rs`, `podman.rs`,
//! `containerd.rs`): the runtime under test, a scratch directory that
//! cleans up after itself, commands with time limits, the busybox image,
//! and the checks that nothing was left behind.
//!
//! The runtime under test is `$RUNVM_TEST_RUNTIME` when set (e.g.
//! `/usr/sbin/runc`, to check the tests themselves), otherwise the runvm
//! build installed into a fresh prefix the way `make install` lays it out.
//!
//! Every runvm container boots a microVM, and a guest fork+exec takes up to
//! a second: limits here are minutes, and no assertion is about time.

#![allow(dead_code)] // each test binary uses a different subset

use std::ffi::OsStr;
use std::fmt;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The most one runtime, podman or ctr command may take (a VM boot on a
/// busy host included).
pub const COMMAND_PATIENCE: Duration = Duration::from_secs(300);
/// The most a state change we wait for (output appearing, a task
/// stopping, processes going away) may take.
pub const WAIT_PATIENCE: Duration = Duration::from_secs(180);

/// Debian's static busybox: the test image's, and a server on the host.
pub const BUSYBOX: &str = "/bin/busybox";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// The tests start containers, mount and make cgroups: they need root.
pub fn require_root() {
    // SAFETY: geteuid(2) cannot fail.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "these tests run containers (mounts, cgroups, namespaces): run them as root"
    );
}

fn on_path(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program)).filter(|p| p.exists());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Fails, saying to run `scripts/setup.sh`, when a program is missing.
/// `needed` is a list of (program, Debian package).
pub fn require_programs(needed: &[(&str, &str)]) {
    let missing: Vec<String> = needed
        .iter()
        .filter(|(program, _)| on_path(program).is_none())
        .map(|(program, package)| format!("{program} (package {package})"))
        .collect();
    assert!(
        missing.is_empty(),
        "missing: {}: run scripts/setup.sh (as root) to install what these tests need",
        missing.join(", ")
    );
}

/// The runtime the tests drive.
pub struct RuntimeUnderTest {
    pub path: PathBuf,
    /// True for runvm (which needs /dev/kvm), false for e.g. runc.
    pub is_runvm: bool,
}

impl RuntimeUnderTest {
    /// `$RUNVM_TEST_RUNTIME`, or runvm installed into `scratch/prefix`.
    pub fn resolve(scratch: &Scratch) -> RuntimeUnderTest {
        let runtime = match std::env::var_os("RUNVM_TEST_RUNTIME") {
            Some(path) => {
                let path = PathBuf::from(path);
                assert!(
                    path.is_file(),
                    "RUNVM_TEST_RUNTIME={} is not a file",
                    path.display()
                );
                let is_runvm = path
                    .file_name()
                    .and_then(OsStr::to_str)
                    .is_some_and(|name| name.starts_with("runvm"));
                RuntimeUnderTest { path, is_runvm }
            }
            None => RuntimeUnderTest {
                path: install_runvm(&scratch.path().join("prefix")),
                is_runvm: true,
            },
        };
        if runtime.is_runvm {
            crate::common::require_kvm();
        }
        eprintln!("runtime under test: {}", runtime.path.display());
        runtime
    }
}

/// Copies the build into `prefix` as `make install` lays it out, so that
/// runvm finds its parts next to its own executable; returns
/// `prefix/bin/runvm`.
pub fn install_runvm(prefix: &Path) -> PathBuf {
    let root = workspace_root();
    let parts = [
        ("target/release/runvm", "bin/runvm"),
        ("target/release/runvm-vmm", "bin/runvm-vmm"),
        ("build/vmlinux", "share/runvm/vmlinux"),
        ("build/runvm-agent", "share/runvm/runvm-agent"),
    ];
    let missing: Vec<String> = parts
        .iter()
        .map(|(from, _)| root.join(from))
        .filter(|from| !from.is_file())
        .map(|from| from.display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "the runvm build is incomplete ({} missing): run `make build` first \
         (or set RUNVM_TEST_RUNTIME to test another runtime, e.g. /usr/sbin/runc)",
        missing.join(", ")
    );
    for (from, to) in parts {
        let to = prefix.join(to);
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("prefix dirs");
        std::fs::copy(root.join(from), &to)
            .unwrap_or_else(|e| panic!("cannot install {from} to {}: {e}", to.display()));
    }
    prefix.join("bin/runvm")
}

/// A directory under the system temp dir, named for the test and this
/// process. Dropping it (also when a test fails) kills the processes that
/// still refer to it, detaches the mounts below it and removes it.
pub struct Scratch {
    path: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!("runvm-e2e-{name}-{}", std::process::id()));
        if path.exists() {
            clean_up(&path, &[]);
        }
        std::fs::create_dir_all(&path).expect("scratch dir");
        Scratch { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, part: impl AsRef<Path>) -> PathBuf {
        self.path.join(part)
    }

    /// The path as a string (for configs, command lines and searches).
    pub fn display(&self) -> String {
        self.path.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        clean_up(&self.path, &[]);
    }
}

/// Best-effort cleanup after a test, passed or failed: SIGKILL to every
/// process that refers to `path` or one of `also` (they are this test's),
/// lazy unmounts below `path`, then removal.
pub fn clean_up(path: &Path, also: &[String]) {
    let mut needles = vec![path.display().to_string()];
    needles.extend(also.iter().cloned());
    for (pid, _) in processes_referencing(&needles) {
        // SAFETY: kill(2) on a process this test started (it refers to the
        // test's own scratch directory).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_referencing(&needles).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    for mount in mounts_below(path).iter().rev() {
        if let Ok(target) = std::ffi::CString::new(mount.as_str()) {
            // SAFETY: a valid C string; a failure leaves the mount, which
            // the removal below then reports.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
    if let Err(e) = std::fs::remove_dir_all(path) {
        if path.exists() {
            eprintln!("warning: cannot remove {}: {e}", path.display());
        }
    }
}

/// Stops a daemon the test started: SIGTERM, then SIGKILL if it is still
/// there after a minute.
pub fn terminate(mut daemon: Child) {
    // SAFETY: kill(2) on a child this test started and has not reaped.
    unsafe { libc::kill(daemon.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while daemon.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = daemon.kill();
            let _ = daemon.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a finished command did.
pub struct Output {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` ended with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

impl Output {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Asserts success.
    #[track_caller]
    pub fn ok(self) -> Output {
        assert!(self.status.success(), "expected success: {self}");
        self
    }

    /// Asserts a failure (a non-zero exit).
    #[track_caller]
    pub fn fails(self) -> Output {
        assert!(
            !self.status.success() && self.status.code().is_some(),
            "expected an error exit: {self}"
        );
        self
    }

    /// Asserts the exit code.
    #[track_caller]
    pub fn exits(self, code: i32) -> Output {
        assert_eq!(
            self.status.code(),
            Some(code),
            "expected exit {code}: {self}"
        );
        self
    }
}

/// The command line, for messages.
pub fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs `command` with no stdin and its output captured, killing it and
/// failing after [`COMMAND_PATIENCE`].
#[track_caller]
pub fn run(command: &mut Command) -> Output {
    let what = describe(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
    let deadline = Instant::now() + COMMAND_PATIENCE;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_until_deadline(&mut child, deadline, &what);
    // A process the command left behind may still hold its output open.
    let read = |receiver: mpsc::Receiver<String>, which: &str| {
        let left = deadline.saturating_duration_since(Instant::now());
        receiver.recv_timeout(left).unwrap_or_else(|_| {
            panic!("`{what}` exited ({status}) but something it started holds its {which} open")
        })
    };
    let stdout = read(stdout, "stdout");
    let stderr = read(stderr, "stderr");
    Output {
        what,
        status,
        stdout,
        stderr,
    }
}

/// Runs `command` like [`run`] but never fails the test: for cleanup,
/// which also runs while a failed test unwinds. None if it could not start
/// or did not finish in time (it is killed then).
pub fn try_run(command: &mut Command) -> Option<Output> {
    let what = describe(command);
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + COMMAND_PATIENCE;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let grace = Duration::from_secs(10);
    Some(Output {
        what,
        status,
        stdout: stdout.recv_timeout(grace).unwrap_or_default(),
        stderr: stderr.recv_timeout(grace).unwrap_or_default(),
    })
}

/// Runs `command` with its stdout and stderr going to files (for commands
/// whose container inherits them, like `create` and `run --detach`: the
/// files keep receiving what the container writes). Returns what the files
/// held when the command exited.
#[track_caller]
pub fn run_to_files(command: &mut Command, stdout: &Path, stderr: &Path) -> Output {
    let what = describe(command);
    let open = |path: &Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
    };
    let mut child = command
        .stdin(Stdio::null())
        .stdout(open(stdout))
        .stderr(open(stderr))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
    let status = wait_until_deadline(&mut child, Instant::now() + COMMAND_PATIENCE, &what);
    Output {
        what,
        status,
        stdout: read_text(stdout),
        stderr: read_text(stderr),
    }
}

pub fn read_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

fn wait_until_deadline(child: &mut Child, deadline: Instant, what: &str) -> ExitStatus {
    loop {
        if let Some(status) = child.try_wait().expect("wait for a command") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{what}` did not finish within {COMMAND_PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<String> {
    let (sender, receiver) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = sender.send(String::from_utf8_lossy(&bytes).into_owned());
        });
    }
    receiver
}

/// Polls `check` until it returns `Ok`, failing after [`WAIT_PATIENCE`]
/// with `what` and the last `Err` (what was seen instead).
#[track_caller]
pub fn wait_for<T>(what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    try_wait_for(check)
        .unwrap_or_else(|last| panic!("{what}: not within {WAIT_PATIENCE:?}; last seen: {last}"))
}

/// [`wait_for`] that gives the last thing seen instead of panicking, for
/// a caller with more to say about a failure.
pub fn try_wait_for<T>(mut check: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + WAIT_PATIENCE;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() > deadline => return Err(last),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// A busybox root filesystem in `dir`: Debian's static busybox, a link per
/// applet in /bin, a minimal /etc/passwd and /etc/group, and the usual
/// mount points.
pub fn busybox_rootfs(dir: &Path) {
    require_programs(&[(BUSYBOX, "busybox-static")]);
    for sub in ["bin", "etc", "proc", "sys", "dev", "tmp", "root", "run"] {
        std::fs::create_dir_all(dir.join(sub)).expect("rootfs dirs");
    }
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).expect("copy busybox");
    let list = run(Command::new(BUSYBOX).arg("--list")).ok();
    for applet in list.stdout.lines().map(str::trim) {
        if !applet.is_empty() && applet != "busybox" {
            symlink("busybox", dir.join("bin").join(applet)).expect("applet link");
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .expect("passwd");
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("group");
    std::fs::set_permissions(
        dir.join("tmp"),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("tmp mode");
    // What a tmpfs with tmpcopyup (podman's --read-only) must show.
    std::fs::create_dir_all(dir.join("run/lock/sub")).expect("run dirs");
    std::fs::write(dir.join("run/lock/sub/from-image"), "run from the image\n").expect("run file");
    symlink("lock/sub/from-image", dir.join("run/link")).expect("run link");
    std::fs::write(dir.join("tmp/from-image"), "tmp from the image\n").expect("tmp file");
}

/// The busybox root filesystem as a tar archive at `tar` (for `podman
/// import`), built in `work`.
pub fn busybox_tar(work: &Path, tar: &Path) {
    busybox_rootfs(work);
    run(Command::new("tar")
        .arg("--numeric-owner")
        .arg("-C")
        .arg(work)
        .arg("-cf")
        .arg(tar)
        .arg("."))
    .ok();
}

/// Mount points at or below `dir`, from this process's mount table.
pub fn mounts_below(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|point| point == &dir || point.starts_with(&format!("{dir}/")))
        .collect()
}

fn unescape_mountinfo(field: &str) -> String {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(value) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pids /proc lists now.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
        .collect()
}

/// Processes other than this one whose command line, working directory or
/// executable mentions one of `needles` (a scratch directory, a container
/// id): (pid, what it is).
pub fn processes_referencing(needles: &[String]) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    for pid in pids() {
        if pid == me {
            continue;
        }
        let dir = PathBuf::from(format!("/proc/{pid}"));
        let cmdline = std::fs::read(dir.join("cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let link = |name: &str| {
            std::fs::read_link(dir.join(name))
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        };
        let (cwd, exe) = (link("cwd"), link("exe"));
        let hit = needles.iter().any(|needle| {
            cmdline.contains(needle.as_str())
                || cwd.contains(needle.as_str())
                || exe.contains(needle.as_str())
        });
        if hit {
            found.push((
                pid,
                format!("pid {pid}: {} (cwd {cwd}, exe {exe})", cmdline.trim()),
            ));
        }
    }
    found
}

/// Waits (generously) for every process that refers to one of `needles` to
/// end, then asserts none is left.
#[track_caller]
pub fn assert_no_process_references(needles: &[String]) {
    let deadline = Instant::now() + WAIT_PATIENCE;
    loop {
        let left = processes_referencing(needles);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let list: Vec<String> = left.into_iter().map(|(_, what)| what).collect();
            panic!("processes still refer to {needles:?}:\n{}", list.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[track_caller]
pub fn assert_no_mounts_below(dir: &Path) {
    let left = mounts_below(dir);
    assert!(
        left.is_empty(),
        "mounts left below {}: {left:?}",
        dir.display()
    );
}

/// Asserts `dir` has no entries (a missing directory counts as empty).
#[track_caller]
pub fn assert_empty_dir(dir: &Path) {
    let entries: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    assert!(
        entries.is_empty(),
        "{} should be empty but holds {entries:?}",
        dir.display()
    );
}

/// The cgroup hierarchies' roots: /sys/fs/cgroup itself (cgroup v2) or
/// each hierarchy mounted below it (v1 and hybrid).
pub fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    let mut roots = vec![base.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(base) {
        for entry in entries.flatten() {
            if entry.path().join("cgroup.procs").exists() {
                roots.push(entry.path());
            }
        }
    }
    roots
}

/// Removes the cgroup `relative` (e.g. "runvm-e2e-1234") and everything
/// below it in every hierarchy; returns the ones that could not be removed
/// (a cgroup that still has processes cannot).
pub fn remove_cgroup(relative: &str) -> Vec<String> {
    fn remove(dir: &Path, failed: &mut Vec<String>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    remove(&entry.path(), failed);
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(dir) {
            failed.push(format!("{}: {e}", dir.display()));
        }
    }
    let relative = relative.trim_start_matches('/');
    let mut failed = Vec::new();
    for root in cgroup_roots() {
        let dir = root.join(relative);
        if dir.is_dir() {
            remove(&dir, &mut failed);
        }
    }
    failed
}

/// The parent of `pid`, from /proc.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces and parentheses.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// Whether `pid` descends from `ancestor`.
pub fn descends_from(pid: u32, ancestor: u32) -> bool {
    let mut current = pid;
    for _ in 0..64 {
        match parent_of(current) {
            Some(parent) if parent == ancestor => return true,
            Some(parent) if parent > 1 => current = parent,
            _ => return false,
        }
    }
    false
}

/// One HTTP/1.0 GET of `/` at `address`: the whole answer (status line,
/// headers, body), from this thread's network namespace.
pub fn http_get(address: std::net::SocketAddr) -> Result<String, String> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(20))
        .map_err(|e| format!("connect to {address}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    Ok(answer)
}

/// For each "pid N:" in `listing` (as [`processes_referencing`] words
/// it), its threads' names and where each waits (wchan, and the kernel
/// stack when readable): what a process that will not end is stuck on.
pub fn thread_states(listing: &str) -> String {
    let mut out = String::new();
    for pid in listing
        .split("pid ")
        .skip(1)
        .filter_map(|rest| rest.split(':').next()?.trim().parse::<u32>().ok())
    {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
        for task in tasks.into_iter().flatten().flatten() {
            let dir = task.path();
            let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
            out.push_str(&format!(
                "pid {pid} thread {}: {} waits in {}\n{}",
                task.file_name().to_string_lossy(),
                read("comm").trim(),
                read("wchan").trim(),
                read("stack")
            ));
        }
    }
    out
}
