//! An OCI bundle on the host and the spec the guest gets from it.
//!
//! config.json is written for a host: its bind mounts name host paths,
//! and namespaces may name host namespaces to join (podman's network
//! namespace, a pod's shared ones). In the guest those paths mean
//! nothing, so [`guest_spec`] rewrites the spec: every bind mount's
//! source is bound into the VM's share first and the mount then comes
//! from there, namespaces with a path become new ones (a pod's member
//! gets those it shares with its sandbox named by container instead: see
//! `sandbox::namespaces`), and hooks (which run on the host) are taken
//! out.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Hooks, Mount, Spec};

use crate::share::{BindFlags, MountSource};

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a valid runtime spec: {source}", path.display())]
    Invalid {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the spec cannot be put in the agent's form: {0}")]
    Wire(serde_json::Error),
    #[error("config.json has no {0}")]
    Missing(&'static str),
    #[error("the rootfs {} is not a directory", .0.display())]
    NoRootfs(PathBuf),
    #[error(
        "linux.resources.blockIO names block device {0}:{1}, which does not exist on the host"
    )]
    NoBlockDevice(i64, i64),
    #[error("bind mount of {} at {destination}: {reason}", source_path.display())]
    BindSource {
        source_path: PathBuf,
        destination: String,
        reason: String,
    },
}

/// A bundle directory and its config.json.
pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
}

impl Bundle {
    /// Reads `<dir>/config.json`; `dir` is made absolute.
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let dir = std::path::absolute(dir).map_err(|source| BundleError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("config.json");
        let text = std::fs::read(&path).map_err(|source| BundleError::Read {
            path: path.clone(),
            source,
        })?;
        let spec: Spec = serde_json::from_slice(&text)
            .map_err(|source| BundleError::Invalid { path, source })?;
        if spec.process().is_none() {
            return Err(BundleError::Missing("process"));
        }
        check_block_devices(&spec, Path::new("/sys/dev/block"))?;
        Ok(Bundle { dir, spec })
    }

    /// The root filesystem on the host (root.path, relative to the bundle
    /// unless absolute).
    pub fn rootfs(&self) -> Result<PathBuf, BundleError> {
        let root = self
            .spec
            .root()
            .as_ref()
            .ok_or(BundleError::Missing("root"))?;
        let rootfs = self.dir.join(root.path());
        if !rootfs.is_dir() {
            return Err(BundleError::NoRootfs(rootfs));
        }
        Ok(rootfs)
    }

    /// The process wants a terminal (`process.terminal`).
    pub fn terminal(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }

    pub fn readonly_rootfs(&self) -> bool {
        self.spec
            .root()
            .as_ref()
            .and_then(|root| root.readonly())
            .unwrap_or(false)
    }

    pub fn hooks(&self) -> Option<Hooks> {
        self.spec.hooks().clone()
    }
}

/// The block devices of `linux.resources.blockIO` must exist on the host
/// (`dev_block` lists them as /sys/dev/block does): runc's kernel refuses
/// a limit on a device it does not have, and so does runvm. The guest
/// enforces the limits where it has the device and an io controller and
/// otherwise takes them as met (the container's storage is virtio-fs).
/// The container's memory limit in bytes, when it has one.
pub fn memory_limit(spec: &Spec) -> Option<i64> {
    spec.linux()
        .as_ref()
        .and_then(|linux| linux.resources().as_ref())
        .and_then(|resources| resources.memory().as_ref())
        .and_then(|memory| memory.limit())
}

pub fn check_block_devices(spec: &Spec, dev_block: &Path) -> Result<(), BundleError> {
    let Some(block_io) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.block_io().as_ref())
    else {
        return Ok(());
    };
    let mut devices: Vec<(i64, i64)> = block_io
        .weight_device()
        .iter()
        .flatten()
        .map(|d| (d.major(), d.minor()))
        .collect();
    for list in [
        block_io.throttle_read_bps_device(),
        block_io.throttle_write_bps_device(),
        block_io.throttle_read_iops_device(),
        block_io.throttle_write_iops_device(),
    ] {
        devices.extend(list.iter().flatten().map(|t| (t.major(), t.minor())));
    }
    for (major, minor) in devices {
        if !dev_block.join(format!("{major}:{minor}")).exists() {
            return Err(BundleError::NoBlockDevice(major, minor));
        }
    }
    Ok(())
}

