//! Tests of `devices`: rule lists from specs, and the programs made from
//! them run by a small interpreter of the opcodes they use.

use super::*;
use runvm_agent_api::oci::LinuxResources;

/// Runs `program` on a device access as the kernel would call it; the
/// program's answer (1 allow, 0 deny).
fn run(program: &[u64], dev: u32, access: u8, major: u32, minor: u32) -> u64 {
    let ctx = [(u32::from(access) << 16) | dev, major, minor];
    let mut r = [0u64; 11];
    let mut pc = 0usize;
    for _ in 0..100_000 {
        let (code, dst, src, off, imm) = bpf::decode(program[pc]);
        let (dst, src) = (dst as usize, src as usize);
        pc += 1;
        let jump = |taken: bool, pc: usize| {
            if taken {
                (pc as i64 + i64::from(off)) as usize
            } else {
                pc
            }
        };
        match code {
            bpf::LDX_W => {
                assert_eq!(src, CTX as usize, "loads only from the context");
                assert!(off >= 0 && off % 4 == 0 && off < 12, "offset {off}");
                r[dst] = u64::from(ctx[off as usize / 4]);
            }
            bpf::MOV32_K => r[dst] = u64::from(imm as u32),
            bpf::MOV32_X => r[dst] = r[src] & 0xffff_ffff,
            bpf::AND32_K => r[dst] = (r[dst] as u32 & imm as u32).into(),
            bpf::RSH32_K => r[dst] = ((r[dst] as u32) >> imm).into(),
            bpf::LSH32_K => r[dst] = ((r[dst] as u32) << imm).into(),
            bpf::OR32_X => r[dst] = (r[dst] as u32 | r[src] as u32).into(),
            bpf::JEQ32_K => pc = jump(r[dst] as u32 == imm as u32, pc),
            bpf::JNE32_K => pc = jump(r[dst] as u32 != imm as u32, pc),
            bpf::JA => pc = jump(true, pc),
            bpf::EXIT => return r[0],
            other => panic!("opcode {other:#x} is not expected"),
        }
    }
    panic!("the program did not end");
}

const M: u8 = ACC_MKNOD;
const R: u8 = ACC_READ;
const W: u8 = ACC_WRITE;
const C: u32 = DEV_CHAR;
const B: u32 = DEV_BLOCK;

fn spec_rules(json: &str) -> Vec<Rule> {
    let resources: LinuxResources = serde_json::from_str(json).unwrap();
    rules(resources.devices.as_deref(), &[]).unwrap()
}

fn compiled(json: &str) -> Option<Vec<u64>> {
    program(&spec_rules(json)).unwrap()
}

#[test]
fn runc_spec_denies_all_but_the_default_list() {
    // `runc spec` and podman: deny everything, then runc's list.
    for json in [r#"{"devices":[{"allow":false,"access":"rwm"}]}"#, "{}"] {
        let p = compiled(json).expect("a program");
        let allowed = |dev, acc, major, minor| run(&p, dev, acc, major, minor) == 1;
        assert!(allowed(C, R | W, 1, 3), "/dev/null");
        assert!(allowed(C, R, 1, 9), "/dev/urandom");
        assert!(allowed(C, R | W, 136, 7), "a pty");
        assert!(allowed(C, R | W, 5, 2), "ptmx");
        assert!(allowed(C, M, 42, 42), "mknod of anything");
        assert!(allowed(B, M, 8, 0), "mknod of a block device");
        assert!(!allowed(C, R, 1, 1), "/dev/mem");
        assert!(!allowed(C, R | W, 42, 42), "an unlisted device");
        assert!(!allowed(B, R, 8, 0), "a disk");
        assert!(!allowed(B, R, 1, 3), "block 1:3 is not /dev/null");
        assert!(!allowed(C, M | R, 42, 42), "mknod and read");
    }
}

