//! Gathering a paused VM's state and writing the snapshot.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::VmFd;

use super::cpu_state::save_vcpu;
use super::format::encode_state_file;
use super::memory_file::write_memory;
use super::state::{DeviceState, MachineState};
use super::vm_state::save_vm;
use super::SnapshotOutput;
use crate::devices::Serial;
use crate::error::Error;
use crate::machine::VirtioSlot;
use crate::memory::GuestMemory;
use crate::vcpu::Vcpu;

/// What a snapshot of a running VM is taken from, besides its vCPUs.
pub(crate) struct Saver {
    pub mem: GuestMemory,
    pub serial: Arc<Mutex<Serial>>,
    pub devices: Vec<VirtioSlot>,
    /// The MSRs to save (KVM_GET_MSR_INDEX_LIST), read before seccomp.
    pub msr_indices: Vec<u32>,
    pub hidden_kvm_features: u32,
    pub memory_mib: u64,
    pub output: SnapshotOutput,
}

fn failed(reason: impl Into<String>) -> Error {
    Error::Snapshot {
        reason: reason.into(),
    }
}

impl Saver {
    /// Waits up to `timeout` for every device to be quiescent, the VM
    /// still running: e.g. for the guest to finish closing a vsock
    /// connection. Whether they all are.
    pub fn wait_for_quiet_devices(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let quiet = self.devices.iter().all(|slot| {
                slot.transport
                    .lock()
                    .map(|transport| transport.is_quiescent())
                    .unwrap_or(true)
            });
            if quiet || Instant::now() >= deadline {
                return quiet;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Saves the VM whose vCPUs (all of them, in id order) are stopped.
    /// Its devices are stopped here, and stay so. Returns the directory.
    pub fn save(self, vm: &VmFd, vcpus: &[Vcpu]) -> Result<PathBuf, Error> {
        // Refused before anything is stopped.
        if let Some(Err(what)) = self
            .devices
            .iter()
            .map(|slot| &slot.saved_as)
            .find(|s| s.is_err())
        {
            return Err(failed(format!(
                "the VM has a {what}, which cannot be saved in a snapshot"
            )));
        }
        let mut devices = Vec::with_capacity(self.devices.len());
        for slot in &self.devices {
            let Ok(kind) = slot.saved_as.clone() else {
                continue;
            };
            let mut transport = slot
                .transport
                .lock()
                .map_err(|_| failed("a device's lock is poisoned"))?;
            let transport = transport
                .save()
                .map_err(|reason| failed(format!("{kind:?}: {reason}")))?;
            devices.push(DeviceState { kind, transport });
        }
        let vcpu_states = vcpus
            .iter()
            .map(|vcpu| save_vcpu(&vcpu.fd, &self.msr_indices))
            .collect::<Result<Vec<_>, _>>()?;
        let serial = self
            .serial
            .lock()
            .map_err(|_| failed("the serial port's lock is poisoned"))?
            .save();
        let state = MachineState {
            memory_mib: self.memory_mib,
            hidden_kvm_features: self.hidden_kvm_features,
            vm: save_vm(vm)?,
            vcpus: vcpu_states,
            serial,
            devices,
        };
        let json = serde_json::to_vec(&state)
            .map_err(|e| failed(format!("cannot encode the state: {e}")))?;
        // The memory first: a state file is only written for a whole
        // memory file, so an interrupted save is never restored.
        let (memory_len, memory_crc) = write_memory(&self.mem, &self.output.memory)
            .map_err(|reason| failed(format!("{}: {reason}", self.output.dir.display())))?;
        let file = encode_state_file(&json, memory_len, memory_crc);
        let state = &self.output.state;
        let io = |e: std::io::Error| {
            failed(format!(
                "cannot write the state file in {}: {e}",
                self.output.dir.display()
            ))
        };
        state.set_len(0).map_err(io)?;
        state.write_all_at(&file, 0).map_err(io)?;
        state.sync_all().map_err(io)?;
        Ok(self.output.dir)
    }
}
