//! The host side of runvm: the OCI front end, the microVM launcher and the
//! agent client.

pub mod agent_client;
pub mod assets;
pub mod bundle;
pub mod cli;
pub mod commands;
pub mod console;
pub mod container;
pub mod container_client;
pub mod deadlines;
pub mod guest_process;
pub mod home_dir;
pub mod hooks;
pub mod host_cgroup;
pub mod host_random;
pub mod kvm_stats;
pub mod monitor;
pub mod network;
pub mod pod;
pub mod sandbox;
pub mod share;
pub mod state;
pub mod template;
pub mod terminal;
pub mod unix_socket;
pub mod vm;
