//! What the caller asks of a VM, and the checks that can be made before
//! anything is created.

use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::host_profile::HostProfileChoice;

/// Below this the guest kernel cannot even unpack its initramfs; refuse
/// early with a clear message instead of letting the guest panic.
pub const MIN_MEMORY_MIB: u64 = 64;
/// An upper bound that catches typos (`--memory 1280000`) before the host
/// is asked for the memory.
pub const MAX_MEMORY_MIB: u64 = 256 * 1024;
/// The MP table gives each vCPU an 8-bit APIC id; the guest kernel is built
/// with a small NR_CPUS. 32 is plenty for a pod and keeps both honest.
pub const MAX_VCPUS: u8 = 32;
/// The tag field of virtio-fs's configuration space.
pub const MAX_FS_TAG_BYTES: usize = 36;
/// Each virtio-fs queue's size unless the caller says otherwise: room for
/// many requests in flight, 28 KiB of rings per queue.
pub const DEFAULT_FS_QUEUE_SIZE: u16 = 1024;
/// A FUSE request takes several descriptors; fewer than this would starve.
pub const MIN_FS_QUEUE_SIZE: u16 = 16;
/// The largest split virtqueue (virtio 1.2, 2.7), also virtiofsd's limit.
pub const MAX_FS_QUEUE_SIZE: u16 = 32768;

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH when the vmlinux has a PVH note, else the 64-bit boot protocol.
    Auto,
    /// 32-bit protected-mode entry through the PVH ELF note.
    Pvh,
    /// The Linux 64-bit boot protocol: long mode, `boot_params` in RSI.
    Linux64,
}

/// Where the guest's serial console goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialOutput {
    Stdout,
    File(PathBuf),
    None,
}

/// A virtio-vsock device backed by host Unix sockets (hybrid vsock).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id: 3 or more, below u32::MAX (VMADDR_CID_ANY).
    pub guest_cid: u64,
    /// Host clients connect here; guest connections to port P go to
    /// `<socket>_P`.
    pub socket: PathBuf,
}

/// A virtio-fs device whose queues a vhost-user backend (virtiofsd) serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FsConfig {
    /// What the guest mounts: `mount -t virtiofs <tag> <dir>`.
    pub tag: String,
    /// Who serves the queues.
    pub backend: FsBackend,
    /// Size of each queue (power of two).
    pub queue_size: u16,
}

/// Who serves a virtio-fs device's queues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FsBackend {
    /// The backend's listening vhost-user socket.
    Socket(PathBuf),
    /// Nobody yet: a VM template's device, which the driver sets up but
    /// which serves nothing until the VMs restored from the template bind
    /// it to a backend (see [`crate::devices::virtio::fs::pending`]).
    Pending,
}

impl FsConfig {
    pub fn new(tag: impl Into<String>, socket: impl Into<PathBuf>) -> FsConfig {
        FsConfig {
            tag: tag.into(),
            backend: FsBackend::Socket(socket.into()),
            queue_size: DEFAULT_FS_QUEUE_SIZE,
        }
    }

    /// A template's device, whose backend comes when it is restored.
    pub fn pending(tag: impl Into<String>) -> FsConfig {
        FsConfig {
            tag: tag.into(),
            backend: FsBackend::Pending,
            queue_size: DEFAULT_FS_QUEUE_SIZE,
        }
    }

    /// The backend's socket, unless the backend is still to come.
    pub fn socket(&self) -> Option<&Path> {
        match &self.backend {
            FsBackend::Socket(socket) => Some(socket),
            FsBackend::Pending => None,
        }
    }

