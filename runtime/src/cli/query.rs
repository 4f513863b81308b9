//! list, ps, events: their arguments, and their output in runc's formats
//! (see [`crate::container::list`]).

use std::time::Duration;

use clap::ValueEnum;
use runvm_agent_api::{ContainerStats, GuestProcess};

use crate::container::{self, Context, Event, EventsOptions};

use super::CliResult;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Only the ids.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    pub id: String,
    /// Accepted for runc compatibility (options of ps(1)); ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub ps_options: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    /// Print the stats once and exit.
    #[arg(long)]
    pub stats: bool,
    /// How often stats are printed.
    #[arg(long, default_value = "5s", value_parser = parse_interval)]
    pub interval: Duration,
    pub id: String,
}

/// `5s`, `500ms`, `1m`, or a number of seconds.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid interval {text:?}"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "invalid interval {text:?}: unit must be ms, s, m or h"
            ))
        }
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("invalid interval {text:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub fn list(context: &Context, args: ListArgs) -> CliResult<u8> {
    let records = container::list(context)?;
    if args.quiet {
        for record in &records {
            println!("{}", record.id);
        }
        return Ok(0);
    }
    match args.format {
        Format::Json => {
            // runc prints `null` when there are none.
            let states: Vec<serde_json::Value> = records.iter().map(|r| r.oci_state()).collect();
            if states.is_empty() {
                println!("null");
            } else {
                println!("{}", serde_json::Value::Array(states));
            }
        }
        Format::Table => {
            let mut rows = vec![[
                "ID".to_owned(),
                "PID".to_owned(),
                "STATUS".to_owned(),
                "BUNDLE".to_owned(),
                "CREATED".to_owned(),
                "OWNER".to_owned(),
            ]];
            for record in &records {
                rows.push([
                    record.id.clone(),
                    record.live_pid().to_string(),
                    record.status().to_string(),
                    record.bundle.display().to_string(),
                    record.created.clone(),
                    record.owner.clone(),
                ]);
            }
            print_table(&rows);
        }
    }
    Ok(0)
}

/// Columns padded like runc's tabwriter (3 spaces between columns).
fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// The container's processes as guest pids (the agent's view: its init
/// and the processes exec'd into it).
pub fn ps(context: &Context, args: PsArgs) -> CliResult<u8> {
    let processes = container::processes(context, &args.id)?;
    match args.format {
        Format::Json => {
            let pids: Vec<i32> = processes.iter().map(|p| p.pid).collect();
            println!("{}", serde_json::json!(pids));
        }
        Format::Table => print_table(&process_rows(&processes)),
    }
    Ok(0)
}

/// `ps`'s table: the guest's view of each process (its pids and uids are
/// the guest's, so the host's ps(1) cannot describe them as runc's does).
fn process_rows(processes: &[GuestProcess]) -> Vec<[String; 5]> {
    let header = ["UID", "PID", "PPID", "STAT", "CMD"].map(String::from);
    let rows = processes.iter().map(|p| {
        let command = if p.argv.is_empty() {
            format!("[{}]", p.name)
        } else {
            p.argv.join(" ")
        };
        // The guest's text: no control characters reach the terminal.
        let command: String = command
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        let state: String = p
            .state
            .chars()
            .filter(|c| c.is_ascii_alphabetic())
            .collect();
        [
            p.uid.to_string(),
            p.pid.to_string(),
            p.ppid.to_string(),
            state,
            command,
        ]
    });
    std::iter::once(header).chain(rows).collect()
}

/// runc's stats event: the cgroup figures under its names.
fn stats_event(id: &str, stats: &ContainerStats) -> serde_json::Value {
    serde_json::json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {
                "usage": {
                    "total": stats.cpu_usage_usec.saturating_mul(1000),
                    "kernel": stats.cpu_system_usec.saturating_mul(1000),
                    "user": stats.cpu_user_usec.saturating_mul(1000),
                },
                "throttling": {},
            },
            "memory": {
                "usage": {
                    "usage": stats.memory_usage,
                    "limit": stats.memory_limit.unwrap_or(u64::MAX),
                    "failcnt": stats.oom_kills,
                },
            },
            "pids": {
                "current": stats.pids_current,
                "limit": stats.pids_limit.unwrap_or(0),
            },
        }
    })
}

/// `events --stats`: one stats event. `events`: stats every interval and
/// OOM events as they come, until the container stops.
pub fn events(context: &Context, args: EventsArgs) -> CliResult<u8> {
    let options = EventsOptions {
        once: args.stats,
        interval: args.interval,
    };
    let id = &args.id;
    container::events(context, id, options, |event| match event {
        Event::Stats(stats) => println!("{}", stats_event(id, &stats)),
        Event::Oom => println!("{}", serde_json::json!({"type": "oom", "id": id})),
    })?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_interval("2"), Ok(Duration::from_secs(2)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("5d").is_err());
    }
}
