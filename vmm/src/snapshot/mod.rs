//! Snapshot and restore: a running VM saved to a directory, and a new VMM
//! process that resumes it, for warm starts from a VM template.
//!
//! **Taking one.** `runvm-vmm --snapshot-to DIR ...` creates (truncating)
//! `DIR/state` and `DIR/memory` before the VM is built (and before any
//! jail, so DIR need not be inside it). On SIGUSR1 the VMM pauses the VM,
//! writes the snapshot and exits 0 with "the VM was saved to DIR" on
//! stderr; the VM does not run on. A snapshot that cannot be taken ends
//! the VMM with status 1 and the reason, the files left incomplete (an
//! empty state file reads as "never completed"). Take it at a quiet point:
//! the runtime's template is the agent's ready point, before any host
//! connection. Pausing: every vCPU is kicked out of KVM_RUN and finishes
//! its pending I/O exit (`immediate_exit`); every device thread is stopped
//! and hands its queues back.
//!
//! **Restoring.** `runvm-vmm --restore DIR [--root-disk IMG]
//! [--vsock-socket PATH --vsock-cid N] [--fs tag=T,socket=S ...]
//! [--serial ...] [--jail ...]` takes the memory size and vCPU count from
//! the snapshot and the devices' host ends from the command line: the root
//! disk must be an image of the recorded size, a vsock device needs its
//! (new) socket and CID, and each virtio-fs device its (new) backend. The
//! memory file is mapped MAP_PRIVATE, so the VMs restored from one
//! snapshot share its pages until they write them; the snapshot's files
//! must therefore never be changed in place (write a new directory and
//! rename it). The restored vsock device sends the guest a transport reset
//! event, so the guest driver reads its new CID and drops whatever it had
//! connected.
//!
//! **Format** ([`format`]): `state` is a checked header (magic, version,
//! lengths, CRC-32s of the state and of the memory file) and the machine
//! state ([`state`]) as JSON: vCPU registers, sregs, FPU/xsave, XCRs,
//! debug registers, MSRs (every one KVM lists, kvmclock's included), local
//! APIC, vCPU events and MP state; the PICs, I/O APIC, PIT and kvmclock;
//! the serial port; each virtio-mmio transport's registers and queues. On
//! restore every length and count is bounded, the checksums are verified
//! (the memory's too, before the guest runs), and each device's recorded
//! state must fit the device being built; KVM checks its own structures.
//!
//! **Clients after a restore.** Host clients of the vsock socket wait in
//! its backlog until the guest has handled the transport reset: a guest
//! that still has the template's CID would answer with it, and be ignored.
//! For the same reason a connection the guest was opening at the moment
//! of the snapshot times out in the restored VM (the agent's readiness
//! connection, if the snapshot is taken before the host has read it):
//! take the snapshot once the host has read the ready line to its end.
//!
//! **On this emulating host (kvm_pvm)** every call above works as on
//! hardware KVM: KVM_GET/SET_XSAVE and XCRS are offered, the MSRs read
//! (40, kvmclock's among them) are all accepted back, and
//! memory mapped privately from a file runs the guest. A restore to
//! agent-ready takes 0.2–0.4 s against 13–14 s for a cold boot.
//!
//! **virtio-fs in templates.** virtio-mmio has no hotplug, so a template
//! whose restored VMs get a share is booted with the device present but no
//! backend: `--fs tag=T,pending` (only with `--snapshot-to`; see
//! [`crate::devices::virtio::fs::pending`]). It offers a fixed feature set
//! (VERSION_1, INDIRECT_DESC, EVENT_IDX: what virtiofsd 1.14 offers of what
//! the device passes on), serves the tag and queue count, accepts the
//! driver's queue set-up and DRIVER_OK, and processes nothing; the snapshot
//! records it by tag with the driver's acked features and its queues. The
//! restore's `--fs` devices must be the recorded ones (the same tags, each
//! with `socket=`; any order); each connects to its backend, which must
//! offer every acked feature and have the recorded queue sizes, and is
//! started on the recorded rings (SET_VRING_BASE from the recorded next
//! available index, each kick fd signalled so a request queued before the
//! snapshot is found). The backend maps guest RAM, which a private mapping
//! of the memory file would hide from it: a VM restored with virtio-fs
//! gets a memfd holding a copy of the memory file's data (holes skipped,
//! ~0.3 s to agent-ready for 128 MiB here) instead of sharing its pages.
//!
//! **Network cards in templates.** Likewise a template's card is booted
//! without a tap: `--net pending[,mac=M]` (only with `--snapshot-to`; see
//! [`crate::devices::virtio::net::pending`]). It offers what a card with
//! the same options and a tap would, and moves no frame; the snapshot
//! records it with its queues. The restore gives one `--net fd=N` (or
//! `tap=NAME`) per recorded card, in order, whose options must offer
//! every feature the driver acked (offloads on if they were); the card
//! starts on the recorded rings. The guest still has the MAC it read in
//! the template: the runtime has the agent set the card's own.
//!
//! **Devices that cannot be saved**: a virtio-fs device served by a
//! backend (its queues and FUSE state live in virtiofsd: a restored VM
//! with a share cannot be saved again) and a network card with a tap (a
//! host tap, and frames in flight) make the snapshot fail by name.