    /// Parses `tag=<tag>,socket=<path>[,queue-size=<n>]` or
    /// `tag=<tag>,pending[,queue-size=<n>]` (the `--fs` option) and
    /// validates the result. Values cannot contain commas.
    pub fn parse(spec: &str) -> Result<FsConfig, Error> {
        let invalid = |reason: String| Error::InvalidFsSpec {
            spec: spec.to_string(),
            reason,
        };
        let (mut tag, mut socket, mut queue_size, mut pending) = (None, None, None, false);
        for item in spec.split(',') {
            if item == "pending" {
                if std::mem::replace(&mut pending, true) {
                    return Err(invalid("pending is given twice".into()));
                }
                continue;
            }
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| invalid(format!("{item:?} is not key=value or pending")))?;
            let slot = match key {
                "tag" => &mut tag,
                "socket" => &mut socket,
                "queue-size" => &mut queue_size,
                _ => {
                    return Err(invalid(format!(
                        "unknown key {key:?} (expected tag, socket, queue-size, pending)"
                    )))
                }
            };
            if slot.replace(value).is_some() {
                return Err(invalid(format!("{key} is given twice")));
            }
        }
        let tag = tag.ok_or_else(|| invalid("tag=<tag> is missing".into()))?;
        let backend = match (socket, pending) {
            (Some(_), true) => {
                return Err(invalid(
                    "socket= and pending exclude each other: a device has a backend now, \
                     or (in a template) later"
                        .into(),
                ))
            }
            (None, true) => FsBackend::Pending,
            (socket, false) => FsBackend::Socket(
                socket
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| invalid("socket=<path> (or pending) is missing".into()))?
                    .into(),
            ),
        };
        let queue_size = match queue_size {
            None => DEFAULT_FS_QUEUE_SIZE,
            Some(text) => {
                let size: u64 = text
                    .parse()
                    .map_err(|_| invalid(format!("queue-size {text:?} is not a number")))?;
                u16::try_from(size).map_err(|_| Error::InvalidFsQueueSize(size))?
            }
        };
        let config = FsConfig {
            tag: tag.to_string(),
            backend,
            queue_size,
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), Error> {
        if !is_valid_fs_tag(&self.tag) {
            return Err(Error::InvalidFsTag(self.tag.clone()));
        }
        let size = self.queue_size;
        if !size.is_power_of_two() || !(MIN_FS_QUEUE_SIZE..=MAX_FS_QUEUE_SIZE).contains(&size) {
            return Err(Error::InvalidFsQueueSize(u64::from(size)));
        }
        if self.socket().is_some_and(|s| s.as_os_str().is_empty()) {
            return Err(Error::InvalidFsSpec {
                spec: format!("tag={}", self.tag),
                reason: "the socket path is empty".into(),
            });
        }
        Ok(())
    }
}

/// A virtio-fs tag the guest reads whole: 1 to [`MAX_FS_TAG_BYTES`]
/// bytes, no NUL (which would end it early in the guest's eyes).
pub fn is_valid_fs_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.len() <= MAX_FS_TAG_BYTES && !tag.contains('\0')
}

#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Uncompressed ELF `vmlinux`.
    pub kernel: PathBuf,
    /// Optional initramfs (cpio, compressed or not).
    pub initrd: Option<PathBuf>,
    /// Root file system image (ext4), given to the guest as the read-only
    /// virtio-blk disk /dev/vda and mounted as its root; instead of
    /// `initrd`.
    pub root_disk: Option<PathBuf>,
    /// The guest's init as a static executable (the agent), instead of
    /// `initrd` or `root_disk`: the VMM places it in guest memory that the
    /// memory map leaves out of RAM and boots runvm's loader as /init,
    /// which maps it from there (see [`crate::boot::loader_image`]).
    pub init_program: Option<PathBuf>,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// Appended to the kernel command line after runvm's own parameters.
    pub extra_cmdline: Vec<String>,
    /// Handed to the guest's init (after ` -- ` on the command line).
    pub init_args: Vec<String>,
    pub serial: SerialOutput,
    pub vsock: Option<VsockConfig>,
    /// virtio-fs devices, each with its own backend and a distinct tag.
    pub fs: Vec<FsConfig>,
    /// virtio-net devices, each backed by a tap: the guest's eth0, eth1...
    pub net: Vec<crate::devices::virtio::net::NetConfig>,
    pub host_profile: HostProfileChoice,
    pub boot_protocol: BootProtocol,
    /// Save the VM here on the snapshot signal (see [`crate::snapshot`]).
    pub snapshot_to: Option<PathBuf>,
    /// Restore the VM saved here instead of booting `kernel`; `memory_mib`
    /// and `vcpus` must be the snapshot's.
    pub restore_from: Option<PathBuf>,
}

