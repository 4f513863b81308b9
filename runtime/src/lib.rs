//! The host side of runvm: the OCI front end, the microVM launcher and the
//! agent client.

pub mod agent_client;
pub mod commands;
pub mod container_client;
pub mod guest_process;
pub mod share;
pub mod terminal;
pub mod vm;
