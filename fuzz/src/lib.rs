//! Shared pieces of the fuzz targets: the agent's pure container modules
//! (the agent is a binary crate, so they are compiled in from its source)
//! and a poller for the agent API's async frame reader.

pub mod container;

/// What the agent's `spec` module takes from the agent's `exec` module,
/// which itself needs the whole agent: the same list, kept here.
pub mod exec {
    pub const PASSED_ON_FROM_INIT: &[&str] = &["GLIBC_TUNABLES"];
}

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// Runs a future that never waits (it reads from a byte slice) to its end.
pub fn complete<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        // A slice reader is always ready; pending would be a bug here.
        Poll::Pending => panic!("a read from a byte slice did not complete"),
    }
}