impl VmConfig {
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            root_disk: None,
            init_program: None,
            memory_mib: 128,
            vcpus: 1,
            extra_cmdline: Vec::new(),
            init_args: Vec::new(),
            serial: SerialOutput::Stdout,
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
            host_profile: HostProfileChoice::Auto,
            boot_protocol: BootProtocol::Auto,
            snapshot_to: None,
            restore_from: None,
        }
    }

    /// Checks that need no file and no KVM.
    pub fn validate(&self) -> Result<(), Error> {
        let roots = [
            self.initrd.is_some(),
            self.root_disk.is_some(),
            self.init_program.is_some(),
        ];
        if roots.into_iter().filter(|&given| given).count() > 1 {
            return Err(Error::InitrdAndRootDisk);
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(Error::MemoryTooSmall {
                requested_mib: self.memory_mib,
                minimum_mib: MIN_MEMORY_MIB,
            });
        }
        if self.memory_mib > MAX_MEMORY_MIB {
            return Err(Error::MemoryTooLarge {
                requested_mib: self.memory_mib,
                maximum_mib: MAX_MEMORY_MIB,
            });
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(Error::InvalidVcpuCount {
                requested: self.vcpus,
                maximum: MAX_VCPUS,
            });
        }
        for arg in self.extra_cmdline.iter().chain(&self.init_args) {
            if arg.is_empty() || arg.chars().any(|c| c.is_whitespace() || c == '\0') {
                return Err(Error::InvalidCmdlineArgument(arg.clone()));
            }
        }
        if self.restore_from.is_some()
            && (self.initrd.is_some()
                || self.init_program.is_some()
                || !self.extra_cmdline.is_empty()
                || !self.init_args.is_empty())
        {
            return Err(Error::Snapshot {
                reason: "a restored VM has no initramfs, init program, command line or init arguments of its own"
                    .into(),
            });
        }
        if self.init_args.iter().any(|a| a == "--") {
            return Err(Error::InvalidCmdlineArgument("--".into()));
        }
        if let Some(vsock) = &self.vsock {
            if vsock.guest_cid < 3 || vsock.guest_cid >= u64::from(u32::MAX) {
                return Err(Error::InvalidGuestCid(vsock.guest_cid));
            }
        }
        for (index, fs) in self.fs.iter().enumerate() {
            fs.validate()?;
            if fs.backend == FsBackend::Pending
                && (self.snapshot_to.is_none() || self.restore_from.is_some())
            {
                return Err(Error::InvalidFsSpec {
                    spec: format!("tag={},pending", fs.tag),
                    reason: "a device without a backend is only for a VM template, booted \
                             with --snapshot-to; a restored VM binds it with \
                             --fs tag=TAG,socket=PATH"
                        .into(),
                });
            }
            // The guest refuses a second device with the same tag.
            if self.fs[..index].iter().any(|other| other.tag == fs.tag) {
                return Err(Error::DuplicateFsTag(fs.tag.clone()));
            }
        }
        let template = self.snapshot_to.is_some() && self.restore_from.is_none();
        if !template
            && self
                .net
                .iter()
                .any(|net| net.tap == crate::devices::virtio::net::TapSource::Pending)
        {
            return Err(Error::InvalidNetSpec {
                spec: "pending".into(),
                reason: "a card without a tap is only for a VM template, booted with \
                         --snapshot-to; a restored VM binds it with --net fd=N or tap=NAME"
                    .into(),
            });
        }
        crate::devices::virtio::net::spec::validate_all(&self.net)
    }

    /// Whether a device needs guest RAM shared with a backend process: a
    /// template's pending virtio-fs device has none.
    pub fn needs_shared_memory(&self) -> bool {
        self.fs.iter().any(|fs| fs.socket().is_some())
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert!(VmConfig::new("/vmlinux").validate().is_ok());
    }

    #[test]
    fn too_little_memory_is_refused_with_the_minimum() {
        let mut config = VmConfig::new("/vmlinux");
        config.memory_mib = 16;
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("16 MiB"), "{message}");
        assert!(message.contains("64 MiB"), "{message}");
    }

    #[test]
    fn vcpu_count_is_bounded() {
        let mut config = VmConfig::new("/vmlinux");
        config.vcpus = 0;
        assert!(config.validate().is_err());
        config.vcpus = MAX_VCPUS + 1;
        assert!(config.validate().is_err());
        config.vcpus = MAX_VCPUS;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn guest_cid_must_be_a_guest_address() {
        let mut config = VmConfig::new("/vmlinux");
        for (cid, valid) in [(2, false), (3, true), (u64::from(u32::MAX), false)] {
            config.vsock = Some(VsockConfig {
                guest_cid: cid,
                socket: "/run/v.sock".into(),
            });
            assert_eq!(config.validate().is_ok(), valid, "cid {cid}");
        }
    }

    #[test]
    fn fs_option_with_defaults() {
        let fs = FsConfig::parse("tag=share,socket=/run/fs.sock").unwrap();
        assert_eq!(fs, FsConfig::new("share", "/run/fs.sock"));
        assert_eq!(fs.queue_size, DEFAULT_FS_QUEUE_SIZE);
    }

    #[test]
    fn fs_option_in_any_order_with_a_queue_size() {
        let fs = FsConfig::parse("queue-size=256,socket=/tmp/a b.sock,tag=root fs").unwrap();
        assert_eq!(fs.tag, "root fs");
        assert_eq!(fs.socket(), Some(Path::new("/tmp/a b.sock")));
        assert_eq!(fs.queue_size, 256);
    }

    #[test]
    fn fs_option_syntax_errors_say_what_is_wrong() {
        for (spec, expected) in [
            ("", "not key=value"),
            ("tag=a", "socket=<path> (or pending) is missing"),
            ("socket=/s", "tag=<tag> is missing"),
            ("tag=a,socket=", "socket=<path> (or pending) is missing"),
            ("tag=a,socket=/s,pending", "exclude each other"),
            ("pending,tag=a,pending", "pending is given twice"),
            ("tag=a,pending=yes", "unknown key \"pending\""),
            ("tag=a,socket=/s,size=4", "unknown key \"size\""),
            ("tag=a,tag=b,socket=/s", "tag is given twice"),
            ("tag=a,socket=/s,queue-size=lots", "not a number"),
            ("tag=a,socket=/s,", "not key=value"),
        ] {
            let message = FsConfig::parse(spec).unwrap_err().to_string();
            assert!(message.contains(expected), "{spec:?}: {message}");
        }
    }

    #[test]
    fn fs_option_for_a_device_whose_backend_comes_at_restore() {
        let fs = FsConfig::parse("tag=share,pending").unwrap();
        assert_eq!(fs, FsConfig::pending("share"));
        assert_eq!(fs.socket(), None);
        let fs = FsConfig::parse("queue-size=256,pending,tag=share").unwrap();
        assert_eq!((fs.backend, fs.queue_size), (FsBackend::Pending, 256));
        assert!(FsConfig::parse("pending").is_err());
        assert!(FsConfig::parse(&format!("tag={},pending", "x".repeat(37))).is_err());
    }

    #[test]
    fn a_pending_network_card_is_only_for_a_template() {
        use crate::devices::virtio::net::NetConfig;
        let mut config = VmConfig::new("/vmlinux");
        config.net = vec![NetConfig::parse("pending,mac=02:00:00:00:00:01").unwrap()];
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("--snapshot-to"), "{message}");
        config.snapshot_to = Some("/templates/t".into());
        assert!(config.validate().is_ok());
        config.restore_from = Some("/templates/t".into());
        config.kernel = PathBuf::new();
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("fd=N"), "{message}");
    }

    #[test]
    fn a_pending_fs_device_is_only_for_a_template() {
        let mut config = VmConfig::new("/vmlinux");
        config.fs = vec![FsConfig::pending("share")];
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("--snapshot-to"), "{message}");
        assert!(message.contains("tag=share,pending"), "{message}");
        config.snapshot_to = Some("/templates/t".into());
        assert!(config.validate().is_ok());
        // Its guest RAM need not be shared: nobody maps it.
        assert!(!config.needs_shared_memory());
        config.fs.push(FsConfig::new("other", "/s"));
        assert!(config.needs_shared_memory());
        // A restored VM gives its devices their backends.
        config.fs.pop();
        config.restore_from = Some("/templates/t".into());
        config.kernel = PathBuf::new();
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("socket=PATH"), "{message}");
        config.fs = vec![FsConfig::new("share", "/s")];
        assert!(config.validate().is_ok());
        // A pending and a served device may not share a tag either.
        let mut template = VmConfig::new("/vmlinux");
        template.snapshot_to = Some("/templates/t".into());
        template.fs = vec![FsConfig::pending("a"), FsConfig::new("a", "/s")];
        assert!(matches!(template.validate(), Err(Error::DuplicateFsTag(_))));
    }

    #[test]
    fn fs_tag_is_1_to_36_bytes_without_nul() {
        let mut fs = FsConfig::new("", "/s");
        assert!(matches!(fs.validate(), Err(Error::InvalidFsTag(_))));
        fs.tag = "x".repeat(36);
        assert!(fs.validate().is_ok());
        fs.tag = "x".repeat(37);
        assert!(matches!(fs.validate(), Err(Error::InvalidFsTag(_))));
        // 36 bytes, 12 characters.
        fs.tag = "é".repeat(18);
        assert!(fs.validate().is_ok());
        fs.tag = "é".repeat(19);
        assert!(fs.validate().is_err());
        fs.tag = "a\0b".into();
        assert!(fs.validate().is_err());
        assert!(FsConfig::parse(&format!("tag={},socket=/s", "y".repeat(37))).is_err());
    }

    #[test]
    fn fs_queue_size_is_a_bounded_power_of_two() {
        for (size, valid) in [
            (0u64, false),
            (8, false),
            (16, true),
            (100, false),
            (1024, true),
            (32768, true),
            (65536, false),
            (1 << 40, false),
        ] {
            let result = FsConfig::parse(&format!("tag=a,socket=/s,queue-size={size}"));
            assert_eq!(result.is_ok(), valid, "{size}: {result:?}");
            if !valid {
                let message = result.unwrap_err().to_string();
                assert!(message.contains(&size.to_string()), "{message}");
                assert!(message.contains("power of two"), "{message}");
            }
        }
    }

    #[test]
    fn fs_tags_must_be_distinct() {
        let mut config = VmConfig::new("/vmlinux");
        config.fs = vec![FsConfig::new("a", "/s1"), FsConfig::new("b", "/s2")];
        assert!(config.validate().is_ok());
        assert!(config.needs_shared_memory());
        config.fs.push(FsConfig::new("a", "/s3"));
        assert!(matches!(config.validate(), Err(Error::DuplicateFsTag(_))));
        assert!(!VmConfig::new("/vmlinux").needs_shared_memory());
    }

    #[test]
    fn initrd_root_disk_and_init_program_are_exclusive() {
        let mut config = VmConfig::new("/vmlinux");
        config.root_disk = Some("/root.ext4".into());
        assert!(config.validate().is_ok());
        config.initrd = Some("/initramfs.cpio".into());
        let message = config.validate().unwrap_err().to_string();
        assert!(
            message.contains("--initrd, --root-disk and --init-program"),
            "{message}"
        );
        config.root_disk = None;
        assert!(config.validate().is_ok());
        config.init_program = Some("/runvm-agent".into());
        assert!(config.validate().is_err());
        config.initrd = None;
        assert!(config.validate().is_ok());
        config.restore_from = Some("/template".into());
        assert!(config.validate().is_err());
    }

    #[test]
    fn cmdline_arguments_cannot_smuggle_separators() {
        let mut config = VmConfig::new("/vmlinux");
        config.extra_cmdline = vec!["a b".into()];
        assert!(config.validate().is_err());
        config.extra_cmdline = vec![];
        config.init_args = vec!["--".into()];
        assert!(config.validate().is_err());
    }
}
