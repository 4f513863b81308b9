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

/// The guest's /dev/mem (1:1) and /dev/port (1:4): no container reads or
/// writes them, whatever its spec allows (a privileged one allows every
/// device). runvm-vmm's loader maps the agent's code from the guest's
/// physical memory (vmm/guest-loader), so /dev/mem would let a container
/// rewrite PID 1 of its VM, and /dev/port reaches the VM's devices. Making
/// the node stays allowed; it cannot be opened.
const GUEST_MEMORY_DEVICES: [u32; 2] = [1, 4];

/// The spec's rules, then runc's defaults, then an allow for each device
/// the container gets (`created`), then a deny of reads and writes of
/// [`GUEST_MEMORY_DEVICES`] where anything before allows them.
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
    for minor in GUEST_MEMORY_DEVICES {
        let deny = Rule {
            allow: false,
            kind: Kind::Char,
            major: Some(1),
            minor: Some(minor),
            access: ACC_READ | ACC_WRITE,
        };
        // Only where something allows it: an extra deny would turn runc's
        // allow-only list into a mixed one, whose program the verifier
        // walks far longer.
        let (default_allow, after) = settle(&out);
        if default_allow
            || after
                .iter()
                .any(|r| r.allow && r.access & deny.access != 0 && r.overlaps(&deny))
        {
            out.push(deny);
        }
    }
    Ok(out)
}

