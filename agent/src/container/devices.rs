//! Device access rules (`linux.resources.devices`) enforced in the guest.
//! cgroup v2 has no devices controller: like runc, the agent attaches a
//! BPF_PROG_TYPE_CGROUP_DEVICE program to the container's cgroup, which
//! the kernel runs on every open and mknod of a device node there.
//!
//! The rules are runc's: the spec's list, then runc's default allow-list
//! (mknod of any device; null, zero, full, random, urandom, tty, ptmx,
//! the ptys, tun) and the devices the spec creates. The state starts at
//! deny-all; a rule of type `a` resets it to allow-all or deny-all
//! (whatever its numbers and access, as the v1 kernel did). Other rules
//! are judged per access (m, r, w): the last rule that covers the device
//! and that access decides it, else the reset state. An access that
//! asks several (an O_RDWR open) needs each. This is cgroup v1's
//! behaviour, except that a rule narrower than an earlier opposite one
//! takes effect (v1 only took back exact matches): stricter, never looser.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::rc::Rc;

use runvm_agent_api::oci::{LinuxDeviceCgroup, LinuxDeviceType};

use super::bpf::{self, insn};
use super::spec::DevicePlan;

/// Most rules a spec may give (the program grows with them, and the
/// guest kernel's verifier runs emulated).
pub const MAX_RULES: usize = 256;

const ACC_MKNOD: u8 = 1;
const ACC_READ: u8 = 2;
const ACC_WRITE: u8 = 4;
const ALL_ACCESS: u8 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// BPF_DEVCG_DEV_*: the device type in the program's context.
const DEV_BLOCK: u32 = 1;
const DEV_CHAR: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// `a`: resets the rules.
    All,
    Block,
    Char,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub allow: bool,
    pub kind: Kind,
    /// `None`: any.
    pub major: Option<u32>,
    pub minor: Option<u32>,
    /// ACC_* bits.
    pub access: u8,
}

const fn allow(kind: Kind, major: Option<u32>, minor: Option<u32>) -> Rule {
    Rule {
        allow: true,
        kind,
        major,
        minor,
        access: ALL_ACCESS,
    }
}

/// runc's default allow-list (libcontainer/specconv AllowedDevices).
pub const RUNC_DEFAULTS: &[Rule] = &[
    Rule {
        access: ACC_MKNOD,
        ..allow(Kind::Char, None, None)
    },
    Rule {
        access: ACC_MKNOD,
        ..allow(Kind::Block, None, None)
    },
    allow(Kind::Char, Some(1), Some(3)),    // null
    allow(Kind::Char, Some(1), Some(8)),    // random
    allow(Kind::Char, Some(1), Some(7)),    // full
    allow(Kind::Char, Some(5), Some(0)),    // tty
    allow(Kind::Char, Some(1), Some(5)),    // zero
    allow(Kind::Char, Some(1), Some(9)),    // urandom
    allow(Kind::Char, Some(136), None),     // the ptys
    allow(Kind::Char, Some(5), Some(2)),    // ptmx
    allow(Kind::Char, Some(10), Some(200)), // net/tun
];

fn number(value: Option<i64>, what: &str, index: usize) -> Result<Option<u32>, String> {
    match value {
        None | Some(-1) => Ok(None),
        Some(n) => u32::try_from(n).map(Some).map_err(|_| {
            format!("linux.resources.devices[{index}]: {what} {n} is not a device number")
        }),
    }
}

fn access(text: &str, index: usize) -> Result<u8, String> {
    if text.is_empty() {
        return Err(format!("linux.resources.devices[{index}]: access is empty"));
    }
    text.chars().try_fold(0, |bits, c| match c {
        'm' => Ok(bits | ACC_MKNOD),
        'r' => Ok(bits | ACC_READ),
        'w' => Ok(bits | ACC_WRITE),
        other => Err(format!(
            "linux.resources.devices[{index}]: access {text:?} has {other:?} (only r, w, m)"
        )),
    })
}

