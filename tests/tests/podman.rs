//! Debian's podman (4.3) and conmon, unchanged, on the runtime under test
//! (`podman --runtime`): `run --rm --read-only` output, exit codes and
//! copied-up tmpfs mounts, `run -d` with `exec`, `logs`, `stop` and `rm`,
//! and `run -it` through a pseudo-terminal this test opens. The image is busybox-static imported with `podman
//! import` (there is no registry); storage, configuration and cgroups are
//! private to each test, and nothing may be left behind.
//!
//! The runtime under test is `$RUNVM_TEST_RUNTIME` or the runvm build (see
//! `common/harness.rs`). Each test is one container (for runvm, one
//! microVM); they run one at a time.

mod common;
#[path = "common/harness.rs"]
mod harness;
#[path = "common/podman_env.rs"]
mod podman_env;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use harness::{
    assert_no_mounts_below, assert_no_process_references, read_text, wait_for, Output,
    RuntimeUnderTest, Scratch, COMMAND_PATIENCE,
};
use podman_env::PodmanEnv;

/// One container (one VM for runvm) at a time: the host has two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// podman on private storage, running containers on the runtime under
/// test. Field order matters: podman cleans up before the scratch dir goes.
struct Podman {
    env: PodmanEnv,
    runtime: RuntimeUnderTest,
    image: &'static str,
    /// The `--cidfile`s of the containers this test ran.
    cidfiles: Vec<PathBuf>,
    scratch: Scratch,
}

impl Podman {
    fn new(name: &str) -> Podman {
        harness::require_root();
        let scratch = Scratch::new(&format!("pm-{name}"));
        let runtime = RuntimeUnderTest::resolve(&scratch);
        let env = PodmanEnv::new(&scratch.join("pm"), Some(&runtime.path));
        let image = env.import_busybox();
        Podman {
            env,
            runtime,
            image,
            cidfiles: Vec::new(),
            scratch,
        }
    }

    /// `podman run` with the test's options, `options`, the image and
    /// `command`; the container's id is kept (through `--cidfile`).
    fn run_command(&mut self, options: &[&str], command: &[&str]) -> Command {
        let cidfile = self.scratch.join(format!("cid-{}", self.cidfiles.len()));
        self.cidfiles.push(cidfile.clone());
        let mut args: Vec<String> = vec!["run".into()];
        args.extend(self.env.run_options());
        args.extend(["--cidfile".into(), cidfile.display().to_string()]);
        args.extend(options.iter().map(|s| s.to_string()));
        args.push(self.image.into());
        args.extend(command.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.env.command(&args)
    }

    #[track_caller]
    fn run(&mut self, options: &[&str], command: &[&str]) -> Output {
        harness::run(&mut self.run_command(options, command))
    }

    #[track_caller]
    fn podman(&self, args: &[&str]) -> Output {
        self.env.run(args)
    }

    /// The container ids, read from the cid files.
    fn container_ids(&self) -> Vec<String> {
        self.cidfiles
            .iter()
            .map(|cidfile| read_text(cidfile).trim().to_string())
            .filter(|id| !id.is_empty())
            .collect()
    }

    /// Nothing is left: no container in podman, none of ours in the
    /// runtime's (default) state, no process referring to the scratch dir
    /// or to a container id, no mount, and the cgroups can go.
    #[track_caller]
    fn assert_clean(&self) {
        let ps = self.podman(&["ps", "--all", "--quiet"]).ok();
        assert!(ps.stdout.trim().is_empty(), "containers left: {ps}");
        let ids = self.container_ids();
        assert!(!ids.is_empty(), "no container id was recorded");
        let listed = harness::run(Command::new(&self.runtime.path).args(["list", "-q"])).ok();
        for id in &ids {
            assert!(
                !listed.stdout.contains(id.as_str()),
                "the runtime still lists {id}: {listed}"
            );
        }
        let mut needles = ids.clone();
        needles.push(self.scratch.display());
        assert_no_process_references(&needles);
        assert_no_mounts_below(self.scratch.path());
        let stuck = harness::remove_cgroup(&self.env.cgroup_parent);
        assert!(stuck.is_empty(), "cgroups that cannot go: {stuck:?}");
    }
}

/// `podman run --rm --read-only`: stdout, stderr and the exit code are
/// the container's; the root is read-only, and /run and /tmp are tmpfs
/// with what the image had there copied up (podman's tmpcopyup).
#[test]
fn run_rm_gives_output_and_exit_code() {
    let _one = one_at_a_time();
    let mut podman = Podman::new("rm");
    let script = "echo hi; echo oops >&2; \
        touch /new 2>/dev/null && echo root-writable || echo root-readonly; \
        cat /tmp/from-image /run/link; ls -ld /tmp /run | cut -c1-10; \
        touch /tmp/new /run/lock/new && echo tmpfs-writable; \
        grep -E ' /(tmp|run) ' /proc/mounts | cut -d' ' -f2,3 | sort; exit 3";
    let output = podman
        .run(&["--rm", "--read-only"], &["sh", "-c", script])
        .exits(3);
    assert_eq!(
        output.stdout,
        "hi\nroot-readonly\ntmp from the image\nrun from the image\n\
         drwxr-xr-x\ndrwxrwxrwt\ntmpfs-writable\n/run tmpfs\n/tmp tmpfs\n",
        "{output}"
    );
    assert!(output.stderr.contains("oops"), "{output}");
    podman.assert_clean();
}

/// `podman run -d`, then `exec` (output, environment, working directory,
/// exit code), `logs`, `stop` (SIGTERM, which the container traps to exit
/// 7), the exit code in `inspect`, and `rm`.
#[test]
fn detached_run_exec_logs_stop_rm() {
    let _one = one_at_a_time();
    let mut podman = Podman::new("d");
    let script = "trap 'echo bye; exit 7' TERM; echo ready; sleep 1000000 & wait";
    let started = podman
        .run(&["--detach", "--name", "d1"], &["sh", "-c", script])
        .ok();
    let id = started.stdout.trim().to_string();
    assert_eq!(id, podman.container_ids()[0], "`run -d` prints the id");

    wait_for("`podman logs` shows `ready`", || {
        let logs = podman.podman(&["logs", "d1"]).ok();
        logs.stdout
            .contains("ready")
            .then_some(())
            .ok_or(logs.to_string())
    });
    let inspect = podman
        .podman(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.Pid}} {{.State.ConmonPid}}",
            "d1",
        ])
        .ok();
    let fields: Vec<&str> = inspect.stdout.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"running"), "{inspect}");
    let pid: u32 = fields[1].parse().expect("a pid");
    let conmon: u32 = fields[2].parse().expect("conmon's pid");
    assert!(
        harness::alive(pid),
        "the container's pid {pid} is not alive"
    );
    assert_eq!(
        harness::parent_of(pid),
        Some(conmon),
        "the pid-file process is conmon's child (conmon waits for it)"
    );
    let ps = podman
        .podman(&[
            "ps",
            "--filter",
            "name=d1",
            "--format",
            "{{.Names}} {{.Status}}",
        ])
        .ok();
    assert!(ps.stdout.starts_with("d1 Up"), "{ps}");

    let exec = podman
        .podman(&[
            "exec",
            "--env",
            "GREETING=hello",
            "--workdir",
            "/etc",
            "d1",
            "sh",
            "-c",
            "echo \"greeting=$GREETING\"; pwd; echo exec err >&2; exit 4",
        ])
        .exits(4);
    assert_eq!(exec.stdout, "greeting=hello\n/etc\n", "{exec}");
    assert!(exec.stderr.contains("exec err"), "{exec}");

    podman.podman(&["stop", "--time", "120", "d1"]).ok();
    let inspect = podman
        .podman(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.ExitCode}}",
            "d1",
        ])
        .ok();
    assert_eq!(inspect.stdout.trim(), "exited 7", "{inspect}");
    let logs = podman.podman(&["logs", "d1"]).ok();
    assert_eq!(logs.stdout, "ready\nbye\n", "{logs}");
    podman.podman(&["rm", "d1"]).ok();
    podman.assert_clean();
}

