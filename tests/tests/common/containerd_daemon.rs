//! A containerd of a test (Debian's 1.6, unchanged) with the minimal
//! config of `containerd_config.rs`, all its state under the test's
//! scratch dir, and `ctr` talking to it in a namespace of its own, with
//! the busybox test image imported (podman saves it as an OCI archive).
//! Shared by the containerd suite (the runc shim on the runtime under
//! test) and the shim suite (runvm's own shim).

#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::containerd_config;
use crate::harness::{self, read_text, run, wait_for, Output, Scratch};
use crate::podman_env::{PodmanEnv, IMAGE};

pub struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// The PATH containerd runs with (where it finds shims).
    path: Option<String>,
    pub namespace: String,
}

impl Daemon {
    /// Starts containerd in `scratch` (with `path_first` ahead of the
    /// PATH it finds shims on), waits until it answers and imports the
    /// busybox image into `namespace`.
    pub fn start(scratch: &Scratch, namespace: &str, path_first: Option<&Path>) -> Daemon {
        let config = scratch.join("config.toml");
        std::fs::write(&config, containerd_config::base(&scratch.display(), false))
            .expect("config.toml");
        let path = path_first.map(|dir| {
            let path = std::env::var("PATH").unwrap_or_default();
            format!("{}:{path}", dir.display())
        });
        let mut daemon = Daemon {
            child: None,
            socket: scratch.join("containerd.sock"),
            config,
            log: scratch.join("containerd.log"),
            path,
            namespace: namespace.to_owned(),
        };
        daemon.spawn();
        daemon.import_image(scratch);
        daemon
    }

    /// Starts containerd on the config, appending to its log, and waits
    /// until it answers.
    fn spawn(&mut self) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let mut command = Command::new("containerd");
        command
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("dup"))
            .stderr(file);
        if let Some(path) = &self.path {
            command.env("PATH", path);
        }
        self.child = Some(command.spawn().expect("cannot start containerd"));
        wait_for("containerd answers", || {
            if let Some(status) = self.child.as_mut().and_then(|d| d.try_wait().ok()?) {
                panic!("containerd exited ({status}):\n{}", self.log());
            }
            let version = run(&mut self.command(&["version"]));
            version
                .status
                .success()
                .then_some(())
                .ok_or(version.to_string())
        });
    }

    /// containerd stopped (SIGTERM, waited for) and started again on the
    /// same root, state and config, as after a node's containerd
    /// upgrade: the shims it started run on, and it finds them again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn log(&self) -> String {
        read_text(&self.log)
    }

    /// podman saves the busybox image as an OCI archive; ctr imports it.
    fn import_image(&self, scratch: &Scratch) {
        let archive = scratch.join("busybox-oci.tar");
        {
            let podman = PodmanEnv::new(&scratch.join("pm"), None);
            podman.import_busybox();
            let archive = archive.display().to_string();
            podman
                .run(&["save", "--format", "oci-archive", "-o", &archive, IMAGE])
                .ok();
        }
        self.ctr(&["images", "import", &archive.display().to_string()])
            .ok();
        let images = self.ctr(&["images", "ls", "--quiet"]).ok();
        assert!(images.stdout.lines().any(|l| l == IMAGE), "{images}");
    }

    /// `ctr` with `args`, not started.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(&self.namespace)
            .args(args);
        command
    }

    #[track_caller]
    pub fn ctr(&self, args: &[&str]) -> Output {
        run(&mut self.command(args))
    }

    /// The tasks `ctr task ls` shows: (id, pid, status).
    #[track_caller]
    pub fn tasks(&self) -> Vec<(String, u32, String)> {
        let listed = self.ctr(&["tasks", "ls"]).ok();
        listed
            .stdout
            .lines()
            .skip(1)
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(fields.len(), 3, "a task line: {line:?}");
                let pid = fields[1]
                    .parse()
                    .unwrap_or_else(|_| panic!("a pid: {line:?}"));
                (fields[0].to_string(), pid, fields[2].to_string())
            })
            .collect()
    }

    /// Waits until `ctr task ls` shows task `id` stopped (or, if
    /// `or_gone`, not at all).
    #[track_caller]
    pub fn wait_until_stopped(&self, id: &str, or_gone: bool) {
        wait_for(&format!("`ctr task ls` shows {id} stopped"), || {
            let tasks = self.tasks();
            match tasks.iter().find(|(task, _, _)| task == id) {
                Some((_, _, status)) if status == "STOPPED" => Ok(()),
                None if or_gone => Ok(()),
                _ => Err(format!("{tasks:?}")),
            }
        });
    }

    /// Best effort (also after a failure): every task and container
    /// deleted, then containerd stopped.
    pub fn remove_all_and_stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        for kind in ["tasks", "containers"] {
            let listed = harness::try_run(&mut self.command(&[kind, "ls", "--quiet"]));
            for id in listed
                .map(|o| o.stdout)
                .unwrap_or_default()
                .split_whitespace()
            {
                let force: &[&str] = if kind == "tasks" { &["--force"] } else { &[] };
                let mut args = vec![kind, "delete"];
                args.extend(force);
                args.push(id);
                harness::try_run(&mut self.command(&args));
            }
        }
        self.stop();
    }

    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            harness::terminate(child);
        }
    }
}
