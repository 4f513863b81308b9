//! Turns a vCPU that KVM could not run into a report a person can act on:
//! which exit, where the guest was, and the bytes of the instruction.

use kvm_bindings::{
    KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_INTERNAL_ERROR_SIMUL_EX,
    KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

/// x86 instructions are at most 15 bytes long.
const MAX_INSTRUCTION_LEN: usize = 15;

/// Describes the KVM_EXIT_INTERNAL_ERROR the vCPU just returned.
pub fn describe_internal_error(vcpu: &mut VcpuFd, id: u8, mem: &GuestMemory) -> String {
    // SAFETY: the kvm_run page is valid for the vCPU's lifetime and, after a
    // KVM_EXIT_INTERNAL_ERROR, `internal` is the union member KVM filled in.
    let internal = unsafe { vcpu.get_kvm_run().__bindgen_anon_1.internal };
    let ndata = (internal.ndata as usize).min(internal.data.len());
    let data = &internal.data[..ndata];

    let mut report = format!(
        "KVM_EXIT_INTERNAL_ERROR ({}) on vCPU {id}",
        suberror_name(internal.suberror)
    );
    let (rip, linear) = match (vcpu.get_regs(), vcpu.get_sregs()) {
        (Ok(regs), Ok(sregs)) => {
            report.push_str(&format!(
                " at RIP {:#x} (CS {:#x}, CPL {}, CR0 {:#x}, CR3 {:#x})",
                regs.rip,
                sregs.cs.selector,
                sregs.cs.selector & 3,
                sregs.cr0,
                sregs.cr3
            ));
            (Some(regs.rip), Some(sregs.cs.base.wrapping_add(regs.rip)))
        }
        _ => {
            report.push_str(" (registers unreadable)");
            (None, None)
        }
    };

    let bytes = instruction_bytes_from_kvm(internal.suberror, data)
        .or_else(|| linear.and_then(|l| instruction_bytes_from_memory(vcpu, mem, l)));
    match bytes {
        Some(bytes) => report.push_str(&format!(": instruction bytes {}", hex(&bytes))),
        None if rip.is_some() => report.push_str(": instruction bytes unavailable"),
        None => {}
    }
    if !data.is_empty() {
        let words: Vec<String> = data.iter().map(|w| format!("{w:#x}")).collect();
        report.push_str(&format!(" [data: {}]", words.join(" ")));
    }
    report
}

fn suberror_name(suberror: u32) -> &'static str {
    match suberror {
        KVM_INTERNAL_ERROR_EMULATION => "emulation failure",
        KVM_INTERNAL_ERROR_SIMUL_EX => "exception while delivering an exception",
        KVM_INTERNAL_ERROR_DELIVERY_EV => "event delivery failed",
        KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "unexpected exit reason",
        _ => "unknown suberror",
    }
}

/// Newer kernels put the failing instruction in the exit itself:
/// data[0] = flags, data[1] = length, data[2..4] = up to 16 bytes.
fn instruction_bytes_from_kvm(suberror: u32, data: &[u64]) -> Option<Vec<u8>> {
    if suberror != KVM_INTERNAL_ERROR_EMULATION || data.len() < 4 {
        return None;
    }
    if data[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) == 0 {
        return None;
    }
    let len = (data[1] & 0xff) as usize;
    if len == 0 || len > MAX_INSTRUCTION_LEN + 1 {
        return None;
    }
    let bytes: Vec<u8> = data[2..4].iter().flat_map(|w| w.to_le_bytes()).collect();
    Some(bytes[..len.min(MAX_INSTRUCTION_LEN)].to_vec())
}

/// Otherwise translate RIP through the guest's page tables and read them.
fn instruction_bytes_from_memory(vcpu: &VcpuFd, mem: &GuestMemory, linear: u64) -> Option<Vec<u8>> {
    let translation = vcpu.translate_gva(linear).ok()?;
    if translation.valid == 0 {
        return None;
    }
    let mut bytes = [0u8; MAX_INSTRUCTION_LEN];
    // The instruction may end at the edge of RAM: take what can be read.
    let mut read = 0;
    while read < bytes.len() {
        let address = GuestAddress(translation.physical_address + read as u64);
        match mem.read_obj::<u8>(address) {
            Ok(byte) => bytes[read] = byte,
            Err(_) => break,
        }
        read += 1;
    }
    (read > 0).then(|| bytes[..read].to_vec())
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_bytes_are_taken_from_the_exit_data() {
        // clac: 0f 01 ca
        let data = [1, 3, 0x00ca_010f, 0];
        assert_eq!(
            instruction_bytes_from_kvm(KVM_INTERNAL_ERROR_EMULATION, &data),
            Some(vec![0x0f, 0x01, 0xca])
        );
    }

    #[test]
    fn missing_flag_or_bad_length_gives_nothing() {
        assert_eq!(
            instruction_bytes_from_kvm(KVM_INTERNAL_ERROR_EMULATION, &[0, 3, 1, 0]),
            None
        );
        assert_eq!(
            instruction_bytes_from_kvm(KVM_INTERNAL_ERROR_EMULATION, &[1, 200, 1, 0]),
            None
        );
        assert_eq!(
            instruction_bytes_from_kvm(KVM_INTERNAL_ERROR_SIMUL_EX, &[1, 3, 1, 0]),
            None
        );
        assert_eq!(
            instruction_bytes_from_kvm(KVM_INTERNAL_ERROR_EMULATION, &[1]),
            None
        );
    }

    #[test]
    fn hex_is_space_separated() {
        assert_eq!(hex(&[0x0f, 0x01, 0xca]), "0f 01 ca");
    }
}
