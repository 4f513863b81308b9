//! The agent's seccomp translation (agent/src/container/seccomp.rs): any
//! OCI `linux.seccomp` section compiles to BPF or is refused with a
//! message, never a panic, and no compiled filter is empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runvm_agent_api::oci::LinuxSeccomp;
use runvm_fuzz::container::seccomp;

fuzz_target!(|data: &[u8]| {
    let Ok(profile) = serde_json::from_slice::<LinuxSeccomp>(data) else {
        return;
    };
    if let Ok(program) = seccomp::translate(&profile) {
        for filter in &program.filters {
            assert!(!filter.is_empty(), "an empty filter");
        }
    }
});
