//! The stream greeting (`STREAM <token>\n`) the agent reads first on every
//! stdio connection: any bytes parse to a token or to nothing; a token
//! that comes out is the one the line names, and every token the host
//! writes fits the agent's line buffer and parses back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runvm_agent_api::StreamHello;

fuzz_target!(|data: &[u8]| {
    if let Some(hello) = StreamHello::parse(data) {
        let text = std::str::from_utf8(data).expect("a parsed greeting is text");
        let digits = text
            .strip_suffix('\n')
            .and_then(|t| t.strip_prefix("STREAM "))
            .expect("a parsed greeting has the STREAM prefix and newline");
        assert_eq!(
            digits.trim_start_matches('+').parse::<u128>().ok(),
            Some(u128::from(hello.token))
        );
    }
    // The host side: any token makes a line the agent accepts.
    if let Some(bytes) = data.get(..8) {
        let token = u64::from_le_bytes(bytes.try_into().expect("eight bytes"));
        let line = StreamHello { token }.to_line();
        assert!(
            line.len() <= StreamHello::MAX_LEN,
            "{line:?} is longer than the agent reads"
        );
        assert_eq!(
            StreamHello::parse(line.as_bytes()),
            Some(StreamHello { token })
        );
    }
});