#[test]
fn the_same_allowed_devices_in_any_order_make_one_program() {
    let runc = compiled("{}");
    assert_eq!(default_program().unwrap(), runc);
    // runc's list again, reversed and repeated, as some callers send it.
    let spelled_out = r#"{"devices":[{"allow":false,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":9,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"},
        {"allow":true,"type":"c","major":1,"minor":3,"access":"rwm"}]}"#;
    assert_eq!(compiled(spelled_out), runc);
    // Mixed allow and deny: order decides, so it is kept.
    let mixed = spec_rules(
        r#"{"devices":[{"allow":false,"access":"rwm"},
        {"allow":true,"type":"c","access":"r"},
        {"allow":false,"type":"c","major":1,"minor":1,"access":"r"}]}"#,
    );
    let p = program(&mixed).unwrap().expect("a program");
    assert_eq!(run(&p, C, R, 1, 1), 0, "/dev/mem stays denied");
    assert_eq!(run(&p, C, R, 1, 3), 1);
    let mut swapped = mixed.clone();
    let n = swapped.len();
    swapped.swap(1, n - 1);
    assert_ne!(program(&swapped).unwrap(), Some(p));
}

/// Allowing everything (a privileged container) leaves out only the
/// guest's /dev/mem and /dev/port, which no container may read or write.
#[test]
fn allowing_everything_keeps_the_guest_memory_devices_out() {
    for json in [
        r#"{"devices":[{"allow":true,"access":"rwm"}]}"#,
        // A later reset wins; allows after it add nothing.
        r#"{"devices":[{"allow":false,"type":"c","major":1,"minor":3,"access":"rw"},
                     {"allow":true,"type":"a"},
                     {"allow":true,"type":"c","major":5,"access":"r"}]}"#,
        // Every character device by a wildcard.
        r#"{"devices":[{"allow":false,"access":"rwm"},
                     {"allow":true,"type":"c","access":"rwm"}]}"#,
    ] {
        let p = compiled(json).expect("a program");
        let allowed = |dev, acc, major, minor| run(&p, dev, acc, major, minor) == 1;
        assert!(!allowed(C, R, 1, 1), "/dev/mem: {json}");
        assert!(!allowed(C, W, 1, 1), "/dev/mem: {json}");
        assert!(!allowed(C, R | W, 1, 4), "/dev/port: {json}");
        assert!(allowed(C, M, 1, 1), "making the node: {json}");
        assert!(allowed(C, R | W, 1, 3), "/dev/null: {json}");
        assert!(allowed(C, R | W, 42, 42), "anything else: {json}");
    }
    // Asked for by name, still not given.
    let p = compiled(
        r#"{"devices":[{"allow":false,"access":"rwm"},
                     {"allow":true,"type":"c","major":1,"minor":1,"access":"rwm"}]}"#,
    )
    .expect("a program");
    assert_eq!(run(&p, C, R, 1, 1), 0);
}

#[test]
fn the_last_rule_for_each_access_decides() {
    // Allow all, then take writes to 42:3 away.
    let p = compiled(
        r#"{"devices":[{"allow":true,"access":"rwm"},
                       {"allow":false,"type":"c","major":42,"minor":3,"access":"w"}]}"#,
    )
    .expect("a program");
    assert_eq!(run(&p, C, R, 42, 3), 1);
    assert_eq!(run(&p, C, W, 42, 3), 0);
    assert_eq!(run(&p, C, R | W, 42, 3), 0, "O_RDWR needs both");
    assert_eq!(run(&p, C, R | W, 42, 5), 1);
    assert_eq!(run(&p, B, W, 42, 3), 1);
    // Allows add up across rules; a later deny takes one access back.
    let p = compiled(
        r#"{"devices":[{"allow":false,"access":"rwm"},
                       {"allow":true,"type":"c","major":42,"minor":1,"access":"r"},
                       {"allow":true,"type":"c","major":42,"minor":1,"access":"w"},
                       {"allow":true,"type":"b","major":42,"access":"rw"},
                       {"allow":false,"type":"b","major":42,"minor":7,"access":"r"}]}"#,
    )
    .expect("a program");
    assert_eq!(run(&p, C, R | W, 42, 1), 1);
    assert_eq!(run(&p, C, R, 42, 2), 0);
    assert_eq!(run(&p, B, R | W, 42, 3), 1);
    assert_eq!(run(&p, B, W, 42, 7), 1);
    assert_eq!(run(&p, B, R, 42, 7), 0);
    // runc's defaults come after the spec's rules: they cannot be denied.
    let p = compiled(
        r#"{"devices":[{"allow":false,"access":"rwm"},
                       {"allow":false,"type":"c","major":1,"minor":3,"access":"rw"}]}"#,
    )
    .expect("a program");
    assert_eq!(run(&p, C, R | W, 1, 3), 1);
}

