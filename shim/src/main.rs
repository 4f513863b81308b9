//! `containerd-shim-runvm-v2`: containerd's runtime v2 shim for runvm
//! (`runtime_type = "io.containerd.runvm.v2"`).
//!
//! One long-lived shim process per pod owns the pod's microVM in-process
//! ([`runvm::pod::Pod`]): it boots the VM at the first `Create`, binds
//! each container's rootfs into the VM's share, talks to the guest's agent
//! over vsock, copies stdio between containerd's FIFOs and the guest's
//! streams, and stops the VM when the last container is deleted. There is
//! no `runvm` process per call and no monitor process per container.
//!
//! - `start` ([`shim`]): containers of one pod share one shim (the
//!   socket address is derived from the CRI sandbox id annotation, as
//!   containerd's runc v2 shim does); a plain container (`ctr run`) gets
//!   its own.
//! - serving ([`service`]): the ttrpc task service.
//! - `delete` ([`shim`]): containerd's clean-up after a shim that died
//!   (say, SIGKILLed): the rootfs mount, the VMM, virtiofsd and the pod's
//!   state go.
//!
//! The synchronous flavour of the `containerd-shim` crate is used: its
//! ttrpc server runs each request on a thread of its own, and the shim
//! keeps one multi-threaded tokio runtime of its own for the agent client
//! and the stdio copies (both tokio code in the runtime crate). A request
//! hands its work to that runtime and blocks on the answer; the async
//! flavour would put a second async ttrpc stack (and its own runtime
//! set-up) beside the agent client for no gain, since every request ends
//! in an agent call anyway. Work that starts host processes (the VM boot)
//! runs on the runtime's worker threads, which live as long as the shim:
//! the VMM and virtiofsd die with the thread that started them
//! (PR_SET_PDEATHSIG), and the ttrpc server's threads come and go.

mod log_uri;
mod metrics;
mod no_event_service;
mod process;
mod publisher;
mod rootfs;
mod service;
mod shim;
mod stdio;

fn main() {
    // The serving shim has no action (containerd-shim reports bad flags).
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let serving = containerd_shim::parse(&args).is_ok_and(|flags| flags.action.is_empty());
    no_event_service::stand_in(serving);
    let config = containerd_shim::Config {
        // The shim's children are the VMMs and virtiofsds, which the
        // runtime crate waits for itself; containerd-shim's reaper would
        // take their statuses.
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<shim::RunvmShim>(shim::RUNTIME_ID, Some(config));
}
