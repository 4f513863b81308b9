//! One module per `runvm` subcommand.

pub mod vm_run;
