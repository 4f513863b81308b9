//! The agent's container modules that turn an OCI spec into a plan without
//! touching the system (agent/src/container/), compiled from the agent's
//! own files so the fuzz targets test exactly what the agent runs. Their
//! system-facing halves (applying cgroups, installing filters) are never
//! called here.
#![allow(dead_code, unused_imports)]

#[path = "../../../agent/src/container/bpf.rs"]
pub mod bpf;
#[path = "../../../agent/src/container/cgroups.rs"]
pub mod cgroups;
#[path = "../../../agent/src/container/devices.rs"]
pub mod devices;
#[path = "../../../agent/src/container/hugetlb_io.rs"]
pub mod hugetlb_io;
#[path = "../../../agent/src/container/mountopts.rs"]
pub mod mountopts;
#[path = "../../../agent/src/container/procattrs.rs"]
pub mod procattrs;
#[path = "../../../agent/src/container/seccomp.rs"]
pub mod seccomp;
#[path = "../../../agent/src/container/spec.rs"]
pub mod spec;
#[path = "../../../agent/src/container/sysctl.rs"]
pub mod sysctl;
