//! The hybrid-vsock `CONNECT <port>` line a host client sends the VMM:
//! any bytes parse to a port or to nothing, and a port that comes out is
//! one the line really names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runvm_vmm::devices::virtio::vsock::muxer::parse_connect_line;

fuzz_target!(|line: &[u8]| {
    let Some(port) = parse_connect_line(line) else {
        return;
    };
    let text = std::str::from_utf8(line).expect("a parsed line is text");
    let digits = text
        .trim_end_matches('\r')
        .strip_prefix("CONNECT ")
        .expect("a parsed line starts with CONNECT");
    assert_eq!(
        digits.trim_start_matches('+').parse::<u64>().ok(),
        Some(u64::from(port))
    );
    // The line the runtime writes parses back to the same port.
    assert_eq!(
        parse_connect_line(format!("CONNECT {port}").as_bytes()),
        Some(port)
    );
});
