//! The host side of runvm: the OCI front end and the agent client.

pub mod agent_client;
