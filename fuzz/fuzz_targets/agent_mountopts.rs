//! The agent's mount option parser (agent/src/container/mountopts.rs):
//! any list of option strings (one a line here) parses or is refused with
//! a message, never a panic. (A NUL inside a data option is refused later,
//! by mount(2)'s C-string conversion in nix.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use runvm_fuzz::container::mountopts;

fuzz_target!(|data: &[u8]| {
    let options: Vec<String> = data
        .split(|&b| b == b'\n')
        .map(|o| String::from_utf8_lossy(o).into_owned())
        .collect();
    let _ = mountopts::parse(&options);
});
