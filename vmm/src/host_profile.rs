//! Some hosts serve `/dev/kvm` without hardware virtualisation: the
//! `kvm_pvm` module runs guest user code natively but sends every
//! guest-kernel instruction through KVM's instruction emulator. That
//! emulator lacks a few instructions and the host ignores CPUID masking,
//! so the guest must be told on its command line to avoid them.
//!
//! On hardware KVM none of this applies: the guest keeps every CPU feature.
//! The facts behind each switch are in `shared/host-kvm.md`.

use std::path::Path;

/// What the caller asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostProfileChoice {
    /// Detect the host.
    Auto,
    Emulated,
    Hardware,
}

/// What the VMM applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostProfile {
    /// KVM with VT-x/AMD-V: no restrictions on the guest.
    Hardware,
    /// KVM that emulates guest-kernel code (`kvm_pvm`).
    EmulatedKernel,
}

/// CPUID feature bits (as `clearcpuid=` numbers, word*32+bit) that the
/// emulating host cannot run or runs slowly:
const CLEARED_CPU_FEATURES: &[(u32, &str)] = &[
    (308, "smap: clac/stac are not emulated"),
    (295, "smep: goes with smap"),
    (288, "fsgsbase"),
    (141, "cx16: lock cmpxchg16b is not emulated"),
    (298, "invpcid"),
    (145, "pcid"),
    (151, "popcnt: not emulated"),
    (
        297,
        "erms: keep string copies at 8 bytes per emulated iteration",
    ),
    (580, "fsrm: as erms"),
];

/// glibc CPU features turned off in guest user space. The host runs guest
/// user code natively under its own XCR0 (it never loads the guest's),
/// so AVX and AVX-512 look usable, but the guest kernel (noxsave) switches
/// only the x87/SSE registers: upper register halves leak between tasks
/// and glibc's AVX string functions then corrupt data (busybox pipelines
/// crashed in about half the runs; none with these off). Programs that
/// bring their own AVX code (Go's runtime, say) are not covered.
const GLIBC_WITHOUT_AVX: &[&str] = &[
    "-AVX",
    "-AVX2",
    "-AVX512F",
    "-AVX512VL",
    "-AVX512BW",
    "-AVX512DQ",
    "-AVX512CD",
    "-AVX_Fast_Unaligned_Load",
    "-EVEX",
];

// Bits of KVM_CPUID_FEATURES (Documentation/virt/kvm/x86/cpuid.rst) whose
// use goes through a hypercall.
const KVM_FEATURE_PV_UNHALT: u32 = 1 << 7;
const KVM_FEATURE_PV_SEND_IPI: u32 = 1 << 11;
const KVM_FEATURE_PV_SCHED_YIELD: u32 = 1 << 13;

impl HostProfile {
    pub fn resolve(choice: HostProfileChoice) -> HostProfile {
        match choice {
            HostProfileChoice::Auto => HostProfile::detect(),
            HostProfileChoice::Emulated => HostProfile::EmulatedKernel,
            HostProfileChoice::Hardware => HostProfile::Hardware,
        }
    }

    /// The emulating host is recognised by its module and by the absence of
    /// the hardware virtualisation flags.
    pub fn detect() -> HostProfile {
        let pvm_loaded = Path::new("/sys/module/kvm_pvm").exists();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        HostProfile::from_facts(pvm_loaded, &cpuinfo)
    }

    fn from_facts(pvm_loaded: bool, cpuinfo: &str) -> HostProfile {
        let hardware_virt = cpuinfo
            .lines()
            .filter(|line| line.starts_with("flags"))
            .flat_map(|line| line.split_whitespace())
            .any(|flag| flag == "vmx" || flag == "svm");
        if pvm_loaded && !hardware_virt {
            HostProfile::EmulatedKernel
        } else {
            HostProfile::Hardware
        }
    }