impl Rule {
    /// Whether some device is covered by both rules (same kind; each
    /// number the same or a wildcard in either).
    fn overlaps(&self, other: &Rule) -> bool {
        let meet = |a: Option<u32>, b: Option<u32>| a.is_none() || b.is_none() || a == b;
        self.kind == other.kind && meet(self.major, other.major) && meet(self.minor, other.minor)
    }
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

// Registers: r1 the context (struct bpf_cgroup_dev_ctx: access_type =
// (access << 16) | type, major, minor), r6 scratch; nothing else lives.
const CTX: u8 = 1;
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
    if !default_allow {
        if let Some(deciding) = deciding_rules(rules) {
            return by_rule(&deciding).map(Some);
        }
    }
    let mut a = Asm::default();
    for bit in [ACC_MKNOD, ACC_READ, ACC_WRITE] {
        let chain: Vec<&Rule> = rules.iter().rev().filter(|r| r.access & bit != 0).collect();
        if default_allow && chain.iter().all(|r| r.allow) {
            continue;
        }
        let next_bit = a.label();
        // The access asked: access_type >> 16.
        a.from(bpf::LDX_W, SCRATCH, CTX, 0);
        a.op(bpf::RSH32_K, SCRATCH, 16);
        a.op(bpf::AND32_K, SCRATCH, i32::from(bit));
        a.jump(bpf::JEQ32_K, SCRATCH, 0, next_bit);
        for rule in chain {
            let next_rule = a.label();
            let kind = match rule.kind {
                Kind::Char => Some(DEV_CHAR),
                Kind::Block => Some(DEV_BLOCK),
                Kind::All => None,
            };
            // Each number is loaded right before its test, into the
            // scratch register: a test leaves the verifier knowing the
            // value on one side, so had the registers lived on, the states
            // reaching `next_rule` through different tests would differ
            // and it would walk the rest of the chain again for each (and
            // mark them precise). Loaded where used, nothing is live at a
            // label and every state there merges: the walk is about the
            // program's length (the verifier was ~0.5M emulated
            // instructions of a VM's first container with the numbers
            // loaded once per access bit).
            for (field, want) in [(0, kind), (4, rule.major), (8, rule.minor)] {
                if let Some(want) = want {
                    a.from(bpf::LDX_W, SCRATCH, CTX, field);
                    if field == 0 {
                        a.op(bpf::AND32_K, SCRATCH, 0xffff);
                    }
                    a.jump(bpf::JNE32_K, SCRATCH, want as i32, next_rule);
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

/// Allow rules after a deny-all, those for the same devices merged (their
/// accesses together), when a single rule decides: wherever two of them
/// cover a device in common, one's accesses include the other's. Then
/// "every access asked is allowed by some rule" is "some rule allows all
/// the accesses asked", which [`by_rule`] tests rule by rule (runc's own
/// programs always judge that way). `None` when that does not hold.
fn deciding_rules(rules: &[Rule]) -> Option<Vec<Rule>> {
    let mut merged: Vec<Rule> = Vec::with_capacity(rules.len());
    for r in rules {
        if !r.allow || r.kind == Kind::All {
            return None;
        }
        let same = |m: &&mut Rule| (m.kind, m.major, m.minor) == (r.kind, r.major, r.minor);
        match merged.iter_mut().find(same) {
            Some(m) => m.access |= r.access,
            None => merged.push(*r),
        }
    }
    let nested = |a: u8, b: u8| a & b == a || a & b == b;
    for (i, a) in merged.iter().enumerate() {
        if merged[i + 1..]
            .iter()
            .any(|b| a.overlaps(b) && !nested(a.access, b.access))
        {
            return None;
        }
    }
    Some(merged)
}

/// Widest device numbers the kernel passes (dev_t: 12-bit major, 20-bit
/// minor), so that `major << 20 | minor` names one device in 32 bits.
const MAJOR_MAX: u32 = 0xfff;
const MINOR_MAX: u32 = 0xf_ffff;

/// The program for [`deciding_rules`]: by device type, then by the rules'
/// accesses, one test per rule that jumps to "allow" when it matches. The
/// numbers are read once; a test that matches leaves the program, and one
/// that does not teaches the verifier nothing, so the states at every
/// label are alike and it walks the program about once (the per-access
/// layout below cost the guest's verifier ~0.5M emulated instructions for
/// runc's defaults, a VM's first container).
fn by_rule(rules: &[Rule]) -> Result<Vec<u64>, String> {
    // r2 type, r3 the accesses asked, r4 major, r5 minor,
    // r6 major << 20 | minor, r0 scratch until the answer.
    let (ty, asked, major, minor, both) = (2, 3, 4, 5, 6);
    let mut a = Asm::default();
    let allowed = a.label();
    a.from(bpf::LDX_W, ty, CTX, 0);
    a.from(bpf::MOV32_X, asked, ty, 0);
    a.op(bpf::RSH32_K, asked, 16);
    a.op(bpf::AND32_K, ty, 0xffff);
    a.from(bpf::LDX_W, major, CTX, 4);
    a.from(bpf::LDX_W, minor, CTX, 8);
    a.from(bpf::MOV32_X, both, major, 0);
    a.op(bpf::LSH32_K, both, 20);
    a.from(bpf::OR32_X, both, minor, 0);
    for (kind, dev) in [(Kind::Char, DEV_CHAR), (Kind::Block, DEV_BLOCK)] {
        let of_kind: Vec<&Rule> = rules.iter().filter(|r| r.kind == kind).collect();
        if of_kind.is_empty() {
            continue;
        }
        let next_kind = a.label();
        a.jump(bpf::JNE32_K, ty, dev as i32, next_kind);
        let mut accesses: Vec<u8> = of_kind.iter().map(|r| r.access).collect();
        accesses.sort_unstable();
        accesses.dedup();
        // The verifier refuses a program with an instruction no path
        // reaches: after a rule for every device of the kind, nothing more
        // of its group is emitted, nor, in the group that asks nothing of
        // the access, anything more of the kind.
        let mut kind_allowed = false;
        for access in accesses {
            let next_access = a.label();
            if access != ALL_ACCESS {
                a.from(bpf::MOV32_X, 0, asked, 0);
                a.op(bpf::AND32_K, 0, i32::from(ALL_ACCESS & !access));
                a.jump(bpf::JNE32_K, 0, 0, next_access);
            }
            let group: Vec<&&Rule> = of_kind.iter().filter(|r| r.access == access).collect();
            let wildcard = group.iter().any(|r| r.major.is_none() && r.minor.is_none());
            for r in group {
                if wildcard && (r.major.is_some() || r.minor.is_some()) {
                    continue;
                }
                match (r.major, r.minor) {
                    (Some(ma), Some(mi)) if ma <= MAJOR_MAX && mi <= MINOR_MAX => {
                        a.jump(bpf::JEQ32_K, both, (ma << 20 | mi) as i32, allowed)
                    }
                    // Numbers no device has: the rule never matches.
                    (Some(_), Some(_)) => {}
                    (Some(ma), None) => a.jump(bpf::JEQ32_K, major, ma as i32, allowed),
                    (None, Some(mi)) => a.jump(bpf::JEQ32_K, minor, mi as i32, allowed),
                    (None, None) => a.jump(bpf::JA, 0, 0, allowed),
                }
            }
            a.bind(next_access);
            if wildcard && access == ALL_ACCESS {
                kind_allowed = true;
                break;
            }
        }
        if !kind_allowed {
            a.ret(0);
        }
        a.bind(next_kind);
    }
    a.ret(0);
    a.bind(allowed);
    a.ret(1);
    a.finish()
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
