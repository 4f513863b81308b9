//! The agent API's frame reader fed arbitrary bytes, as a hostile peer
//! would send them on the control connection: frame after frame until the
//! stream ends or goes out of step, never a panic, never a frame over the
//! limit; every message read re-encodes to a frame that reads back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runvm_agent_api::codec::encode;
use runvm_agent_api::{
    read_frame, read_frame_bytes, FrameError, Request, Response, MAX_FRAME_SIZE,
};
use runvm_fuzz::complete;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(message: &T) {
    let frame = encode(message).expect("a message that was read encodes");
    let back: T = complete(read_frame(&mut frame.as_slice())).expect("an encoded frame reads");
    assert_eq!(&back, message);
}

fuzz_target!(|data: &[u8]| {
    // Undecoded frames: the host's reader looks at a bad one's id.
    let mut reader = data;
    loop {
        match complete(read_frame_bytes(&mut reader)) {
            Ok(body) => {
                assert!(body.len() <= MAX_FRAME_SIZE);
                if let Ok(request) = serde_json::from_slice::<Request>(&body) {
                    round_trip(&request);
                }
                if let Ok(response) = serde_json::from_slice::<Response>(&body) {
                    round_trip(&response);
                }
            }
            Err(FrameError::Json(e)) => panic!("read_frame_bytes never decodes: {e}"),
            Err(_) => break,
        }
    }
    // Typed reads, as the agent does: a JSON error leaves the stream in step.
    let mut reader = data;
    loop {
        match complete(read_frame::<_, Request>(&mut reader)) {
            Ok(request) => round_trip(&request),
            Err(FrameError::Json(_)) => continue,
            Err(_) => break,
        }
    }
});