#[test]
fn created_devices_are_allowed() {
    let fuse = DevicePlan {
        path: "/dev/fuse".into(),
        mode: libc::S_IFCHR | 0o666,
        major: 10,
        minor: 229,
        uid: 0,
        gid: 0,
    };
    let fifo = DevicePlan {
        path: "/dev/fifo".into(),
        mode: libc::S_IFIFO | 0o666,
        major: 0,
        minor: 0,
        uid: 0,
        gid: 0,
    };
    let rules = rules(None, &[fuse, fifo]).unwrap();
    assert_eq!(rules.len(), RUNC_DEFAULTS.len() + 1, "no rule for a fifo");
    let p = program(&rules).unwrap().expect("a program");
    assert_eq!(run(&p, C, R | W, 10, 229), 1);
    assert_eq!(run(&p, C, R | W, 10, 228), 0);
}

#[test]
fn bad_rules_are_refused_by_name() {
    let err = |json: &str| {
        let resources: LinuxResources = serde_json::from_str(json).unwrap();
        rules(resources.devices.as_deref(), &[]).unwrap_err()
    };
    assert!(err(r#"{"devices":[{"allow":true,"access":""}]}"#).contains("access is empty"));
    assert!(err(r#"{"devices":[{"allow":true,"access":"rx"}]}"#).contains("'x'"));
    assert!(err(r#"{"devices":[{"allow":true,"type":"p","access":"r"}]}"#).contains("type \"p\""));
    assert!(
        err(r#"{"devices":[{"allow":true,"type":"c","major":-2,"access":"r"}]}"#)
            .contains("major -2")
    );
    assert!(
        err(r#"{"devices":[{"allow":true,"type":"c","minor":4294967296,"access":"r"}]}"#)
            .contains("minor")
    );
    let many = vec![serde_json::json!({"allow": true, "access": "r"}); MAX_RULES + 1];
    let json = serde_json::json!({ "devices": many }).to_string();
    assert!(err(&json).contains("at most"));
}

#[test]
fn the_largest_program_stays_small() {
    let rule = r#"{"allow":false,"type":"c","major":7,"minor":1,"access":"rwm"}"#;
    let json = format!(r#"{{"devices":[{}]}}"#, vec![rule; MAX_RULES].join(","));
    let p = compiled(&json).expect("a program");
    assert!(p.len() < 8192, "{} instructions", p.len());
    assert_eq!(run(&p, C, R, 7, 1), 0);
    assert_eq!(run(&p, C, R, 1, 3), 1);
}

/// The guest kernel's verifier is the judge; the host's kernel has one
/// too when it has bpf(2) (it runs as root here).
#[test]
fn the_host_kernel_verifier_takes_the_program() {
    let p = compiled(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#).expect("a program");
    match bpf::load_cgroup_device(&p) {
        Ok(_) => {
            // It does judge: a device program must answer 0 or 1.
            let two = [insn(bpf::MOV32_K, 0, 0, 0, 2), insn(bpf::EXIT, 0, 0, 0, 0)];
            let e = bpf::load_cgroup_device(&two).expect_err("r0 = 2 is refused");
            assert!(e.to_string().contains("verifier"), "{e}");
        }
        // Without bpf(2) on the host there is nothing to ask.
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            eprintln!("the host kernel has no bpf(2): {e}")
        }
        Err(e) => panic!("the verifier refused the program: {e}"),
    }
}

/// The verifier walks runc's defaults about once (each step is emulated in
/// the guest). On a 6.18 host: 46 steps for 36 instructions; 701 for 140
/// with a chain per access, 1174 for 132 before that.
#[test]
fn the_verifier_walks_the_program_about_once() {
    let p = compiled(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#).expect("a program");
    match bpf::verifier_walk(&p) {
        Ok(walked) => assert!(
            walked <= 2 * p.len() as u64 && p.len() <= 48,
            "the verifier walked {walked} instructions of a {}-instruction program",
            p.len()
        ),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
            eprintln!("the host kernel has no bpf(2): {e}")
        }
        Err(e) => panic!("{e}"),
    }
}

/// The same rules load once: the second container's cgroup gets the very
/// program the first one's got.
#[test]
fn a_program_is_loaded_once_and_kept_bounded() {
    let mut cache = ProgramCache::default();
    let p = compiled(r#"{"devices":[{"allow":false,"access":"rwm"}]}"#).expect("a program");
    let first = match cache.load(&p) {
        Ok(fd) => fd,
        Err(e) if e.contains("CONFIG_BPF_SYSCALL") => return eprintln!("no bpf(2): {e}"),
        Err(e) => panic!("{e}"),
    };
    let again = cache.load(&p).expect("kept");
    assert!(std::rc::Rc::ptr_eq(&first, &again));
    assert_eq!(cache.len(), 1);
    // Different programs (r0 = 1 after a number of no-op moves) each
    // load; the cache never holds more than KEPT.
    for n in 0..ProgramCache::KEPT + 2 {
        let mut other = vec![insn(bpf::MOV32_K, 2, 0, 0, 0); n + 1];
        other.extend([insn(bpf::MOV32_K, 0, 0, 0, 1), insn(bpf::EXIT, 0, 0, 0, 0)]);
        cache.load(&other).expect("loads");
        assert!(cache.len() <= ProgramCache::KEPT);
    }
    // The first one was the least recently used: loaded anew.
    let reloaded = cache.load(&p).expect("loads again");
    assert!(!std::rc::Rc::ptr_eq(&first, &reloaded));
}

/// The rules' meaning, as the module's comment gives it: after the last
/// reset, each access asked is decided by the last rule that covers the
/// device and that access, else by the reset.
fn model(rules: &[Rule], dev: u32, asked: u8, major: u32, minor: u32) -> bool {
    let (default_allow, rules) = settle(rules);
    let covers = |r: &Rule| {
        let kind = match r.kind {
            Kind::Char => dev == C,
            Kind::Block => dev == B,
            Kind::All => true,
        };
        kind && r.major.is_none_or(|m| m == major) && r.minor.is_none_or(|m| m == minor)
    };
    [M, R, W]
        .into_iter()
        .filter(|bit| asked & bit != 0)
        .all(|bit| {
            rules
                .iter()
                .rev()
                .find(|r| covers(r) && r.access & bit != 0)
                .map_or(default_allow, |r| r.allow)
        })
}

/// Every program answers as the model does, for runc's defaults and for
/// lists of rules made up by a small generator (allow-only ones, as most
/// callers send, and mixed ones), on devices around the rules' numbers.
#[test]
fn programs_answer_as_the_rules_say() {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let pick = |i: u64, of: &[Option<u32>]| of[i as usize];
    let mut lists = vec![rules(None, &[]).unwrap()];
    for round in 0..300 {
        let allow_only = round % 2 == 0;
        let mut list = Vec::new();
        if allow_only {
            list.push(Rule {
                allow: false,
                kind: Kind::All,
                major: None,
                minor: None,
                access: ALL_ACCESS,
            });
        }
        for _ in 0..1 + next(6) {
            let kind = [Kind::All, Kind::Char, Kind::Block][next(3) as usize];
            list.push(Rule {
                allow: allow_only || next(2) == 0,
                kind: if allow_only && kind == Kind::All {
                    Kind::Char
                } else {
                    kind
                },
                major: pick(next(5), &[None, Some(1), Some(5), Some(136), Some(4096)]),
                // (Wildcards of each kind, with the defaults' `m`, come up.)
                minor: pick(next(4), &[None, Some(3), Some(0), Some(7)]),
                access: 1 + next(7) as u8,
            });
        }
        list.extend_from_slice(RUNC_DEFAULTS);
        lists.push(list);
    }
    let mut by_rule_used = 0;
    for list in &lists {
        let Some(p) = program(list).unwrap() else {
            assert!((1..=7).all(|a| model(list, C, a, 1, 1) && model(list, B, a, 8, 0)));
            continue;
        };
        if !list.iter().skip(1).any(|r| !r.allow) && deciding_rules(settle(list).1).is_some() {
            by_rule_used += 1;
        }
        // The kernel takes it (no instruction left unreachable, say), when
        // the host has a verifier to ask.
        match bpf::load_cgroup_device(&p) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {}
            Err(e) => panic!("rules {list:?}: the verifier refused the program: {e}"),
        }
        for dev in [C, B] {
            for asked in 1..=7 {
                for major in [0, 1, 5, 10, 136, 4095] {
                    for minor in [0, 2, 3, 7, 200, 0xf_ffff] {
                        assert_eq!(
                            run(&p, dev, asked, major, minor) == 1,
                            model(list, dev, asked, major, minor),
                            "rules {list:?}: type {dev} access {asked} {major}:{minor}"
                        );
                    }
                }
            }
        }
    }
    assert!(
        by_rule_used > 50,
        "only {by_rule_used} lists took the by-rule layout"
    );
}
