//! Just enough eBPF for the device programs of `devices`: instruction
//! words, and bpf(2) to load a BPF_PROG_TYPE_CGROUP_DEVICE program and
//! attach it to a cgroup. Written by hand, without a BPF crate: the
//! programs use a dozen opcodes.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// Opcodes used (class | operation | source).
pub const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
pub const MOV32_K: u8 = 0xb4;
pub const MOV32_X: u8 = 0xbc;
pub const AND32_K: u8 = 0x54;
pub const RSH32_K: u8 = 0x74;
pub const LSH32_K: u8 = 0x64;
pub const OR32_X: u8 = 0x4c;
pub const JEQ32_K: u8 = 0x16; // the low 32 bits of dst == imm
pub const JNE32_K: u8 = 0x56;
pub const JA: u8 = 0x05;
pub const EXIT: u8 = 0x95;

/// One instruction as the kernel reads it (struct bpf_insn, little
/// endian): opcode, dst and src registers, offset, immediate.
pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from((dst & 0xf) | (src << 4)) << 8
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

/// The fields of an instruction word: (opcode, dst, src, off, imm).
#[cfg(test)]
pub fn decode(word: u64) -> (u8, u8, u8, i16, i32) {
    (
        word as u8,
        (word >> 8) as u8 & 0xf,
        (word >> 12) as u8 & 0xf,
        (word >> 16) as u16 as i16,
        (word >> 32) as u32 as i32,
    )
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
/// Programs of sub-cgroups run too (all must allow): a container that
/// may manage its own cgroups can only narrow its access, as with runc.
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The start of `union bpf_attr` for BPF_PROG_LOAD; the kernel takes a
/// shorter attribute and treats the rest as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) with an attribute of the size given; pointers in it
    // refer to buffers that outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// BPF_PROG_LOAD's attribute for a device program (no log).
fn device_program_attr(program: &[u64]) -> io::Result<ProgLoad> {
    let license = c"Apache-2.0";
    Ok(ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: u32::try_from(program.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoad::default()
    })
}

/// Loads a device program; the verifier's complaint, if any, is in the
/// error.
pub fn load_cgroup_device(program: &[u64]) -> io::Result<OwnedFd> {
    let mut attr = device_program_attr(program)?;
    match bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: a new descriptor that we own.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e)
            if e.raw_os_error() == Some(libc::EACCES) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; 16 * 1024];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = bpf(BPF_PROG_LOAD, &mut attr).map(|fd| {
                // SAFETY: close(2) of a descriptor we were just given.
                unsafe { libc::close(fd as i32) }
            });
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            let last = text.lines().rev().take(3).collect::<Vec<_>>().join(" / ");
            Err(io::Error::new(e.kind(), format!("{e}; verifier: {last}")))
        }
        Err(e) => Err(e),
    }
}

/// How many instructions the running kernel's verifier walked to accept
/// `program` (its `processed N insns` statistic): what loading costs.
#[cfg(test)]
pub fn verifier_walk(program: &[u64]) -> io::Result<u64> {
    const BPF_LOG_STATS: u32 = 4;
    let mut log = vec![0u8; 4096];
    let mut attr = ProgLoad {
        log_level: BPF_LOG_STATS,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..device_program_attr(program)?
    };
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: close(2) of a descriptor we were just given.
    unsafe { libc::close(fd as i32) };
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    text.split("processed ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no statistics in the verifier's log: {text}")))
}

/// Attaches a loaded device program to the cgroup directory `cgroup`.
pub fn attach_cgroup_device(program: &OwnedFd, cgroup: &Path) -> io::Result<()> {
    let dir = std::fs::File::open(cgroup)?;
    let mut attr = ProgAttach {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: program.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instruction_words_are_laid_out_as_the_kernel_reads_them() {
        // r0 = 1; exit
        assert_eq!(insn(MOV32_K, 0, 0, 0, 1), 0x0000_0001_0000_00b4);
        assert_eq!(insn(EXIT, 0, 0, 0, 0), 0x95);
        // r2 = *(u32 *)(r1 + 4)
        assert_eq!(insn(LDX_W, 2, 1, 4, 0), 0x0000_0000_0004_1261);
        // if w4 != 0xffffffff goto -1
        let word = insn(JNE32_K, 4, 0, -1, -1);
        assert_eq!(word, 0xffff_ffff_ffff_0456);
        assert_eq!(decode(word), (JNE32_K, 4, 0, -1, -1));
    }
}
