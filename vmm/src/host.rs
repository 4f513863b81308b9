//! What a VM takes from the host by path: opened in one place, before the
//! VM is built, so that a jailed VMM (see [`crate::jail`]) holds them as
//! descriptors and needs none of their paths inside its jail: its network
//! namespace is empty, so the taps are opened (or taken over from
//! inherited descriptors) here too.
//!
//! Not here: the Unix sockets of the vsock and virtio-fs devices, which
//! the devices bind or connect to (and the vsock device keeps connecting
//! to) while the VM runs; a jail gives them their own paths.

use std::io::Write;

use kvm_ioctls::{Cap, Kvm};

use crate::boot::BootFiles;
use crate::config::{SerialOutput, VmConfig};
use crate::devices::virtio::block::DiskImage;
use crate::devices::virtio::net::{NetConfig, Tap, TapSource};
use crate::devices::CappedLog;
use crate::error::Error;
use crate::host_profile::HostProfile;
use crate::snapshot::{LoadedSnapshot, SnapshotOutput};

/// The host resources of one VM.
pub struct HostResources {
    pub(crate) kvm: Kvm,
    /// None when the VM is restored from a snapshot.
    pub(crate) boot: Option<BootFiles>,
    pub(crate) root_disk: Option<DiskImage>,
    pub(crate) serial: Box<dyn Write + Send>,
    pub(crate) profile: HostProfile,
    /// One per `config.net` entry, in order (none for a pending card).
    pub(crate) taps: Vec<Option<Tap>>,
    /// Where the VM is saved on the snapshot signal.
    pub(crate) snapshot_to: Option<SnapshotOutput>,
    /// The snapshot the VM is restored from, checked.
    pub(crate) restore_from: Option<LoadedSnapshot>,
}

impl HostResources {
    /// Opens what `config` names. The checks that need no file come first.
    pub fn open(config: &VmConfig) -> Result<HostResources, Error> {
        config.validate()?;
        // The images first, so a bad path fails fast.
        let root_disk = config
            .root_disk
            .as_deref()
            .map(DiskImage::open)
            .transpose()?;
        let restore_from = config
            .restore_from
            .as_deref()
            .map(LoadedSnapshot::open)
            .transpose()?;
        let boot = match restore_from {
            Some(_) => None,
            None => Some(BootFiles::open(config)?),
        };
        let snapshot_to = config
            .snapshot_to
            .as_deref()
            .map(SnapshotOutput::create)
            .transpose()?;
        let taps = config.net.iter().map(open_tap).collect::<Result<_, _>>()?;
        let serial = open_serial(&config.serial)?;
        // Reads /sys and /proc/cpuinfo.
        let profile = HostProfile::resolve(config.host_profile);
        let kvm = open_kvm()?;
        Ok(HostResources {
            kvm,
            boot,
            root_disk,
            serial,
            profile,
            taps,
            snapshot_to,
            restore_from,
        })
    }
}

/// The tap behind `net`; none for a template's pending card.
fn open_tap(net: &NetConfig) -> Result<Option<Tap>, Error> {
    let (spec, opened) = match &net.tap {
        TapSource::Pending => return Ok(None),
        TapSource::Name(name) => (format!("tap={name}"), Tap::open(name)),
        // SAFETY: an inherited descriptor that nothing in this process
        // owns: `VmConfig::validate` refused the standard streams and
        // the same descriptor twice, and this runs once per VM.
        TapSource::Fd(fd) => (format!("fd={fd}"), unsafe { Tap::from_raw_fd(*fd) }),
    };
    opened.map(Some).map_err(|e| Error::NetBackend {
        spec,
        reason: e.to_string(),
    })
}

fn open_serial(serial: &SerialOutput) -> Result<Box<dyn Write + Send>, Error> {
    Ok(match serial {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::File(path) => {
            // Bounded: the guest must not fill the host's disk. Appended
            // to: a VM restored from a template continues the console the
            // runtime copied from the template.
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path);
            Box::new(CappedLog::new(file.map_err(|source| {
                Error::SerialOutput {
                    path: path.clone(),
                    source,
                }
            })?))
        }
        SerialOutput::None => Box::new(std::io::sink()),
    })
}

fn open_kvm() -> Result<Kvm, Error> {
    let kvm = Kvm::new().map_err(Error::KvmUnavailable)?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(Error::KvmApiVersion(version));
    }
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(Error::KvmCapability(name));
        }
    }
    Ok(kvm)
}
