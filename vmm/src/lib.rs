//! runvm's virtual machine monitor.
//!
//! One process per pod: it creates a KVM VM, loads an uncompressed `vmlinux`
//! and an initramfs (or gives the guest a read-only root disk), and runs the
//! vCPUs until the guest powers off, resets, fails, or the process is asked
//! to stop.
//!
//! Layout, one responsibility per module:
//! - [`config`]: what the caller asks for, validated.
//! - [`host`]: what a VM takes from the host by path (/dev/kvm, images,
//!   console log), opened before the VM is built.
//! - [`jail`]: the VMM's jail (namespaces, pivot_root, an unprivileged
//!   id, no capabilities, limits), entered before the VM is built.
//! - [`host_profile`]: detects a host whose KVM emulates guest-kernel code
//!   and the kernel command line that such a host needs.
//! - [`memory`]: the guest physical address map and guest RAM.
//! - [`boot`]: kernel, initramfs, command line, boot structures, registers.
//! - [`cpu`]: CPUID, MSRs and local APIC set-up of each vCPU.
//! - [`devices`]: the port-I/O devices (serial console, exit port, i8042)
//!   and the virtio devices (block, vsock, virtio-fs through vhost-user,
//!   net on a tap).
//! - [`vcpu`]: the vCPU run loop and its exits.
//! - [`diagnostics`]: turning a KVM internal error into a readable report.
//! - [`machine`]: puts the pieces together.
//! - [`runner`]: runs a built VM's vCPUs to the VM's end.
//! - [`snapshot`]: saves a paused VM to a directory and restores it in a
//!   new process.
//! - [`seccomp`]: the per-thread seccomp filters.

pub mod boot;
pub mod config;
pub mod cpu;
pub mod devices;
pub mod diagnostics;
pub mod host;
pub mod host_profile;
pub mod jail;
pub mod machine;
pub mod memory;
mod runner;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;

mod error;

pub use config::{BootProtocol, FsBackend, FsConfig, SerialOutput, VmConfig, VsockConfig};
pub use error::Error;
pub use host::HostResources;
pub use host_profile::HostProfile;
pub use machine::{guest_cmdline, run_vm, run_vm_with, VmExit};
