//! Every way building or running a VM can fail, each with a message that
//! names the problem and, where there is one, the file or value at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "guest memory of {requested_mib} MiB is too small: at least {minimum_mib} MiB is needed"
    )]
    MemoryTooSmall {
        requested_mib: u64,
        minimum_mib: u64,
    },
    #[error(
        "guest memory of {requested_mib} MiB is too large: at most {maximum_mib} MiB is allowed"
    )]
    MemoryTooLarge {
        requested_mib: u64,
        maximum_mib: u64,
    },
    #[error("invalid vCPU count {requested}: it must be between 1 and {maximum}")]
    InvalidVcpuCount { requested: u8, maximum: u8 },
    #[error("invalid kernel command line argument {0:?}: it must be non-empty, without spaces, and not \"--\"")]
    InvalidCmdlineArgument(String),
    #[error("invalid guest CID {0}: it must be at least 3 and below 4294967295")]
    InvalidGuestCid(u64),
    #[error("invalid virtio-fs device {spec:?}: {reason}")]
    InvalidFsSpec { spec: String, reason: String },
    #[error("invalid virtio-fs tag {0:?}: it must be 1 to 36 bytes of UTF-8, without NUL")]
    InvalidFsTag(String),
    #[error("invalid virtio-fs queue size {0}: it must be a power of two from 16 to 32768")]
    InvalidFsQueueSize(u64),
    #[error("virtio-fs tag {0:?} is used twice: each device needs its own tag")]
    DuplicateFsTag(String),
    #[error("invalid network interface {spec:?}: {reason}")]
    InvalidNetSpec { spec: String, reason: String },
    #[error("network interface {spec}: {reason}")]
    NetBackend { spec: String, reason: String },
    #[error("virtio-fs backend socket {socket}: {reason}")]
    FsBackend { socket: PathBuf, reason: String },
    #[error("cannot create the vsock socket {path}: {source}")]
    VsockSocket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the {device} device: {reason}")]
    Device {
        device: &'static str,
        reason: String,
    },
    #[error("kernel command line is too long or malformed: {0}")]
    Cmdline(String),

    #[error("cannot open /dev/kvm: {0} (is KVM available and are you allowed to use it?)")]
    KvmUnavailable(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (12 is required)")]
    KvmApiVersion(i32),
    #[error("KVM is missing a required capability: {0}")]
    KvmCapability(&'static str),
    #[error("KVM call {call} failed: {source}")]
    Kvm {
        call: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },

    #[error("snapshot: {reason}")]
    Snapshot { reason: String },

    #[error("cannot allocate {mib} MiB of guest memory: {reason}")]
    GuestMemory { mib: u64, reason: String },
    #[error("cannot write {what} into guest memory at {address:#x}: {reason}")]
    GuestWrite {
        what: &'static str,
        address: u64,
        reason: String,
    },

    #[error("cannot open kernel {path}: {source}")]
    KernelOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load kernel {path}: {reason} (runvm boots an uncompressed ELF vmlinux)")]
    KernelLoad { path: PathBuf, reason: String },
    #[error("kernel {path} has no PVH entry point (build it with CONFIG_PVH=y or use the linux64 boot protocol)")]
    NoPvhEntry { path: PathBuf },
    #[error("cannot read initramfs {path}: {source}")]
    InitrdOpen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot use init program {path}: {reason}")]
    InitProgram { path: PathBuf, reason: String },
    #[error("cannot use root disk {path}: {reason}")]
    RootDisk { path: PathBuf, reason: String },
    #[error(
        "--initrd, --root-disk and --init-program cannot be used together: the guest's root is one of them"
    )]
    InitrdAndRootDisk,
    #[error("guest memory of {memory_mib} MiB is too small for the kernel ({kernel_mib} MiB) and initramfs ({initrd_mib} MiB) it must hold")]
    ImagesDoNotFit {
        memory_mib: u64,
        kernel_mib: u64,
        initrd_mib: u64,
    },

    #[error("cannot open serial output {path}: {source}")]
    SerialOutput {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    #[error("the VMM's jail: cannot {step}: {reason}")]
    Jail { step: &'static str, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn kvm(call: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { call, source }
    }

    /// A failed step of entering the jail.
    pub(crate) fn jail<E: std::fmt::Display>(step: &'static str) -> impl FnOnce(E) -> Error {
        move |e| Error::Jail {
            step,
            reason: e.to_string(),
        }
    }

    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}
