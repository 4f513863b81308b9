//! `runvm-vmm`: boots one microVM and runs it until it ends.
//!
//! Exit status: 0 when the guest powers off; 1 for a VMM error; 2 for bad
//! usage; 3 when the guest resets (reboot or kernel panic); 4 on a triple
//! fault; 5 when KVM cannot run the guest; 6 when a device backend (the
//! virtiofsd behind `--fs`) went away or failed while the VM ran; 7 when
//! a thread made a system call its seccomp filter forbids (stderr names
//! it); 128+N when stopped by signal N. With `--jail` the process started
//! is the jail's supervisor, which ends the way the jailed VMM ended: the
//! same statuses (see `runvm_vmm::jail`).
//!
//! Snapshots (see `runvm_vmm::snapshot`): with `--snapshot-to DIR`,
//! SIGUSR1 saves the VM to DIR and the VMM exits 0; `--restore DIR` starts
//! the saved VM again in this process, with new host ends for its devices.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use runvm_vmm::devices::virtio::net::NetConfig;
use runvm_vmm::host_profile::HostProfileChoice;
use runvm_vmm::jail;
use runvm_vmm::{
    guest_cmdline, run_vm, BootProtocol, FsConfig, SerialOutput, VmConfig, VmExit, VsockConfig,
};

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0      the guest powered off
  1      VMM error (bad input, KVM failure, a --fs backend that cannot be reached)
  2      bad usage
  3      the guest reset (reboot, or kernel panic)
  4      the guest triple-faulted
  5      KVM could not run the guest
  6      a device backend went away or failed while the VM ran (virtiofsd behind --fs)
  7      a VMM thread made a system call its seccomp filter forbids; the last line
         on stderr is \"runvm-vmm: killed by seccomp: syscall N (NAME) in the KIND thread\"
  128+N  stopped by signal N";

