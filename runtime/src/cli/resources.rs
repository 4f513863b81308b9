//! pause, resume and update: a running container's cgroup in the guest.

use std::path::PathBuf;

use super::lifecycle::IdArgs;
use super::{CliError, CliResult, Context};

#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// A JSON file of OCI linux.resources ("-" for stdin).
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes.
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long)]
    pub memory_reservation: Option<String>,
    #[arg(long)]
    pub memory_swap: Option<String>,
    #[arg(long)]
    pub cpu_period: Option<u64>,
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    #[arg(long)]
    pub cpu_share: Option<u64>,
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    #[arg(long)]
    pub pids_limit: Option<i64>,
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    pub id: String,
}

pub fn pause(_context: &Context, _args: IdArgs, _freeze: bool) -> CliResult<u8> {
    Err(CliError::new("pause and resume are not implemented yet"))
}

pub fn update(_context: &Context, _args: UpdateArgs) -> CliResult<u8> {
    Err(CliError::new("update is not implemented yet"))
}