/// The spec's rules, then runc's defaults, then an allow for each device
/// the container gets (`created`).
pub fn rules(
    spec: Option<&[LinuxDeviceCgroup]>,
    created: &[DevicePlan],
) -> Result<Vec<Rule>, String> {
    let spec = spec.unwrap_or_default();
    if spec.len() > MAX_RULES {
        return Err(format!(
            "linux.resources.devices has {} rules; runvm takes at most {MAX_RULES}",
            spec.len()
        ));
    }
    let mut out = Vec::with_capacity(spec.len() + RUNC_DEFAULTS.len() + created.len());
    for (i, r) in spec.iter().enumerate() {
        let kind = match r.typ {
            None | Some(LinuxDeviceType::A) => Kind::All,
            Some(LinuxDeviceType::C) => Kind::Char,
            Some(LinuxDeviceType::B) => Kind::Block,
            Some(other) => {
                let name = format!("{other:?}").to_lowercase();
                return Err(format!(
                    "linux.resources.devices[{i}]: type {name:?} is not a, b or c"
                ));
            }
        };
        out.push(Rule {
            allow: r.allow,
            kind,
            major: number(r.major, "major", i)?,
            minor: number(r.minor, "minor", i)?,
            access: access(r.access.as_deref().unwrap_or("rwm"), i)?,
        });
    }
    out.extend_from_slice(RUNC_DEFAULTS);
    for d in created {
        let kind = match d.mode & libc::S_IFMT {
            libc::S_IFCHR => Kind::Char,
            libc::S_IFBLK => Kind::Block,
            _ => continue,
        };
        out.push(allow(kind, Some(d.major), Some(d.minor)));
    }
    Ok(out)
}

/// What the rules come to: the state after the last reset, and the rules
/// after it.
fn settle(rules: &[Rule]) -> (bool, &[Rule]) {
    match rules.iter().rposition(|r| r.kind == Kind::All) {
        Some(i) => (rules[i].allow, &rules[i + 1..]),
        None => (false, rules),
    }
}

/// `rules` sorted and without repeats when every one of them says the same
/// (all allow after a deny-all, as callers write them): whether any rule
/// covers an access is then all that counts, not their order. Callers that
/// list runc's defaults again, or in another order, then get the same
/// program, and one loaded program serves them all. `None` when the order
/// matters.
fn canonical_order(rules: &[Rule]) -> Option<Vec<Rule>> {
    if !rules.windows(2).all(|w| w[0].allow == w[1].allow) {
        return None;
    }
    let mut sorted = rules.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    Some(sorted)
}

/// The program for the rules nearly every container has: deny all, then
/// runc's defaults (`runc spec`, podman, CRI), loaded ahead of time in a
/// template VM.
pub fn default_program() -> Result<Option<Vec<u64>>, String> {
    program(&rules(None, &[])?)
}

/// An instruction whose offset may be a jump to a label.
struct Op {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
    to: Option<usize>,
}

/// A program under construction, with jumps to labels.
#[derive(Default)]
struct Asm {
    code: Vec<Op>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn op(&mut self, code: u8, dst: u8, imm: i32) {
        self.code.push(Op {
            code,
            dst,
            src: 0,
            off: 0,
            imm,
            to: None,
        });
    }

    /// dst = *(u32 *)(src + off), or dst = src for MOV32_X.
    fn from(&mut self, code: u8, dst: u8, src: u8, off: i16) {
        self.code.push(Op {
            code,
            dst,
            src,
            off,
            imm: 0,
            to: None,
        });
    }

    fn jump(&mut self, code: u8, dst: u8, imm: i32, label: usize) {
        self.code.push(Op {
            code,
            dst,
            src: 0,
            off: 0,
            imm,
            to: Some(label),
        });
    }

    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }

    fn bind(&mut self, label: usize) {
        self.labels[label] = Some(self.code.len());
    }

    fn ret(&mut self, value: i32) {
        self.op(bpf::MOV32_K, 0, value);
        self.op(bpf::EXIT, 0, 0);
    }

    fn finish(self) -> Result<Vec<u64>, String> {
        let mut out = Vec::with_capacity(self.code.len());
        for (at, op) in self.code.iter().enumerate() {
            let off = match op.to {
                None => op.off,
                Some(label) => {
                    let target = self.labels[label].ok_or("device program: unbound label")?;
                    i16::try_from(target as i64 - at as i64 - 1)
                        .map_err(|_| "device program: jump too far")?
                }
            };
            out.push(insn(op.code, op.dst, op.src, off, op.imm));
        }
        Ok(out)
    }
}

// Registers: r1 the context (struct bpf_cgroup_dev_ctx), r2 the device
// type, r3 the access asked, r4 major, r5 minor, r6 scratch.
const CTX: u8 = 1;
const TYPE: u8 = 2;
const ACCESS: u8 = 3;
const MAJOR: u8 = 4;
const MINOR: u8 = 5;
const SCRATCH: u8 = 6;

