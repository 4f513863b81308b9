//! The shim binary's commands: `start` (which shim serves a container),
//! `delete` (clean-up after a dead shim), and making the task service.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use containerd_shim::api::DeleteResponse;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::write_address;
use containerd_shim::{Config, Error, ExitSignal, Flags, StartOpts};
use runvm::sandbox::{self, Role};

use crate::service::Service;

pub const RUNTIME_ID: &str = "io.containerd.runvm.v2";
/// Where each namespace's pods keep their state: `<root>/<namespace>/<pod>`.
const STATE_ROOT: &str = "/run/runvm-shim";
/// The exit status `delete` reports for a container whose shim died.
const KILLED_STATUS: u32 = 128 + libc::SIGKILL as u32;

pub struct RunvmShim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

/// Longer names are hashed (see [`short_name`]).
const MAX_NAME: usize = 32;

/// The state directory of `namespace`'s pods.
pub fn state_root(namespace: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(short_name(namespace))
}

/// `name` as a directory name short enough for the VM's sockets: they
/// live in `<root>/<namespace>/<pod>/vm/jail/`, and a Unix socket's path
/// must fit in 108 bytes, which CRI's 64-character ids alone would
/// nearly fill. Names up to 32 bytes stay as they are; longer ones become
/// the first 32 hex digits of their SHA-256.
pub fn short_name(name: &str) -> String {
    use sha2::{Digest, Sha256};
    if name.len() <= MAX_NAME {
        return name.to_owned();
    }
    let digest = Sha256::digest(name.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    hex[..MAX_NAME].to_owned()
}

/// The pod container `id` of `bundle` belongs to: its CRI sandbox's id,
/// or its own for a sandbox and a container outside any pod.
pub fn pod_of(bundle: &Path, id: &str) -> String {
    let annotations: HashMap<String, String> = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_slice::<serde_json::Value>(&text).ok())
        .and_then(|spec| serde_json::from_value(spec.get("annotations")?.clone()).ok())
        .unwrap_or_default();
    match sandbox::from_annotations(&annotations, id) {
        Ok(Some(Role::Member(pod))) => pod,
        _ => id.to_owned(),
    }
}

fn other(message: String) -> Error {
    Error::Other(message)
}

impl containerd_shim::Shim for RunvmShim {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        RunvmShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// Containers of one pod get one shim: the address is that of the
    /// pod's shim, started now unless it runs already.
    fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let bundle = std::env::current_dir().map_err(|e| other(e.to_string()))?;
        let pod = pod_of(&bundle, &opts.id);
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &pod);
        let path = address.trim_start_matches("unix://");
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            write_address(&address)?;
            return Ok(address);
        }
        let (_, address) = containerd_shim::spawn(opts, &pod, Vec::new())?;
        write_address(&address)?;
        Ok(address)
    }

    /// After the shim of container `id` died: its rootfs is unmounted and,
    /// once the pod's shim is gone, what it ran (VMM, virtiofsd) and its
    /// state go too.
    fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let bundle = std::env::current_dir().map_err(|e| other(e.to_string()))?;
        crate::rootfs::unmount(&bundle.join("rootfs"));
        let pod = pod_of(&bundle, &self.id);
        // A pod whose shim still runs (a failed Create of one of its
        // containers) is that shim's to clean.
        runvm::pod::clean_up(&state_root(&self.namespace), &short_name(&pod))
            .map_err(|e| other(e.to_string()))?;
        let mut response = DeleteResponse::new();
        response.exit_status = KILLED_STATUS;
        response.exited_at = Some(crate::process::now()).into();
        Ok(response)
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Service {
        let events_address = crate::no_event_service::forget_address();
        Service::new(
            &self.namespace,
            state_root(&self.namespace),
            publisher,
            events_address,
            self.exit.clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_are_hashed_to_fit_socket_paths() {
        assert_eq!(short_name("k8s.io"), "k8s.io");
        let id = "a".repeat(64);
        let short = short_name(&id);
        assert_eq!(short.len(), MAX_NAME);
        assert_ne!(short, short_name(&"b".repeat(64)));
        let deepest = state_root(&"n".repeat(64))
            .join(&short)
            .join("vm/jail/vsock.sock_1023");
        assert!(deepest.as_os_str().len() < 108, "{}", deepest.display());
    }
}
