//! Serving a caller that has no event service: CRI-O.
//!
//! CRI-O (`runtime_type = "vm"`) starts a shim v2 with an empty
//! `TTRPC_ADDRESS` (and `-address`): it takes exits from `Wait` and wants
//! no events. containerd-shim, though, connects its event publisher to
//! that address before it serves, and an empty one fails the shim
//! (`EINVAL`) before CRI-O can reach it. So the serving shim makes a
//! stand-in first: a listening socket that is never read (a connect
//! succeeds on the listen backlog), named by `TTRPC_ADDRESS` for
//! containerd-shim's one connect, and unlinked once the task service
//! exists ([`forget_address`]); the shim then publishes nothing.

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::OnceLock;

/// containerd-shim reads containerd's event address from here.
pub const TTRPC_ADDRESS: &str = "TTRPC_ADDRESS";

/// The stand-in's socket path while it has one; set once, by [`stand_in`].
static STAND_IN: OnceLock<(PathBuf, UnixListener)> = OnceLock::new();

/// For the serving shim (not `start` or `delete`, whose children must
/// see the caller's environment) of a caller without an event address:
/// binds the stand-in and points `TTRPC_ADDRESS` at it. Call it before
/// any thread starts (it sets the environment).
pub fn stand_in(serving: bool) {
    let caller_has_events = std::env::var(TTRPC_ADDRESS).is_ok_and(|address| !address.is_empty());
    if !serving || caller_has_events {
        return;
    }
    let path =
        std::env::temp_dir().join(format!("runvm-shim-{}-no-events.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    match UnixListener::bind(&path) {
        Ok(listener) => {
            // Still single-threaded: nothing reads the environment meanwhile.
            std::env::set_var(TTRPC_ADDRESS, &path);
            let _ = STAND_IN.set((path, listener));
        }
        // containerd-shim reports the empty address as it would have.
        Err(e) => eprintln!("cannot bind {}: {e}", path.display()),
    }
}

/// Where events go: containerd's address, or None when the caller has
/// no event service (the stand-in's socket is unlinked then: the publisher
/// is connected, and nothing else may connect).
pub fn forget_address() -> Option<String> {
    if let Some((path, _listener)) = STAND_IN.get() {
        let _ = std::fs::remove_file(path);
        return None;
    }
    std::env::var(TTRPC_ADDRESS).ok()
}