/// A process in a new session with a pseudo-terminal of `rows`×`cols` as
/// its controlling terminal and stdio; what it writes collects in the
/// returned buffer.
struct InPty {
    child: std::process::Child,
    master: File,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl InPty {
    fn spawn(mut command: Command, rows: u16, cols: u16) -> InPty {
        let (mut master, mut slave) = (-1, -1);
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: openpty(3) with valid out-pointers and size.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        };
        assert_eq!(opened, 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both descriptors were just opened and are ours alone.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        for fd in [&master, &slave] {
            // SAFETY: fcntl(2) on an open descriptor: not inherited.
            unsafe {
                libc::fcntl(
                    std::os::fd::AsRawFd::as_raw_fd(fd),
                    libc::F_SETFD,
                    libc::FD_CLOEXEC,
                )
            };
        }
        command
            .stdin(Stdio::from(slave.try_clone().expect("dup")))
            .stdout(Stdio::from(slave.try_clone().expect("dup")))
            .stderr(Stdio::from(slave));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let what = harness::describe(&command);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{what}`: {e}"));
        // The command holds our copies of the terminal: drop them, so that
        // only the child has it.
        drop(command);
        let master = File::from(master);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup the master");
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // EIO once no process has the terminal open any more.
            while let Ok(n @ 1..) = reader.read(&mut buffer) {
                sink.lock()
                    .expect("not poisoned")
                    .extend_from_slice(&buffer[..n]);
            }
        });
        InPty {
            child,
            master,
            seen,
        }
    }

    fn seen(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().expect("not poisoned")).into_owned()
    }

    #[track_caller]
    fn wait_for_text(&self, wanted: &str) {
        wait_for(&format!("{wanted:?} on the terminal"), || {
            let seen = self.seen();
            seen.contains(wanted).then_some(()).ok_or(seen)
        });
    }

    fn type_text(&mut self, text: &str) {
        self.master.write_all(text.as_bytes()).expect("type");
    }

    #[track_caller]
    fn wait(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + COMMAND_PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the terminal session did not end; it showed:\n{}",
                    self.seen()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `podman run -it` from a terminal: the container has a tty of the
/// terminal's size, reads what is typed, and its exit code is podman's.
#[test]
fn interactive_run_through_a_pty() {
    let _one = one_at_a_time();
    let mut podman = Podman::new("tty");
    let script = "tty; read line; stty size; echo \"got:$line\"; exit 5";
    let command = podman.run_command(&["--rm", "--interactive", "--tty"], &["sh", "-c", script]);
    let mut session = InPty::spawn(command, 33, 111);
    // runc's terminal is /dev/pts/0 of the container's devpts; runvm's is
    // still the agent's pty, which the container sees as /dev/console.
    session.wait_for_text("/dev/");
    let tty = session.seen();
    assert!(
        tty.contains("/dev/pts/") || tty.contains("/dev/console"),
        "stdin is not a terminal: {tty}"
    );
    session.type_text("hello\r");
    let status = session.wait();
    session.wait_for_text("got:hello");
    let seen = session.seen();
    eprintln!("the terminal showed:\n{seen}");
    assert_eq!(
        status.code(),
        Some(5),
        "podman's exit; the terminal showed:\n{seen}"
    );
    assert!(
        seen.contains("33 111"),
        "the tty's size; the terminal showed:\n{seen}"
    );
    podman.assert_clean();
}
