//! The agent API's JSON messages both ways: whatever text deserialises as
//! a request (what the agent reads) or a response (what the host reads)
//! serialises again and reads back equal, so nothing a peer sends is lost
//! or changed by a relay through the typed messages; a pod network's
//! checks take anything without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use runvm_agent_api::network::{validate, GuestNetwork};
use runvm_agent_api::oci::Spec;
use runvm_agent_api::{Request, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let Ok(message) = serde_json::from_slice::<T>(data) else {
        return;
    };
    let json = serde_json::to_vec(&message).expect("a message that was read serialises");
    let back: T = match serde_json::from_slice(&json) {
        Ok(back) => back,
        Err(e) => panic!(
            "{} does not read back: {e}\n{message:?}",
            String::from_utf8_lossy(&json)
        ),
    };
    assert_eq!(back, message, "{}", String::from_utf8_lossy(&json));
}

fuzz_target!(|data: &[u8]| {
    check::<Request>(data);
    check::<Response>(data);
    // The OCI spec on its own: what `runvm create` reads from a bundle.
    check::<Spec>(data);
    // The pod network a create carries, and its checks (never a panic).
    check::<GuestNetwork>(data);
    if let Ok(network) = serde_json::from_slice::<GuestNetwork>(data) {
        let _ = validate(&network);
    }
});