/// The device program for `rules`, as instruction words; `None` when
/// they allow everything (no program is needed).
pub fn program(rules: &[Rule]) -> Result<Option<Vec<u64>>, String> {
    let (default_allow, rules) = settle(rules);
    if default_allow && rules.iter().all(|r| r.allow) {
        return Ok(None);
    }
    let canonical;
    let rules = match canonical_order(rules) {
        Some(sorted) => {
            canonical = sorted;
            &canonical[..]
        }
        None => rules,
    };
    let mut a = Asm::default();
    // access_type is (ACC << 16) | DEV.
    a.from(bpf::LDX_W, ACCESS, CTX, 0);
    a.op(bpf::RSH32_K, ACCESS, 16);
    for bit in [ACC_MKNOD, ACC_READ, ACC_WRITE] {
        let chain: Vec<&Rule> = rules.iter().rev().filter(|r| r.access & bit != 0).collect();
        if default_allow && chain.iter().all(|r| r.allow) {
            continue;
        }
        let next_bit = a.label();
        a.from(bpf::MOV32_X, SCRATCH, ACCESS, 0);
        a.op(bpf::AND32_K, SCRATCH, i32::from(bit));
        a.jump(bpf::JEQ32_K, SCRATCH, 0, next_bit);
        // Loaded afresh for each access bit: a rule's tests leave the
        // verifier knowing the device's numbers, so states reaching the
        // next bit through different rules would differ and it would
        // walk them again for every way through the earlier bits (the
        // verifier was ~2M emulated instructions of a container's first
        // create in a VM). Reloaded, the registers are dead at `next_bit`
        // and those states merge (a 6.18 host's walk: 1174 -> 701 steps).
        a.from(bpf::LDX_W, TYPE, CTX, 0);
        a.op(bpf::AND32_K, TYPE, 0xffff);
        a.from(bpf::LDX_W, MAJOR, CTX, 4);
        a.from(bpf::LDX_W, MINOR, CTX, 8);
        for rule in chain {
            let next_rule = a.label();
            let kind = match rule.kind {
                Kind::Char => Some(DEV_CHAR),
                Kind::Block => Some(DEV_BLOCK),
                Kind::All => None,
            };
            for (reg, want) in [(TYPE, kind), (MAJOR, rule.major), (MINOR, rule.minor)] {
                if let Some(want) = want {
                    a.jump(bpf::JNE32_K, reg, want as i32, next_rule);
                }
            }
            if rule.allow {
                a.jump(bpf::JA, 0, 0, next_bit);
            } else {
                a.ret(0);
            }
            a.bind(next_rule);
        }
        if !default_allow {
            a.ret(0);
        }
        a.bind(next_bit);
    }
    a.ret(1);
    a.finish().map(Some)
}

/// Device programs loaded already, by their instructions: loading one
/// runs the kernel's verifier, which in an emulated guest cost about half
/// of a container's whole set-up, while nearly every container has the
/// same rules (the default list). A loaded program can be attached to
/// any number of cgroups. Holds at most [`ProgramCache::KEPT`], the
/// least recently used going first.
#[derive(Default)]
pub struct ProgramCache {
    kept: Vec<(Vec<u64>, Rc<OwnedFd>)>,
}

impl ProgramCache {
    pub const KEPT: usize = 8;

    /// The loaded `program`, loading it if it is not kept yet.
    pub fn load(&mut self, program: &[u64]) -> Result<Rc<OwnedFd>, String> {
        if let Some(i) = self.kept.iter().position(|(words, _)| words == program) {
            let entry = self.kept.remove(i);
            let loaded = entry.1.clone();
            self.kept.push(entry);
            return Ok(loaded);
        }
        let loaded = Rc::new(load(program)?);
        if self.kept.len() >= Self::KEPT {
            self.kept.remove(0);
        }
        self.kept.push((program.to_vec(), loaded.clone()));
        Ok(loaded)
    }

    /// Loads `program` now, if it is not kept yet, so that a container
    /// that needs it later finds it.
    pub fn preload(&mut self, program: &[u64]) -> Result<(), String> {
        self.load(program).map(drop)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.kept.len()
    }
}

fn load(program: &[u64]) -> Result<OwnedFd, String> {
    bpf::load_cgroup_device(program).map_err(|e| {
        if e.raw_os_error() == Some(libc::ENOSYS) {
            "device rules need bpf(2), which this guest kernel lacks (CONFIG_BPF_SYSCALL)"
                .to_string()
        } else {
            format!("cannot load the device program: {e}")
        }
    })
}

/// Attaches a loaded device program to the cgroup at `cgroup`.
pub fn attach(loaded: &OwnedFd, cgroup: &Path) -> Result<(), String> {
    bpf::attach_cgroup_device(loaded, cgroup).map_err(|e| {
        format!(
            "cannot attach the device program to {} (CONFIG_CGROUP_BPF?): {e}",
            cgroup.display()
        )
    })
}

#[cfg(test)]
#[path = "devices_tests.rs"]
mod tests;