/// Makes the mount points `spec` needs in a rootfs that the guest will see
/// read-only (it could not make them there; runc makes them before it
/// remounts the root read-only). Only plain directories are walked: a
/// component that is a symlink or anything but a directory ends the walk
/// for that mount (the agent then resolves it inside the root and reports
/// what is missing), so nothing outside `rootfs` can be created.
pub fn make_mount_points(rootfs: &Path, spec: &Spec, binds: &[HostBind]) -> std::io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    let open_dir = |parent: Option<&OwnedFd>, name: &std::ffi::CStr| -> std::io::Result<OwnedFd> {
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: openat(2) with a C string; the descriptor is ours.
        let fd = unsafe {
            libc::openat(
                parent.map_or(libc::AT_FDCWD, |p| p.as_raw_fd()),
                name.as_ptr(),
                flags,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let root_name = std::ffi::CString::new(rootfs.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let root = open_dir(None, &root_name)?;
    for (index, mount) in spec.mounts().iter().flatten().enumerate() {
        let file_bind = binds
            .iter()
            .any(|bind| bind.index == index && !bind.source.is_dir());
        let parts: Vec<_> = mount
            .destination()
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(name) => Some(name.to_owned()),
                _ => None,
            })
            .collect();
        let mut dir = root.try_clone()?;
        for (i, part) in parts.iter().enumerate() {
            let Ok(name) = std::ffi::CString::new(part.as_bytes()) else {
                break;
            };
            let last = i + 1 == parts.len();
            // SAFETY: mkdirat/mknodat relative to a directory we hold; they
            // never follow a symlink in the last component.
            let made = unsafe {
                if last && file_bind {
                    libc::mknodat(dir.as_raw_fd(), name.as_ptr(), libc::S_IFREG | 0o644, 0)
                } else {
                    libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o755)
                }
            };
            if made != 0
                && std::io::Error::last_os_error().kind() != std::io::ErrorKind::AlreadyExists
            {
                break;
            }
            if last {
                break;
            }
            match open_dir(Some(&dir), &name) {
                Ok(next) => dir = next,
                Err(_) => break,
            }
        }
    }
    Ok(())
}

/// A bind mount whose host source must be put in the share, the source
/// opened once (what is checked here is what the share binds).
#[derive(Debug)]
pub struct HostBind {
    /// Index in the spec's mounts.
    pub index: usize,
    pub source: MountSource,
    /// `ro`; and `rbind` (recursive) as opposed to `bind`.
    pub flags: BindFlags,
}

fn has_option(mount: &Mount, option: &str) -> bool {
    mount
        .options()
        .as_ref()
        .is_some_and(|options| options.iter().any(|o| o == option))
}

fn is_bind(mount: &Mount) -> bool {
    mount.typ().as_deref() == Some("bind")
        || mount
            .options()
            .as_ref()
            .is_some_and(|options| options.iter().any(|o| o == "bind" || o == "rbind"))
}

/// The bind mounts of `spec` whose sources are on the host. Relative
/// sources are relative to the bundle, as runc takes them.
pub fn host_binds(spec: &Spec, bundle: &Path) -> Result<Vec<HostBind>, BundleError> {
    let mut binds = Vec::new();
    for (index, mount) in spec.mounts().iter().flatten().enumerate() {
        if !is_bind(mount) {
            continue;
        }
        let destination = mount.destination().display().to_string();
        let source = mount
            .source()
            .as_ref()
            .ok_or_else(|| BundleError::BindSource {
                source_path: PathBuf::new(),
                destination: destination.clone(),
                reason: "it has no source".into(),
            })?;
        let path = bundle.join(source);
        let source = MountSource::open(&path).map_err(|e| BundleError::BindSource {
            source_path: path.clone(),
            destination,
            reason: e.to_string(),
        })?;
        binds.push(HostBind {
            index,
            source,
            flags: BindFlags {
                readonly: has_option(mount, "ro"),
                // runc binds recursively for `rbind` only.
                recursive: has_option(mount, "rbind"),
            },
        });
    }
    Ok(binds)
}

