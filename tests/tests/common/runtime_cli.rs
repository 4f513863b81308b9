//! The runtime under test (`$RUNVM_TEST_RUNTIME`, e.g. runc, or the runvm
//! build) driven through its command line the way conmon does: a private
//! `--root` in a scratch directory, this test process a child subreaper so
//! the pid-file processes become its children, and whatever a failed test
//! leaves force-deleted when the [`Cli`] is dropped. Shared by the suites
//! that drive the runc command line; each adds the methods it needs in an
//! `impl Cli` of its own.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};

use super::harness::{self, Output, RuntimeUnderTest, Scratch};

/// One container (one VM for runvm) at a time: the host has two cores.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// The runtime under test with a private `--root`, in a scratch directory.
pub struct Cli {
    pub runtime: RuntimeUnderTest,
    pub root: PathBuf,
    /// The host cgroup parent for the bundles that name one (removed at
    /// the end: runc leaves the parents it made).
    pub cgroup_parent: String,
    pub scratch: Scratch,
}

impl Cli {
    /// A Cli of `suite` for test `name`.
    pub fn new(suite: &str, name: &str) -> Cli {
        harness::require_root();
        // SAFETY: prctl(2) with PR_SET_CHILD_SUBREAPER only sets a flag of
        // this process.
        let set = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(set, 0, "cannot become a child subreaper");
        let scratch = Scratch::new(&format!("{suite}-{name}"));
        let runtime = RuntimeUnderTest::resolve(&scratch);
        Cli {
            root: scratch.join("state"),
            runtime,
            cgroup_parent: format!("/runvm-e2e-{suite}-{name}-{}", std::process::id()),
            scratch,
        }
    }

    /// This Cli with a `--root` laid out like containerd's and so deep
    /// that every socket path below it is longer than a socket address
    /// holds (108 bytes), as containerd's default root makes them with its
    /// 64-hex container ids.
    pub fn with_deep_root(mut self) -> Cli {
        self.root = self
            .scratch
            .join("run/containerd/runc/k8s.io")
            .join("0123456789abcdef".repeat(4));
        assert!(self.root.as_os_str().len() > 108, "{}", self.root.display());
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.runtime.path);
        command.arg("--root").arg(&self.root).args(args);
        command
    }

    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Output {
        harness::run(&mut self.command(args))
    }

    /// `create --bundle bundle --pid-file pid_file id` as conmon runs it:
    /// the container's stdio is the call's, kept in the files `out` and
    /// `err` rather than pipes the container would hold open.
    #[track_caller]
    pub fn create_to_files(
        &self,
        bundle: &Path,
        pid_file: &Path,
        id: &str,
        out: &Path,
        err: &Path,
    ) -> Output {
        let (bundle, pid_file) = (bundle.display().to_string(), pid_file.display().to_string());
        harness::run_to_files(
            &mut self.command(&["create", "--bundle", &bundle, "--pid-file", &pid_file, id]),
            out,
            err,
        )
    }
}

impl Drop for Cli {
    /// After a failure: force-delete what is left, so that no container
    /// outlives the test (the scratch directory goes next).
    fn drop(&mut self) {
        if let Some(list) = harness::try_run(&mut self.command(&["list", "-q"])) {
            for id in list.stdout.split_whitespace() {
                harness::try_run(&mut self.command(&["delete", "--force", id]));
            }
        }
        reap_orphans();
        harness::remove_cgroup(&self.cgroup_parent);
    }
}

/// Reaps the zombies reparented to this subreaper (processes the runtime
/// left to us that have ended). Only between tests (they run one at a
/// time), when no command of ours is running.
pub fn reap_orphans() {
    let me = std::process::id();
    for pid in harness::pids() {
        if harness::parent_of(pid) == Some(me) && !harness::alive(pid) {
            let mut status = 0;
            // SAFETY: waitpid(2) on a zombie child of ours.
            unsafe { libc::waitpid(pid as libc::pid_t, &mut status, libc::WNOHANG) };
        }
    }
}

/// A container id of this test run (runc names cgroups after it).
pub fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}
