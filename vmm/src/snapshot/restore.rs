//! Building a VM from a snapshot: its memory mapped from the memory file,
//! its devices rebuilt around the new host ends, its vCPUs, interrupt
//! controllers and clock set as recorded.

use std::sync::Arc;

use kvm_ioctls::{Kvm, VmFd};

use super::cpu_state::restore_vcpu;
use super::memory_file::{checksum, copy_memory, map_memory};
use super::vm_state::restore_vm as restore_vm_state;
use super::LoadedSnapshot;
use crate::config::{FsConfig, VmConfig};
use crate::cpu;
use crate::devices::Serial;
use crate::error::Error;
use crate::machine::{
    build_mmio_bus, build_pio_bus, new_vcpu, register_guest_memory, BuiltVm, DeviceHosts,
};

/// Builds the VM `snapshot` recorded into `vm`, with the host ends of
/// `config` (root disk, vsock socket and CID, virtio-fs backends, serial
/// output). Everything the snapshot says is checked against what is being
/// built.
pub(crate) fn restore_vm(
    kvm: &Kvm,
    vm: &VmFd,
    config: &VmConfig,
    snapshot: LoadedSnapshot,
    hosts: DeviceHosts,
) -> Result<BuiltVm, Error> {
    let LoadedSnapshot {
        dir,
        state,
        memory,
        memory_crc,
    } = snapshot;
    let refused = |reason: String| Error::Snapshot {
        reason: format!("{} cannot be restored: {reason}", dir.display()),
    };
    if config.memory_mib != state.memory_mib || config.vcpus != state.vcpu_count() {
        return Err(refused(format!(
            "it holds a VM of {} MiB and {} vCPUs, not {} MiB and {}",
            state.memory_mib,
            state.vcpus.len(),
            config.memory_mib,
            config.vcpus
        )));
    }
    if config.net.len() != state.net_count() {
        return Err(refused(format!(
            "it has {} network cards, and {} --net were given: give each a tap, in order",
            state.net_count(),
            config.net.len()
        )));
    }
    let disk_sectors = hosts.root_disk.as_ref().map(|disk| disk.sectors());
    if disk_sectors != state.root_disk_sectors() {
        return Err(refused(match state.root_disk_sectors() {
            Some(sectors) => format!(
                "it needs a root disk of {sectors} sectors (--root-disk), not {disk_sectors:?}"
            ),
            None => "it has no root disk".into(),
        }));
    }
    if state.has_vsock() != config.vsock.is_some() {
        return Err(refused(if state.has_vsock() {
            "it has a vsock device: give it a socket and CID".into()
        } else {
            "it has no vsock device".into()
        }));
    }
    let fs = fs_in_slot_order(&config.fs, &state.fs_tags()).map_err(&refused)?;
    let config = &VmConfig {
        fs,
        ..config.clone()
    };

    // A backend maps guest RAM too: it gets a copy of its own.
    let (mem, crc) = if config.needs_shared_memory() {
        copy_memory(&memory, config.memory_bytes()).map_err(&refused)?
    } else {
        let mem = map_memory(&memory, config.memory_bytes()).map_err(&refused)?;
        let crc = checksum(&mem).map_err(&refused)?;
        (mem, crc)
    };
    if crc != memory_crc {
        return Err(refused(
            "the memory file is damaged (checksum mismatch)".into(),
        ));
    }
    register_guest_memory(vm, &mem, config.memory_mib)?;
    let (pio, serial) = build_pio_bus(vm, |irq| {
        Serial::restore(irq, hosts.serial, &state.serial).map_err(&refused)
    })?;
    let (mmio, slots) = build_mmio_bus(
        vm,
        &mem,
        config,
        hosts.root_disk,
        hosts.taps,
        hosts.failures,
        Some(&state.devices),
    )?;
    let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));

    let base_cpuid = cpu::guest_cpuid(kvm, state.hidden_kvm_features)?;
    let mut vcpus = Vec::with_capacity(state.vcpus.len());
    for (id, saved) in (0..config.vcpus).zip(&state.vcpus) {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        cpu::configure_vcpu(&fd, id, &base_cpuid)?;
        restore_vcpu(kvm, &fd, saved)?;
        vcpus.push(new_vcpu(id, fd, &pio, &mmio, &mem));
    }
    // kvmclock last, just before the guest runs again.
    restore_vm_state(vm, &state.vm)?;
    for slot in &slots {
        slot.transport
            .lock()
            .map_err(|_| refused("a device's lock is poisoned".into()))?
            .resume()
            .map_err(|reason| refused(format!("a device cannot resume: {reason}")))?;
    }
    Ok(BuiltVm {
        vcpus,
        mem,
        serial,
        slots,
        hidden_kvm_features: state.hidden_kvm_features,
    })
}