/// The spec the agent gets: bind sources replaced by their guest paths
/// (`guest_sources`, one per entry of [`host_binds`], same order),
/// namespaces with host paths made new ones, no hooks.
pub fn guest_spec(spec: &Spec, binds: &[HostBind], guest_sources: &[String]) -> Spec {
    let mut guest = spec.clone();
    if let Some(mounts) = guest.mounts().clone() {
        let mut mounts = mounts;
        for (bind, guest_source) in binds.iter().zip(guest_sources) {
            if let Some(mount) = mounts.get_mut(bind.index) {
                mount.set_source(Some(PathBuf::from(guest_source)));
            }
        }
        guest.set_mounts(Some(mounts));
    }
    if let Some(mut linux) = guest.linux().clone() {
        if let Some(namespaces) = linux.namespaces().clone() {
            let namespaces = namespaces
                .into_iter()
                .map(|mut namespace| {
                    // A host namespace cannot be joined from the guest; the
                    // container gets a new one of the kind.
                    namespace.set_path(None);
                    namespace
                })
                .collect();
            linux.set_namespaces(Some(namespaces));
        }
        guest.set_linux(Some(linux));
    }
    guest.set_hooks(None);
    guest
}

/// The agent's lean form of an OCI value (the same JSON): config.json is
/// read with oci-spec on the host, the agent links only what it uses.
pub fn to_wire<T: serde::Serialize, W: serde::de::DeserializeOwned>(
    value: &T,
) -> Result<W, BundleError> {
    serde_json::to_value(value)
        .and_then(serde_json::from_value)
        .map_err(BundleError::Wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: serde_json::Value) -> Spec {
        serde_json::from_value(value).expect("a spec")
    }

    #[test]
    fn host_binds_are_found_and_rewritten() {
        let dir = std::env::temp_dir().join(format!("runvm-bundle-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("rootfs")).expect("dirs");
        std::fs::write(dir.join("hosts"), "127.0.0.1 localhost\n").expect("file");
        let spec = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs", "readonly": true},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "hosts",
                 "options": ["rbind", "ro"]},
                {"destination": "/data", "source": dir.join("rootfs"), "options": ["bind"]}
            ],
            "hooks": {"poststop": [{"path": "/bin/true"}]},
            "linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"},
                                     {"type": "pid"}]}
        }));
        let binds = host_binds(&spec, &dir).expect("binds");
        let seen: Vec<_> = binds
            .iter()
            .map(|b| (b.index, b.source.path(), b.source.is_dir(), b.flags))
            .collect();
        let flags = |readonly, recursive| BindFlags {
            readonly,
            recursive,
        };
        assert_eq!(
            seen,
            [
                (1, dir.join("hosts").as_path(), false, flags(true, true)),
                (2, dir.join("rootfs").as_path(), true, flags(false, false)),
            ]
        );
        let guest = guest_spec(&spec, &binds, &["/g/0".into(), "/g/1".into()]);
        let value = serde_json::to_value(&guest).expect("json");
        assert_eq!(value["mounts"][0]["source"], "proc");
        assert_eq!(value["mounts"][1]["source"], "/g/0");
        assert_eq!(value["mounts"][2]["source"], "/g/1");
        assert!(value["linux"]["namespaces"][0].get("path").is_none());
        assert!(value.get("hooks").is_none());

        let missing = spec_with_bind("/nonexistent/runvm-test");
        let err = host_binds(&missing, &dir).expect_err("a missing source");
        assert!(err.to_string().contains("/nonexistent/runvm-test"), "{err}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn block_io_devices_must_exist_on_the_host() {
        let dir = std::env::temp_dir().join(format!("runvm-devblock-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("8:0")).unwrap();
        let with = |block_io: serde_json::Value| {
            spec(serde_json::json!({
                "ociVersion": "1.0.2",
                "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["true"]},
                "linux": {"resources": {"blockIO": block_io}}
            }))
        };
        let ok = with(serde_json::json!({
            "weight": 500,
            "weightDevice": [{"major": 8, "minor": 0, "weight": 100}],
            "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1}]
        }));
        assert!(check_block_devices(&ok, &dir).is_ok());
        let missing = with(serde_json::json!({
            "throttleWriteIOPSDevice": [{"major": 8, "minor": 16, "rate": 1}]
        }));
        let err = check_block_devices(&missing, &dir).unwrap_err().to_string();
        assert!(err.contains("8:16"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn spec_with_bind(source: &str) -> Spec {
        spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "mounts": [{"destination": "/x", "type": "bind", "source": source}]
        }))
    }
}