    /// Kernel command-line parameters this host needs.
    pub fn kernel_params(self) -> Vec<String> {
        match self {
            HostProfile::Hardware => Vec::new(),
            HostProfile::EmulatedKernel => {
                let cleared: Vec<String> = CLEARED_CPU_FEATURES
                    .iter()
                    .map(|(bit, _why)| bit.to_string())
                    .collect();
                vec![
                    // xrstor is not emulated.
                    "noxsave".into(),
                    // Marking kernel text read-only costs ~2 s of emulated
                    // page-table work; a trade-off for this host only.
                    "rodata=off".into(),
                    // Seeding the RNG is slow when every instruction is emulated.
                    "random.trust_cpu=on".into(),
                    // Mapping cached file pages around a fault costs more
                    // emulated work than the faults it spares (guest kernel
                    // patch 0012; 64 KiB elsewhere).
                    "fault_around_bytes=8192".into(),
                    // A fork copies the parent's file mappings' page-table
                    // entries instead of leaving the child to fault them
                    // in again (guest kernel patch 0013).
                    "fork_copies_file_ptes".into(),
                    format!("clearcpuid={}", cleared.join(",")),
                    // Not a kernel parameter: the kernel hands it to init's
                    // environment and the agent passes it to every process.
                    format!(
                        "GLIBC_TUNABLES=glibc.cpu.hwcaps={}",
                        GLIBC_WITHOUT_AVX.join(",")
                    ),
                ]
            }
        }
    }

    /// Kernel command-line parameters this host needs in a VM booted to be
    /// saved (`--snapshot-to`).
    pub fn snapshot_params(self) -> Vec<String> {
        match self {
            HostProfile::Hardware => Vec::new(),
            // This host cannot offset the guest's TSC (guest user code
            // reads the host's own), so a VM restored from a template would
            // find a TSC clocksource jumped by the template's age: its
            // monotonic clock leaps, and RCU reports a stall with stack
            // dumps on the console. kvmclock resumes where the snapshot
            // left it. Other boots keep the TSC, which costs the guest
            // ~1.5% less to boot here.
            HostProfile::EmulatedKernel => vec!["clocksource=kvm-clock".into()],
        }
    }

    /// KVM paravirtual features (bits of CPUID leaf 0x4000_0001 EAX) the
    /// guest must not be offered. Their hypercalls (`vmcall`) hang the
    /// emulating host: with PV_SEND_IPI a second vCPU never comes up.
    pub fn hidden_kvm_features(self) -> u32 {
        match self {
            HostProfile::Hardware => 0,
            HostProfile::EmulatedKernel => {
                KVM_FEATURE_PV_UNHALT | KVM_FEATURE_PV_SEND_IPI | KVM_FEATURE_PV_SCHED_YIELD
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HostProfile::Hardware => "hardware",
            HostProfile::EmulatedKernel => "emulated-kernel",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_without_vmx_is_the_emulated_profile() {
        let cpuinfo = "processor : 0\nflags : fpu sse2 avx2\n";
        assert_eq!(
            HostProfile::from_facts(true, cpuinfo),
            HostProfile::EmulatedKernel
        );
    }

    #[test]
    fn hardware_virtualisation_wins() {
        let cpuinfo = "flags : fpu vmx sse2\n";
        assert_eq!(
            HostProfile::from_facts(true, cpuinfo),
            HostProfile::Hardware
        );
        assert_eq!(
            HostProfile::from_facts(false, "flags : fpu\n"),
            HostProfile::Hardware
        );
    }

    #[test]
    fn hardware_profile_adds_nothing() {
        assert!(HostProfile::Hardware.kernel_params().is_empty());
        assert_eq!(HostProfile::Hardware.hidden_kvm_features(), 0);
    }

    #[test]
    fn emulated_profile_hides_the_hypercall_features() {
        let hidden = HostProfile::EmulatedKernel.hidden_kvm_features();
        assert_eq!(hidden, (1 << 7) | (1 << 11) | (1 << 13));
    }

    #[test]
    fn emulated_profile_clears_the_documented_features() {
        let params = HostProfile::EmulatedKernel.kernel_params();
        assert!(params.contains(&"noxsave".to_string()));
        assert!(params.contains(&"fork_copies_file_ptes".to_string()));
        assert!(!params.iter().any(|p| p.starts_with("clocksource=")));
        assert_eq!(
            HostProfile::EmulatedKernel.snapshot_params(),
            ["clocksource=kvm-clock"]
        );
        assert!(HostProfile::Hardware.snapshot_params().is_empty());
        assert!(params.contains(&"clearcpuid=308,295,288,141,298,145,151,297,580".to_string()));
        let tunables = params
            .iter()
            .find(|p| p.starts_with("GLIBC_TUNABLES=glibc.cpu.hwcaps="))
            .expect("glibc is kept off AVX");
        assert!(tunables.contains("-AVX2,"), "{tunables}");
    }
}