pub mod cpu_state;
pub mod format;
pub mod memory_file;
mod restore;
mod save;
pub mod state;
pub mod vm_state;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

pub(crate) use restore::restore_vm;
pub(crate) use save::Saver;

use crate::error::Error;
use format::{decode_state_file, HEADER_LEN, MAX_STATE_BYTES};
use state::MachineState;

pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";

/// Where a snapshot will be written, opened before the VM is built.
pub struct SnapshotOutput {
    pub dir: PathBuf,
    pub state: File,
    pub memory: File,
}

impl SnapshotOutput {
    pub fn create(dir: &Path) -> Result<SnapshotOutput, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let create = |name: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.join(name))
                .map_err(|e| Error::Snapshot {
                    reason: format!("cannot create {}: {e}", dir.join(name).display()),
                })
        };
        Ok(SnapshotOutput {
            dir: dir.to_path_buf(),
            state: create(STATE_FILE)?,
            memory: create(MEMORY_FILE)?,
        })
    }
}

/// A snapshot read from its directory: the state checked, the memory
/// file open and of the recorded length (its checksum is verified once
/// it is mapped, see [`restore_vm`]).
pub struct LoadedSnapshot {
    pub dir: PathBuf,
    pub state: MachineState,
    pub memory: File,
    pub memory_crc: u32,
}

impl LoadedSnapshot {
    pub fn open(dir: &Path) -> Result<LoadedSnapshot, Error> {
        let refused = |reason: String| Error::Snapshot {
            reason: format!("{} cannot be restored: {reason}", dir.display()),
        };
        let state_path = dir.join(STATE_FILE);
        let file = File::open(&state_path)
            .map_err(|e| refused(format!("cannot open {}: {e}", state_path.display())))?;
        // Bounded read: never more than a state file can hold.
        let limit = HEADER_LEN as u64 + MAX_STATE_BYTES + 1;
        let mut bytes = Vec::new();
        file.take(limit)
            .read_to_end(&mut bytes)
            .map_err(|e| refused(format!("cannot read {}: {e}", state_path.display())))?;
        let (header, json) = decode_state_file(&bytes).map_err(refused)?;
        let state: MachineState = serde_json::from_slice(json)
            .map_err(|e| refused(format!("the state does not parse: {e}")))?;
        state.check().map_err(refused)?;
        let expected = state.memory_mib << 20;
        if header.memory_len != expected {
            return Err(refused(format!(
                "the header records {} bytes of memory for a {} MiB guest",
                header.memory_len, state.memory_mib
            )));
        }
        let memory_path = dir.join(MEMORY_FILE);
        let memory = File::open(&memory_path)
            .map_err(|e| refused(format!("cannot open {}: {e}", memory_path.display())))?;
        let actual = memory
            .metadata()
            .map_err(|e| refused(format!("{}: {e}", memory_path.display())))?
            .len();
        if actual != expected {
            return Err(refused(format!(
                "{} holds {actual} bytes where {expected} were saved",
                memory_path.display()
            )));
        }
        Ok(LoadedSnapshot {
            dir: dir.to_path_buf(),
            state,
            memory,
            memory_crc: header.memory_crc,
        })
    }
}