/// The `--fs` devices `given` to the restored VM, in the order of the
/// snapshot's virtio-fs devices (`recorded`, by tag in slot order): each
/// recorded device needs a backend, and there are no others.
fn fs_in_slot_order(given: &[FsConfig], recorded: &[&str]) -> Result<Vec<FsConfig>, String> {
    let names = |tags: &[&str]| {
        if tags.is_empty() {
            "none".to_string()
        } else {
            tags.iter()
                .map(|tag| format!("{tag:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    if let Some(extra) = given.iter().find(|fs| !recorded.contains(&fs.tag.as_str())) {
        return Err(format!(
            "it has no virtio-fs device tagged {:?} (its virtio-fs tags: {}); a restored VM \
             can only bind the devices its template was booted with",
            extra.tag,
            names(recorded)
        ));
    }
    recorded
        .iter()
        .map(|tag| {
            let fs = given.iter().find(|fs| fs.tag == *tag).ok_or_else(|| {
                format!(
                    "its virtio-fs device tagged {tag:?} needs a backend: \
                     --fs tag={tag},socket=PATH"
                )
            })?;
            match fs.socket() {
                Some(_) => Ok(fs.clone()),
                None => Err(format!(
                    "its virtio-fs device tagged {tag:?} needs a backend (socket=PATH), \
                     not pending"
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(fs: &[FsConfig]) -> Vec<&str> {
        fs.iter().map(|fs| fs.tag.as_str()).collect()
    }

    #[test]
    fn fs_devices_are_bound_in_the_snapshot_s_order() {
        let given = [FsConfig::new("b", "/b.sock"), FsConfig::new("a", "/a.sock")];
        let bound = fs_in_slot_order(&given, &["a", "b"]).unwrap();
        assert_eq!(tags(&bound), ["a", "b"]);
        assert_eq!(bound[0], given[1]);
        assert!(fs_in_slot_order(&[], &[]).unwrap().is_empty());
    }

    #[test]
    fn fs_devices_other_than_the_snapshot_s_are_refused_by_tag() {
        let share = FsConfig::new("share", "/s.sock");
        let error = fs_in_slot_order(std::slice::from_ref(&share), &[]).unwrap_err();
        assert!(
            error.contains("no virtio-fs device tagged \"share\""),
            "{error}"
        );
        assert!(error.contains("tags: none"), "{error}");
        let other = FsConfig::new("other", "/o.sock");
        let error = fs_in_slot_order(&[other], &["share"]).unwrap_err();
        assert!(error.contains("\"other\""), "{error}");
        assert!(error.contains("tags: \"share\""), "{error}");
        let error = fs_in_slot_order(&[], &["share"]).unwrap_err();
        assert!(
            error.contains("tagged \"share\" needs a backend"),
            "{error}"
        );
        assert!(error.contains("--fs tag=share,socket=PATH"), "{error}");
        let error = fs_in_slot_order(&[share], &["share", "logs"]).unwrap_err();
        assert!(error.contains("\"logs\""), "{error}");
        let error = fs_in_slot_order(&[FsConfig::pending("share")], &["share"]).unwrap_err();
        assert!(error.contains("not pending"), "{error}");
    }
}
