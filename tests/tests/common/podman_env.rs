//! Debian's podman on private storage, configuration and cgroup parent in
//! a test's scratch directory, with the busybox image imported: for the
//! podman tests, and to make the image archive the containerd test
//! imports. Needs `crate::harness` and `crate::netns`.

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{self, run, Output};

/// The test image: busybox-static and its applets, made by
/// [`PodmanEnv::import_busybox`] (there is no registry).
pub const IMAGE: &str = "localhost/runvm-e2e/busybox:latest";

pub struct PodmanEnv {
    dir: PathBuf,
    runtime: Option<PathBuf>,
    /// The cgroupfs parent of this test's containers (and their conmons).
    pub cgroup_parent: String,
    /// The network namespace podman runs in (see [`Self::run_in_netns`]).
    netns: Option<PathBuf>,
}

/// The hard limit of `resource`, capped at `cap`.
fn hard_limit(resource: libc::__rlimit_resource_t, cap: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) with a valid pointer.
    let ok = unsafe { libc::getrlimit(resource, &mut limit) } == 0;
    if ok {
        limit.rlim_max.min(cap)
    } else {
        cap
    }
}

impl PodmanEnv {
    /// podman with everything under `dir`; its containers run on `runtime`
    /// (`podman --runtime`), if given.
    pub fn new(dir: &Path, runtime: Option<&Path>) -> PodmanEnv {
        harness::require_programs(&[
            ("podman", "podman"),
            ("conmon", "conmon"),
            ("/usr/lib/podman/netavark", "netavark"),
            ("tar", "tar"),
        ]);
        std::fs::create_dir_all(dir).expect("podman dir");
        let runroot = dir.join("run").display().to_string();
        assert!(
            runroot.len() <= 50,
            "podman refuses a runroot longer than 50 characters ({runroot}): \
             set TMPDIR to a shorter directory"
        );
        let d = dir.display();
        // Rootful podman asks for RLIMIT_NOFILE 1048576 and RLIMIT_NPROC up
        // to pid_max (and lowers its own RLIMIT_NPROC to that): more than a
        // root without CAP_SYS_RESOURCE (as in CI's sandbox) may set. The
        // current hard limits work everywhere.
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(32768);
        let nofile = hard_limit(libc::RLIMIT_NOFILE, 1 << 20);
        let nproc = hard_limit(libc::RLIMIT_NPROC, pid_max);
        std::fs::write(
            dir.join("containers.conf"),
            format!(
                "# Written by the runvm podman tests: the only containers.conf read.\n\
                 [containers]\n\
                 log_driver = \"k8s-file\"\n\
                 default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
                 [engine]\n\
                 cgroup_manager = \"cgroupfs\"\n\
                 events_logger = \"file\"\n\
                 [network]\n\
                 network_backend = \"netavark\"\n\
                 network_config_dir = \"{d}/networks\"\n"
            ),
        )
        .expect("containers.conf");
        std::fs::write(
            dir.join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{d}/storage\"\nrunroot = \"{d}/run\"\n"
            ),
        )
        .expect("storage.conf");
        PodmanEnv {
            dir: dir.to_path_buf(),
            runtime: runtime.map(Path::to_path_buf),
            cgroup_parent: format!("/runvm-e2e-podman-{}", std::process::id()),
            netns: None,
        }
    }

    /// From now on podman runs in the network namespace at `path` (its
    /// network only), so that what netavark sets up (bridge, firewall
    /// rules, published ports) stays out of the host's network.
    pub fn run_in_netns(&mut self, path: &Path) {
        self.netns = Some(path.to_path_buf());
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("podman");
        if let Some(path) = &self.netns {
            crate::netns::enter(path, &mut command);
        }
        command
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("CONTAINERS_STORAGE_CONF", self.dir.join("storage.conf"))
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"));
        if let Some(runtime) = &self.runtime {
            command.arg("--runtime").arg(runtime);
        }
        command.args(args);
        command
    }

    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    /// The options every `podman run` of the tests takes: no network, no
    /// pull, this test's cgroup parent.
    pub fn run_options(&self) -> Vec<String> {
        ["--network", "none", "--pull", "never", "--cgroup-parent"]
            .iter()
            .map(|s| s.to_string())
            .chain([self.cgroup_parent.clone()])
            .collect()
    }

    /// Builds the busybox rootfs tar and imports it as [`IMAGE`].
    pub fn import_busybox(&self) -> &'static str {
        let tar = self.dir.join("busybox.tar");
        harness::busybox_tar(&self.dir.join("image-rootfs"), &tar);
        self.run(&["import", "--quiet", &tar.display().to_string(), IMAGE])
            .ok();
        IMAGE
    }
}

impl Drop for PodmanEnv {
    /// Best effort (also after a failure): no container, no image, no
    /// cgroup of this test left.
    fn drop(&mut self) {
        harness::try_run(&mut self.command(&["rm", "--force", "--all", "--time", "0"]));
        harness::try_run(&mut self.command(&["rmi", "--all", "--force"]));
        harness::remove_cgroup(&self.cgroup_parent);
    }
}
