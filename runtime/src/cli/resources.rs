//! pause, resume and update: their arguments (see
//! [`crate::container::update`]); update's flags become OCI
//! linux.resources.

use std::path::PathBuf;

use crate::container::{self, read_input, Context};

use super::lifecycle::IdArgs;
use super::{CliError, CliResult};

#[derive(clap::Args, Debug)]
pub struct UpdateArgs {
    /// A JSON file of OCI linux.resources ("-" for stdin); the flags below
    /// override what it says.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes (k, m, g suffixes; -1 for none).
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long)]
    pub memory_reservation: Option<String>,
    /// Memory plus swap limit.
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

/// `512m`, `1g`, `1048576`, `-1`: bytes, as runc's flags take them.
fn parse_bytes(text: &str) -> CliResult<i64> {
    let bad = || {
        CliError::new(format!(
            "invalid value {text:?}: bytes, with an optional k, m or g"
        ))
    };
    if text == "-1" {
        return Ok(-1);
    }
    let lower = text.trim().to_ascii_lowercase();
    let lower = lower.trim_end_matches('b');
    let (number, shift) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 10),
        Some('m') => (&lower[..lower.len() - 1], 20),
        Some('g') => (&lower[..lower.len() - 1], 30),
        _ => (lower, 0),
    };
    let value: i64 = number.parse().map_err(|_| bad())?;
    value.checked_shl(shift).filter(|v| *v >= 0).ok_or_else(bad)
}

/// The resources asked for: the file (if any) with the flags applied.
fn requested(args: &UpdateArgs) -> CliResult<serde_json::Value> {
    let mut resources = match &args.resources {
        None => serde_json::json!({}),
        Some(path) => {
            let text = read_input(path)?;
            serde_json::from_slice(&text).map_err(|e| {
                CliError::new(format!(
                    "{} is not OCI linux.resources JSON: {e}",
                    path.display()
                ))
            })?
        }
    };
    let mut set = |section: &str, key: &str, value: serde_json::Value| {
        if !resources[section].is_object() {
            resources[section] = serde_json::json!({});
        }
        resources[section][key] = value;
    };
    if let Some(memory) = &args.memory {
        set("memory", "limit", parse_bytes(memory)?.into());
    }
    if let Some(reservation) = &args.memory_reservation {
        set("memory", "reservation", parse_bytes(reservation)?.into());
    }
    if let Some(swap) = &args.memory_swap {
        set("memory", "swap", parse_bytes(swap)?.into());
    }
    if let Some(period) = args.cpu_period {
        set("cpu", "period", period.into());
    }
    if let Some(quota) = args.cpu_quota {
        set("cpu", "quota", quota.into());
    }
    if let Some(shares) = args.cpu_share {
        set("cpu", "shares", shares.into());
    }
    if let Some(cpus) = &args.cpuset_cpus {
        set("cpu", "cpus", cpus.clone().into());
    }
    if let Some(mems) = &args.cpuset_mems {
        set("cpu", "mems", mems.clone().into());
    }
    if let Some(limit) = args.pids_limit {
        set("pids", "limit", limit.into());
    }
    if let Some(weight) = args.blkio_weight {
        set("blockIO", "weight", weight.into());
    }
    Ok(resources)
}

pub fn pause(context: &Context, args: IdArgs, freeze: bool) -> CliResult<u8> {
    if freeze {
        container::pause(context, &args.id)?;
    } else {
        container::resume(context, &args.id)?;
    }
    Ok(0)
}

pub fn update(context: &Context, args: UpdateArgs) -> CliResult<u8> {
    let resources = requested(&args)?;
    let resources: runvm_agent_api::oci::LinuxResources = serde_json::from_value(resources)
        .map_err(|e| CliError::new(format!("invalid resources: {e}")))?;
    container::update(context, &args.id, resources)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        args: UpdateArgs,
    }

    #[test]
    fn bytes_with_units() {
        assert_eq!(parse_bytes("1024").ok(), Some(1024));
        assert_eq!(parse_bytes("512m").ok(), Some(512 << 20));
        assert_eq!(parse_bytes("1G").ok(), Some(1 << 30));
        assert_eq!(parse_bytes("-1").ok(), Some(-1));
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn flags_become_oci_resources() {
        let args = Harness::parse_from([
            "update",
            "--memory",
            "64m",
            "--pids-limit",
            "10",
            "--cpu-quota",
            "50000",
            "--cpu-period",
            "100000",
            "c1",
        ])
        .args;
        let resources = requested(&args).expect("valid");
        assert_eq!(resources["memory"]["limit"], 64 << 20);
        assert_eq!(resources["pids"]["limit"], 10);
        assert_eq!(resources["cpu"]["quota"], 50000);
        let _: runvm_agent_api::oci::LinuxResources =
            serde_json::from_value(resources).expect("the agent's form");
    }
}