#[derive(Parser, Debug)]
#[command(
    name = "runvm-vmm",
    version,
    about = "Boot a runvm microVM",
    after_help = EXIT_STATUS_HELP
)]
struct Args {
    /// Uncompressed ELF kernel (vmlinux).
    #[arg(long, required_unless_present = "restore")]
    kernel: Option<PathBuf>,
    /// Initramfs (cpio newc, compressed or not).
    #[arg(long, conflicts_with = "restore")]
    initrd: Option<PathBuf>,
    /// Root filesystem image (ext4), given to the guest as a read-only
    /// virtio-blk disk /dev/vda and mounted as its root; instead of
    /// --initrd. The image holds the guest's init as /init.
    #[arg(long, value_name = "PATH", conflicts_with = "initrd")]
    root_disk: Option<PathBuf>,
    /// The guest's init as a static executable (runvm's agent), instead
    /// of --initrd or --root-disk: placed in guest memory that the memory
    /// map leaves out, and mapped from there by a built-in loader that the
    /// guest boots as /init; the guest kernel reads no page of it.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["restore", "initrd", "root_disk"])]
    init_program: Option<PathBuf>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Extra kernel command-line parameter (repeatable).
    #[arg(long = "cmdline", value_name = "PARAM")]
    cmdline: Vec<String>,
    /// Argument for the guest's init, e.g. --init-arg=--poweroff (repeatable).
    #[arg(long = "init-arg", value_name = "ARG", allow_hyphen_values = true)]
    init_args: Vec<String>,
    /// Where the serial console goes: stdout, none, or file:PATH.
    #[arg(long, default_value = "stdout", value_parser = parse_serial)]
    serial: SerialOutput,
    /// Give the guest a virtio-vsock device whose host side is this Unix
    /// socket (hybrid vsock: `CONNECT <port>` to reach a guest port; guest
    /// connections to port P go to PATH_P).
    #[arg(long, value_name = "PATH")]
    vsock_socket: Option<PathBuf>,
    /// The guest's vsock context id.
    #[arg(long, default_value_t = 3, requires = "vsock_socket")]
    vsock_cid: u64,
    /// Give the guest a virtio-fs device served by the vhost-user backend
    /// (virtiofsd --socket-path=PATH ...) listening at PATH; the guest
    /// mounts it with `mount -t virtiofs TAG DIR`. TAG is 1 to 36 bytes;
    /// queue-size (default 1024) a power of two from 16 to 32768. Values
    /// cannot contain commas. Repeatable, one backend per tag. `pending`
    /// instead of socket= (only with --snapshot-to): a template's device
    /// with no backend yet, which the driver sets up and which serves
    /// nothing; each VM restored from the template binds it with
    /// --fs tag=TAG,socket=PATH.
    #[arg(
        long = "fs",
        value_name = "tag=TAG,socket=PATH|pending[,queue-size=N]",
        value_parser = parse_fs
    )]
    fs: Vec<FsConfig>,
    /// Give the guest a virtio-net interface backed by a tap: an inherited
    /// descriptor (fd=N, opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR) or a
    /// tap created or attached to by name in the VMM's network namespace
    /// before any jail (tap=NAME). mac and mtu are what the guest is told;
    /// offload (default on) passes checksum and TSO offloads through.
    /// `pending` (only with --snapshot-to): a VM template's card, with no
    /// tap; a VM restored from the template gets one --net fd=N|tap=NAME
    /// per card, in order. Repeatable: eth0, eth1... in order.
    #[arg(
        long = "net",
        value_name = "fd=N|tap=NAME|pending[,mac=MAC][,mtu=N][,offload=on|off]",
        value_parser = parse_net
    )]
    net: Vec<NetConfig>,
    /// Host compatibility profile for the guest command line.
    #[arg(long, value_enum, default_value_t = ProfileArg::Auto)]
    host_profile: ProfileArg,
    /// How to enter the kernel.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Auto)]
    boot_protocol: ProtocolArg,
    /// Confine each VMM thread to the system calls it needs (seccomp);
    /// `off` only for debugging.
    #[arg(
        long,
        value_name = "on|off",
        default_value = "on",
        value_parser = clap::builder::BoolishValueParser::new(),
        action = clap::ArgAction::Set
    )]
    seccomp: bool,
    /// Run jailed (needs root): in new namespaces, with DIR as the root,
    /// as an unprivileged id without capabilities. The sockets
    /// (--vsock-socket and its PATH_<port>, --fs socket=) must be in DIR.
    #[arg(long, value_name = "DIR")]
    jail: Option<PathBuf>,
    /// Create DIR/state and DIR/memory now; on SIGUSR1, pause the VM,
    /// save it there and exit 0. Fails (status 1, files incomplete) with
    /// live vsock connections, --fs devices that have a backend (socket=),
    /// or --net devices.
    #[arg(long, value_name = "DIR")]
    snapshot_to: Option<PathBuf>,
    /// Resume the VM saved in DIR instead of booting a kernel: its memory
    /// and vCPUs are the snapshot's; --root-disk (the same image),
    /// --vsock-socket/--vsock-cid (new ones) and one --fs tag=TAG,socket=PATH
    /// per virtio-fs device of the template (its tags, new backends) must
    /// match its devices.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["kernel", "memory", "vcpus", "cmdline", "init_args", "boot_protocol", "print_cmdline"]
    )]
    restore: Option<PathBuf>,
    /// Print the guest kernel command line this VM would get, and exit.
    #[arg(long)]
    print_cmdline: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProfileArg {
    /// Detect whether this host's KVM emulates guest-kernel code.
    Auto,
    /// Force the profile for a KVM that emulates guest-kernel code.
    Emulated,
    /// Force hardware KVM: the guest keeps every CPU feature.
    Hardware,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ProtocolArg {
    /// PVH when the kernel has a PVH note, else linux64.
    Auto,
    Pvh,
    Linux64,
}

fn parse_serial(value: &str) -> Result<SerialOutput, String> {
    match value {
        "stdout" => Ok(SerialOutput::Stdout),
        "none" => Ok(SerialOutput::None),
        _ => match value.strip_prefix("file:") {
            Some(path) if !path.is_empty() => Ok(SerialOutput::File(path.into())),
            _ => Err(format!("{value:?} is not one of stdout, none, file:PATH")),
        },
    }
}

fn parse_fs(value: &str) -> Result<FsConfig, String> {
    FsConfig::parse(value).map_err(|e| e.to_string())
}

fn parse_net(value: &str) -> Result<NetConfig, String> {
    NetConfig::parse(value).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut config = VmConfig {
        kernel: args.kernel.unwrap_or_default(),
        initrd: args.initrd,
        root_disk: args.root_disk,
        init_program: args.init_program,
        memory_mib: args.memory,
        vcpus: args.vcpus,
        extra_cmdline: args.cmdline,
        init_args: args.init_args,
        serial: args.serial,
        vsock: args.vsock_socket.map(|socket| VsockConfig {
            guest_cid: args.vsock_cid,
            socket,
        }),
        fs: args.fs,
        net: args.net,
        host_profile: match args.host_profile {
            ProfileArg::Auto => HostProfileChoice::Auto,
            ProfileArg::Emulated => HostProfileChoice::Emulated,
            ProfileArg::Hardware => HostProfileChoice::Hardware,
        },
        boot_protocol: match args.boot_protocol {
            ProtocolArg::Auto => BootProtocol::Auto,
            ProtocolArg::Pvh => BootProtocol::Pvh,
            ProtocolArg::Linux64 => BootProtocol::Linux64,
        },
        snapshot_to: args.snapshot_to,
        restore_from: args.restore,
    };
    if let Some(dir) = &config.restore_from {
        // The jail's limits are sized from the VM: take it from the snapshot.
        match runvm_vmm::snapshot::LoadedSnapshot::open(dir) {
            Ok(snapshot) => {
                config.memory_mib = snapshot.state.memory_mib;
                config.vcpus = snapshot.state.vcpu_count();
            }
            Err(error) => {
                eprintln!("runvm-vmm: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    if args.print_cmdline {
        return match guest_cmdline(&config) {
            Ok(line) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("runvm-vmm: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if args.seccomp {
        if let Err(error) = runvm_vmm::seccomp::enable() {
            eprintln!("runvm-vmm: {error}");
            return ExitCode::FAILURE;
        }
    }
    let outcome = match &args.jail {
        Some(dir) => jail::run_jailed(dir, &config),
        None => run_vm(&config),
    };
    match outcome {
        Ok(VmExit::PowerOff) => ExitCode::SUCCESS,
        Ok(exit) => {
            eprintln!("runvm-vmm: {}", exit.describe());
            ExitCode::from(exit.exit_code())
        }
        Err(error) => {
            eprintln!("runvm-vmm: {error}");
            ExitCode::FAILURE
        }
    }
}
